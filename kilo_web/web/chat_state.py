"""The chat page's state: instances, conversations, members and messages.

Reads and writes go through ``kilo_web.chat.service``. Live messages arrive
through the app shell: ``message.created`` events of the open conversation
are merged into ``messages`` by id and kept in ``seq`` order, so an event
that repeats a message already loaded from the database changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict

import reflex as rx
import reflex_local_auth

from kilo_web.accounts.state import current_profile_id
from kilo_web.chat import service
from kilo_web.chat.content import blocks_text, text_blocks
from kilo_web.chat.errors import ChatError
from kilo_web.event_service.contexts import (
    kiloclaw_conversation_context,
    kiloclaw_conversation_presence_context,
    kiloclaw_instance_presence_context,
)
from kilo_web.chat import read_state
from kilo_web.chat.database import DATABASE_UNAVAILABLE
from kilo_web.chat.publisher import CONVERSATION_ADDED_EVENT
from kilo_web.chat.read_state import UNREAD_CHANGED_EVENT
from kilo_web.event_service.contexts import user_context
from kilo_web.event_service.embedded import get_backplane
from kilo_web.notifications.preview import message_preview
from kilo_web.runtime import notification_service, send_limiter, webpush_public_key
from kilo_web.web.visibility import PageVisibilityState
from kilo_web.event_service.client import RECOVERY_FAILED, SUBSCRIBED
from kilo_web.event_service.presence import JOIN, LEAVE, STATE
from kilo_web.event_service.presence_mirror import PresenceMirror
from kilo_web.event_service.protocol import Event
from kilo_web.web.shell import add_event_handler

logger = logging.getLogger(__name__)

MESSAGE_PAGE_SIZE = 200
"""How many of the newest messages the page loads when a conversation opens."""


class InstanceItem(TypedDict):
    id: str
    label: str


class ConversationItem(TypedDict):
    id: str
    title: str
    instance_id: str


class ConversationRow(TypedDict):
    id: str
    title: str
    instance_id: str
    unread: int


class MemberItem(TypedDict):
    id: int
    key: str
    """The id as the event service names users: a string."""
    display_name: str
    is_bot: bool


class MessageItem(TypedDict):
    id: int
    seq: int
    sender_id: int
    sender_name: str
    sender_is_bot: bool
    text: str
    markdown: bool
    """True when the message has a Markdown block; the text is then rendered as Markdown."""
    created_at: str


def _message_item(
    *,
    message_id: int,
    seq: int,
    sender_id: int,
    sender_name: str,
    sender_is_bot: bool,
    blocks: Any,
    created_at: str,
) -> MessageItem:
    return MessageItem(
        id=message_id,
        seq=seq,
        sender_id=sender_id,
        sender_name=sender_name,
        sender_is_bot=sender_is_bot,
        text=blocks_text(blocks),
        # NOTE: a message that mixes text and Markdown blocks is rendered
        # wholly as Markdown.
        markdown=any(block.get("type") == "markdown" for block in blocks),
        created_at=created_at,
    )


def _item_from_view(view: service.MessageView) -> MessageItem:
    return _message_item(
        message_id=view.id,
        seq=view.seq,
        sender_id=view.sender_id,
        sender_name=view.sender_display_name,
        sender_is_bot=view.sender_is_bot,
        blocks=view.blocks,
        created_at=view.created_at.isoformat(),
    )


def _item_from_event(data: dict[str, Any]) -> MessageItem:
    return _message_item(
        message_id=int(data["messageId"]),
        seq=int(data["seq"]),
        sender_id=int(data["senderId"]),
        sender_name=str(data["senderDisplayName"]),
        sender_is_bot=bool(data.get("senderIsBot", False)),
        blocks=data["blocks"],
        created_at=str(data["createdAt"]),
    )


def merge_messages(current: list[MessageItem], new: list[MessageItem]) -> list[MessageItem]:
    """Merge ``new`` into ``current`` by message id and return them in ``seq`` order."""
    by_id = {item["id"]: item for item in current}
    for item in new:
        by_id[item["id"]] = item
    return sorted(by_id.values(), key=lambda item: item["seq"])


class ChatState(reflex_local_auth.LocalAuthState):
    """The chat page's data for the signed-in user."""

    instances: list[InstanceItem] = []
    conversations: list[ConversationItem] = []
    members: list[MemberItem] = []
    messages: list[MessageItem] = []
    selected_instance_id: str = ""
    selected_conversation_id: str = ""
    profile_id: int = -1
    display_name: str = ""
    error_message: str = ""
    info_message: str = ""
    instance_online: list[str] = []
    """Users present on the selected instance's presence context."""
    conversation_viewers: list[str] = []
    """Users present on the open conversation's presence context: looking at it now."""
    _presence: dict[str, dict[str, Any]] = {}
    unread_counts: dict[str, int] = {}
    """Unread messages per conversation id."""
    unread_total: int = 0
    push_public_key: str = ""
    """The server's VAPID public key for Web Push subscriptions; empty without Web Push."""
    notification: dict[str, str] = {}
    """The newest browser notification to show while the page is hidden: id, title, body."""

    @rx.var
    def conversation_context(self) -> str:
        """The event-service context of the open conversation, or empty."""
        if not (self.selected_instance_id and self.selected_conversation_id):
            return ""
        return kiloclaw_conversation_context(
            self.selected_instance_id, self.selected_conversation_id
        )

    @rx.var
    def conversation_presence_context(self) -> str:
        """The presence context of the open conversation, or empty."""
        if not (self.selected_instance_id and self.selected_conversation_id):
            return ""
        return kiloclaw_conversation_presence_context(
            self.selected_instance_id, self.selected_conversation_id
        )

    @rx.var
    def instance_presence_context(self) -> str:
        """The presence context of the selected instance, or empty."""
        if not self.selected_instance_id:
            return ""
        return kiloclaw_instance_presence_context(self.selected_instance_id)

    @rx.var
    def other_viewers(self) -> list[MemberItem]:
        """The members other than the user who are looking at the open conversation."""
        viewers = set(self.conversation_viewers)
        return [m for m in self.members if m["key"] in viewers and m["id"] != self.profile_id]

    @rx.var
    def selected_conversation_title(self) -> str:
        """The title of the open conversation, or empty."""
        for conversation in self.conversations:
            if conversation["id"] == self.selected_conversation_id:
                return conversation["title"]
        return ""

    @rx.var
    def selected_instance_label(self) -> str:
        """The label of the selected instance, or empty."""
        for instance in self.instances:
            if instance["id"] == self.selected_instance_id:
                return instance["label"]
        return ""

    @rx.var
    def visible_conversations(self) -> list[ConversationRow]:
        """The conversations of the selected instance, with their unread counts."""
        return [
            ConversationRow(
                id=c["id"], title=c["title"], instance_id=c["instance_id"],
                unread=self.unread_counts.get(c["id"], 0),
            )
            for c in self.conversations
            if c["instance_id"] == self.selected_instance_id
        ]

    @rx.var
    def user_context(self) -> str:
        """The user's private context, which carries ``unread.changed``; empty when signed out."""
        return user_context(self.profile_id) if self.profile_id > 0 else ""

    # Loading ------------------------------------------------------------------

    async def _require_profile(self) -> int | None:
        profile_id = await current_profile_id(self)
        self.profile_id = profile_id if profile_id is not None else -1
        return profile_id

    @rx.event
    async def load(self):
        """Load the sidebar and the open conversation for the signed-in user."""
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        self._reload_lists(profile_id)
        self.push_public_key = webpush_public_key()
        if self.selected_conversation_id not in {c["id"] for c in self.conversations}:
            self.selected_conversation_id = ""
        if self.selected_conversation_id:
            self._reload_conversation()
        elif self.selected_instance_id:
            self._open_instance(self.selected_instance_id)
        elif self.instances:
            self._open_instance(self.instances[0]["id"])
        else:
            self._reload_conversation()
        await self._mark_open_read_if_visible()
        return None

    def _reload_lists(self, profile_id: int) -> None:
        with rx.session() as session:
            self.display_name = service.get_user(session, profile_id).display_name
            self.instances = [
                InstanceItem(id=i.id, label=i.label)
                for i in service.list_instances_for_user(session, profile_id)
            ]
            self.conversations = [
                ConversationItem(id=c.id, title=c.title, instance_id=c.instance_id)
                for c in service.list_conversations_for_user(session, profile_id)
            ]
            summary = read_state.unread_summary(session, profile_id)
        self.unread_counts = dict(summary.counts)
        self.unread_total = summary.total
        if self.selected_instance_id not in {i["id"] for i in self.instances}:
            self.selected_instance_id = ""

    def _reload_conversation(self) -> None:
        self._refresh_presence_lists()
        if not self.selected_conversation_id:
            self.messages = []
            self.members = []
            return
        with rx.session() as session:
            views = service.list_messages(
                session,
                self.selected_conversation_id,
                limit=MESSAGE_PAGE_SIZE,
                viewer_id=self.profile_id,
            )
            self.members = [
                MemberItem(id=m.id, key=str(m.id), display_name=m.display_name, is_bot=m.is_bot)
                for m in service.list_members(session, self.selected_conversation_id)
            ]
        self.messages = [_item_from_view(view) for view in views]

    # Navigation ---------------------------------------------------------------

    def _open_instance(self, instance_id: str) -> None:
        if instance_id not in {i["id"] for i in self.instances}:
            self.error_message = f"Instance {instance_id!r} is not in your list."
            return
        self.error_message = ""
        self.info_message = ""
        self.selected_instance_id = instance_id
        visible = [c for c in self.conversations if c["instance_id"] == instance_id]
        self.selected_conversation_id = visible[0]["id"] if visible else ""
        self._reload_conversation()

    def _open_conversation(self, conversation_id: str) -> None:
        for conversation in self.conversations:
            if conversation["id"] == conversation_id:
                break
        else:
            self.error_message = f"Conversation {conversation_id!r} is not in your list."
            return
        self.error_message = ""
        self.info_message = ""
        self.selected_instance_id = conversation["instance_id"]
        self.selected_conversation_id = conversation_id
        self._reload_conversation()

    @rx.event
    async def select_instance(self, instance_id: str):
        """Show the conversations of another instance and open its first one."""
        self._open_instance(instance_id)
        await self._mark_open_read_if_visible()

    @rx.event
    async def select_conversation(self, conversation_id: str):
        """Open a conversation of the selected instance."""
        self._open_conversation(conversation_id)
        await self._mark_open_read_if_visible()

    @rx.event
    async def page_visibility_changed(self, visible: bool):
        """Mark the open conversation read when the page comes back into view."""
        if visible:
            await self._mark_open_read_if_visible()

    @rx.event
    async def mark_all_read(self):
        """Clear every unread count of the user: the explicit "mark all read"."""
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        with rx.session() as session:
            await read_state.mark_all_read(
                session, profile_id, publisher=get_backplane(),
                on_change=notification_service().on_unread_changed,
            )
            summary = read_state.unread_summary(session, profile_id)
        self.unread_counts = dict(summary.counts)
        self.unread_total = summary.total
        return None

    # Read state -----------------------------------------------------------------

    async def _mark_open_read_if_visible(self) -> None:
        """Move the read position of the open conversation to its newest message."""
        if not self.selected_conversation_id or self.profile_id <= 0:
            return
        visibility = await self.get_state(PageVisibilityState)
        if not visibility.page_visible:
            return
        try:
            with rx.session() as session:
                await read_state.mark_read(
                    session, self.selected_conversation_id, self.profile_id,
                    publisher=get_backplane(),
                    on_change=notification_service().on_unread_changed,
                )
        except ChatError as exc:
            logger.info("marking conversation %s read failed: %s",
                        self.selected_conversation_id, exc)
            return
        counts = dict(self.unread_counts)
        self.unread_total -= counts.get(self.selected_conversation_id, 0)
        counts[self.selected_conversation_id] = 0
        self.unread_counts = counts

    def _apply_unread(self, events: list[Event]) -> None:
        for event in events:
            if event.context != self.user_context:
                continue
            counts = event.data.get("conversations")
            total = event.data.get("total")
            if isinstance(counts, dict) and isinstance(total, int):
                self.unread_counts = {str(k): int(v) for k, v in counts.items()}
                self.unread_total = total

    # Writes -------------------------------------------------------------------

    @rx.event
    async def send_message(self, form_data: dict[str, Any]):
        """Post the composer's text to the open conversation."""
        text = str(form_data.get("text", ""))
        if not self.selected_conversation_id:
            self.error_message = "Open a conversation before sending a message."
            return None
        if not text.strip():
            return None
        try:
            profile_id = await self._require_profile()
            if profile_id is None:
                return reflex_local_auth.LoginState.redir
            send_limiter().check(profile_id)
            with rx.session() as session:
                view = await service.post_message(
                    session,
                    conversation_id=self.selected_conversation_id,
                    sender_id=profile_id,
                    blocks=text_blocks(text),
                    publisher=get_backplane(),
                    after_publish=notification_service().after_publish,
                )
        except ChatError as exc:
            self.error_message = str(exc)
            # Put the text back so nothing the user typed is lost.
            return rx.set_value("composer", text)
        except DATABASE_UNAVAILABLE as exc:
            logger.warning("sending to conversation %s failed, the database is unavailable: %s",
                           self.selected_conversation_id, exc.__class__.__name__)
            self.error_message = (
                "The message was not sent: the database is unavailable right now. "
                "Your text is still in the box; send it again in a few seconds."
            )
            return rx.set_value("composer", text)
        self.error_message = ""
        self.info_message = ""
        self.messages = merge_messages(self.messages, [_item_from_view(view)])
        return None

    @rx.event
    async def create_instance(self, form_data: dict[str, Any]):
        """Create an instance owned by the user and select it."""
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        try:
            with rx.session() as session:
                instance = service.create_instance(
                    session, owner_id=profile_id, label=str(form_data.get("label", ""))
                )
                instance_id = instance.id
        except ChatError as exc:
            self.error_message = str(exc)
            return None
        self.error_message = ""
        self._reload_lists(profile_id)
        self._open_instance(instance_id)
        return None

    @rx.event
    async def create_conversation(self, form_data: dict[str, Any]):
        """Create a conversation in the selected instance and open it."""
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        if not self.selected_instance_id:
            self.error_message = "Create or select an instance first."
            return None
        try:
            with rx.session() as session:
                conversation = service.create_conversation(
                    session,
                    instance_id=self.selected_instance_id,
                    title=str(form_data.get("title", "")),
                    creator_id=profile_id,
                )
                conversation_id = conversation.id
                others = [member for member in service.conversation_member_ids(
                    session, conversation_id) if member != profile_id]
        except ChatError as exc:
            self.error_message = str(exc)
            return None
        # The instance's bots joined too; they learn of the conversation this way.
        await service.announce_conversation(get_backplane(), conversation, others)
        self.error_message = ""
        self._reload_lists(profile_id)
        self._open_conversation(conversation_id)
        return None

    @rx.event
    async def add_member(self, form_data: dict[str, Any]):
        """Add a user, by username, to the open conversation."""
        username = str(form_data.get("username", "")).strip()
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        if not self.selected_conversation_id:
            self.error_message = "Open a conversation before adding members."
            return None
        try:
            with rx.session() as session:
                service.require_conversation_member(
                    session, self.selected_conversation_id, profile_id
                )
                user = service.find_user_by_username(session, username)
                if user is None or user.id is None:
                    self.error_message = (
                        f"No user is named {username!r}; check the spelling of the username."
                    )
                    return None
                if user.is_bot:
                    self.error_message = (
                        f"{user.display_name} is a bot; bots take part in the conversations "
                        "of their own instance only."
                    )
                    return None
                added = service.add_conversation_member(
                    session, conversation_id=self.selected_conversation_id, user_id=user.id
                )
                name, added_id = user.display_name, user.id
                conversation = service.get_conversation(session, self.selected_conversation_id)
        except ChatError as exc:
            self.error_message = str(exc)
            return None
        if added:
            await service.announce_conversation(get_backplane(), conversation, [added_id])
        self.error_message = ""
        self.info_message = (
            f"Added {name} to this conversation." if added
            else f"{name} is already a member of this conversation."
        )
        self._reload_conversation()
        return None

    # Live events --------------------------------------------------------------

    def _apply_presence_events(self, events: list[Event]) -> None:
        """Update the presence mirrors of the selected instance and open conversation."""
        watched = {self.instance_presence_context, self.conversation_presence_context} - {""}
        mirrors = dict(self._presence)
        for event in events:
            if event.context not in watched:
                continue
            mirror = PresenceMirror.from_dict(mirrors.get(event.context))
            if event.event == SUBSCRIBED:
                mirror.reset()
            else:
                mirror.apply(event.event, event.data, event.seq)
            mirrors[event.context] = mirror.to_dict()
        self._presence = {context: mirrors[context] for context in watched if context in mirrors}
        self._refresh_presence_lists()

    def _refresh_presence_lists(self) -> None:
        instance = self._presence.get(self.instance_presence_context) or {}
        conversation = self._presence.get(self.conversation_presence_context) or {}
        self.instance_online = list(instance.get("users", []))
        self.conversation_viewers = list(conversation.get("users", []))

    def _recover(self, events: list[Event]) -> None:
        """Reload the open conversation when events may have been missed.

        That is after a failed recovery, and after a subscription that started
        afresh (a new tab connection, a backend restart): messages posted
        before it took effect arrive only from the database.
        """
        def missed(event: Event) -> bool:
            if event.event == RECOVERY_FAILED:
                return True
            return event.event == SUBSCRIBED and not event.data.get("recovered", False)

        if any(event.context == self.conversation_context and missed(event) for event in events):
            logger.info("reloading conversation %s: a new subscription, or missed events "
                        "that could not be replayed",
                        self.selected_conversation_id)
            self._reload_conversation()

    def _notify_hidden(self, events: list[Event]) -> None:
        """Offer the newest message of the open conversation as a browser notification."""
        for event in reversed(events):
            if event.context != self.conversation_context:
                continue
            try:
                item = _item_from_event(event.data)
            except (KeyError, TypeError, ValueError):
                continue
            if item["sender_id"] == self.profile_id:
                continue
            title = f"{self.selected_instance_label} · {self.selected_conversation_title}"
            body = message_preview([{"type": "text", "text": item["text"]}])
            self.notification = {"id": str(item["id"]), "title": title,
                                 "body": f"{item['sender_name']}: {body}"}
            return

    def _apply_message_events(self, events: list[Event]) -> None:
        """Merge ``message.created`` events of the open conversation into ``messages``."""
        context = self.conversation_context
        items: list[MessageItem] = []
        for event in events:
            if event.context != context:
                continue
            try:
                items.append(_item_from_event(event.data))
            except (KeyError, TypeError, ValueError):
                logger.warning("ignored a malformed message.created event on %s", event.context)
        if items:
            self.messages = merge_messages(self.messages, items)


async def _on_message_created(state: ChatState, events: list[Event]) -> None:
    state._apply_message_events(events)
    visibility = await state.get_state(PageVisibilityState)
    if visibility.page_visible:
        await state._mark_open_read_if_visible()
    else:
        state._notify_hidden(events)


def _on_unread_changed(state: ChatState, events: list[Event]) -> None:
    state._apply_unread(events)


async def _on_conversation_added(state: ChatState, events: list[Event]) -> None:
    # Someone added this user to a conversation: show it in the sidebar.
    if any(event.context == state.user_context for event in events):
        profile_id = await state._require_profile()
        if profile_id is not None:
            state._reload_lists(profile_id)


def _on_presence(state: ChatState, events: list[Event]) -> None:
    state._apply_presence_events(events)


def _on_missed_events(state: ChatState, events: list[Event]) -> None:
    state._recover(events)


add_event_handler("message.created", ChatState, _on_message_created)
for _presence_event in (STATE, JOIN, LEAVE, SUBSCRIBED):
    add_event_handler(_presence_event, ChatState, _on_presence)
# A fresh subscription and a failed recovery both mean messages may be missing.
for _subscription_event in (SUBSCRIBED, RECOVERY_FAILED):
    add_event_handler(_subscription_event, ChatState, _on_missed_events)
add_event_handler(UNREAD_CHANGED_EVENT, ChatState, _on_unread_changed)
add_event_handler(CONVERSATION_ADDED_EVENT, ChatState, _on_conversation_added)
