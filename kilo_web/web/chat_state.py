"""The chat page's state: instances, conversations, members and messages.

Reads and writes go through ``kilo_web.chat.service``. Live messages arrive
through the app shell: ``message.created`` events of the open conversation
are merged into ``messages`` by id and kept in ``seq`` order, so an event
that repeats a message already loaded from the database changes nothing.

``messages`` is a window of at most ``MAX_LOADED_MESSAGES`` contiguous
messages, loaded a page at a time: the newest page when a conversation
opens, older pages as the reader scrolls up, newer ones as they scroll back
down. A page that pushes the window over its size drops messages from the
other end, so the page's DOM stays bounded however long the history is.

Sending is optimistic: the message shows at once as pending, under a client
message id made for it, and turns sent or failed. A retry posts again with
the same id, and the chat service returns the stored message for a repeated
id, so a retry never posts a message twice.

``message.updated`` and ``message.deleted`` events replace loaded messages
by id; messages outside the window are not loaded, so their events are
dropped. ``typing`` events of others fill ``typing``, which the page fades
out a few seconds after each event.
"""

from __future__ import annotations

import datetime
import logging
import uuid
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
from kilo_web.chat.publisher import (
    CONVERSATION_ADDED_EVENT,
    CONVERSATION_REMOVED_EVENT,
    MEMBER_REMOVED_EVENT,
    MESSAGE_DELETED_EVENT,
    MESSAGE_UPDATED_EVENT,
    TYPING_EVENT,
)
from kilo_web.chat.read_state import UNREAD_CHANGED_EVENT
from kilo_web.event_service.contexts import user_context
from kilo_web.event_service.embedded import get_backplane
from kilo_web.notifications.preview import message_preview
from kilo_web.runtime import (
    notification_service,
    send_limiter,
    typing_limiter,
    webpush_public_key,
)
from kilo_web.web.visibility import PageVisibilityState
from kilo_web.event_service.client import RECOVERY_FAILED, SUBSCRIBED
from kilo_web.event_service.presence import JOIN, LEAVE, STATE
from kilo_web.event_service.presence_mirror import PresenceMirror
from kilo_web.event_service.protocol import Event
from kilo_web.web.shell import add_event_handler
from kilo_web.web.timeline import (
    FAILED,
    PENDING,
    SENT,
    MessageItem,
    TimelineRow,
    build_timeline,
    resolve_time_zone,
)

logger = logging.getLogger(__name__)

MESSAGE_PAGE_SIZE = 50
"""How many messages the page loads at a time: when a conversation opens and per scroll."""

MAX_LOADED_MESSAGES = 4 * MESSAGE_PAGE_SIZE
"""Maximum number of stored messages the page keeps, and renders, at once."""

READ_CONTEXT_MESSAGES = 5
"""Read messages shown above the first unread one after a jump to it."""


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


def _message_item(
    *,
    message_id: int,
    seq: int,
    sender_id: int,
    sender_name: str,
    sender_is_bot: bool,
    blocks: Any,
    created_at: str,
    client_id: str | None = None,
    edited: bool = False,
    deleted: bool = False,
) -> MessageItem:
    return MessageItem(
        id=message_id,
        seq=seq,
        sender_id=sender_id,
        sender_name=sender_name,
        sender_is_bot=sender_is_bot,
        text=blocks_text(blocks),
        markdown=any(block.get("type") == "markdown" for block in blocks),
        created_at=created_at,
        status=SENT,
        client_id=client_id or "",
        edited=edited,
        deleted=deleted,
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
        client_id=view.client_message_id,
        edited=view.edited_at is not None,
        deleted=view.is_deleted,
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
        client_id=data.get("clientMessageId"),
        edited=data.get("editedAt") is not None,
        deleted=data.get("deletedAt") is not None,
    )


def merge_messages(current: list[MessageItem], new: list[MessageItem]) -> list[MessageItem]:
    """Merge ``new`` into ``current`` by message id and return them in ``seq`` order."""
    by_id = {item["id"]: item for item in current}
    for item in new:
        by_id[item["id"]] = item
    return sorted(by_id.values(), key=lambda item: item["seq"])


def keep_newest(messages: list[MessageItem], limit: int) -> tuple[list[MessageItem], bool]:
    """Return the newest ``limit`` of ``messages`` and whether any were dropped."""
    if len(messages) <= limit:
        return messages, False
    return messages[-limit:], True


def keep_oldest(messages: list[MessageItem], limit: int) -> tuple[list[MessageItem], bool]:
    """Return the oldest ``limit`` of ``messages`` and whether any were dropped."""
    if len(messages) <= limit:
        return messages, False
    return messages[:limit], True


def _error_toast(text: str) -> Any:
    """Return a toast event that shows a failed action and what to do next."""
    return rx.toast.error(text, id="chat-error", duration=8000)


class TypingItem(TypedDict):
    """Someone who is typing in the open conversation, as the last ``typing`` event named them."""

    user_id: int
    name: str
    stamp: str
    """Unique per event, so the indicator restarts its fade-out on every event."""


class PendingMessage(TypedDict):
    """A message sent from this page that is not stored yet."""

    conversation_id: str
    item: MessageItem


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
    is_instance_owner: bool = False
    """True when the signed-in user owns the open conversation's instance."""
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
    pending: list[PendingMessage] = []
    """Messages sent from this page that are not stored yet, pending or failed."""
    has_older: bool = False
    """True when messages older than the loaded window may exist."""
    has_newer: bool = False
    """True when the loaded window stops short of the newest message."""
    read_seq: int = -1
    """The reader's read position when the open conversation was opened; -1 for none."""
    _read_seq_conversation: str = ""
    scroll_to_newest: int = 0
    """Incremented to make the page scroll the message list to its end."""
    scroll_to_unread: int = 0
    """Incremented to make the page scroll the "new messages" divider into view."""
    time_zone: str = ""
    """The browser's IANA time zone, for day separators and exact times."""
    sidebar_open: bool = False
    """True while the conversation list is open as a drawer (at phone width)."""
    editing_id: int = 0
    """The id of the user's own message being edited, or 0."""
    typing: list[TypingItem] = []
    """Others typing in the open conversation; the page hides each entry a few seconds after its event."""

    @rx.event
    def set_sidebar_open(self, value: bool):
        """Open or close the conversation list drawer."""
        self.sidebar_open = bool(value)

    @rx.var
    def timeline(self) -> list[TimelineRow]:
        """The rows of the message list: stored messages, then pending ones.

        NOTE: the rows are computed again only when the state changes, so a
        page left open over midnight keeps "Today" on the previous day until
        the next message or reload. The relative times update in the browser.
        """
        local = [p["item"] for p in self.pending
                 if p["conversation_id"] == self.selected_conversation_id]
        return build_timeline(
            [*self.messages, *local],
            now=datetime.datetime.now(datetime.timezone.utc),
            time_zone=resolve_time_zone(self.time_zone),
            viewer_id=self.profile_id,
            # Above the window the divider would mark a message that is not the first unread.
            read_seq=None if self.read_seq < 0 or self._unread_starts_above() else self.read_seq,
        )

    @rx.var
    def has_unread_divider(self) -> bool:
        """True when the message list shows the "new messages" divider."""
        if self.read_seq < 0 or self._unread_starts_above():
            return False
        return any(m["seq"] > self.read_seq and m["sender_id"] != self.profile_id
                   for m in self.messages)

    @rx.var
    def unread_above_window(self) -> bool:
        """True when the first unread message is older than every loaded one."""
        return self.read_seq >= 0 and self._unread_starts_above()

    def _unread_starts_above(self) -> bool:
        """Tell whether messages between the read position and the window are not loaded."""
        if not self.has_older or not self.messages:
            return False
        return self.messages[0]["seq"] > self.read_seq + 1

    @rx.event
    def set_time_zone(self, name: str):
        """Store the browser's time zone; the page sends it once when it mounts."""
        if isinstance(name, str) and len(name) <= 64:
            self.time_zone = name

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

    def _reload_conversation(self, *, at_unread: bool = False) -> None:
        """Load a page of the open conversation and its members.

        The page is the newest one, or with ``at_unread`` the one that
        starts just above the first unread message, so the "new messages"
        divider is in it.
        """
        self._refresh_presence_lists()
        if not self.selected_conversation_id:
            self.messages = []
            self.members = []
            self.has_older = self.has_newer = False
            self.read_seq = -1
            return
        conversation_id = self.selected_conversation_id
        with rx.session() as session:
            if self._read_seq_conversation != conversation_id:
                # Read before the page marks the conversation read, so the
                # "new messages" divider stays where it was on opening.
                self.read_seq = read_state.read_position(session, conversation_id, self.profile_id)
                self._read_seq_conversation = conversation_id
                self.typing = []
                self.editing_id = 0
            at_unread = at_unread and self.read_seq >= 0
            if at_unread:
                start = max(0, self.read_seq - READ_CONTEXT_MESSAGES)
                views = service.list_messages(
                    session, conversation_id, limit=MESSAGE_PAGE_SIZE, after_seq=start,
                    viewer_id=self.profile_id,
                )
            else:
                views = service.list_messages(
                    session, conversation_id, limit=MESSAGE_PAGE_SIZE, viewer_id=self.profile_id,
                )
            self._load_members(session)
        self.messages = [_item_from_view(view) for view in views]
        if at_unread:
            # Message seqs start at 1, so anything at or below ``start`` is older.
            self.has_older = start > 0
            self.has_newer = len(views) == MESSAGE_PAGE_SIZE
            self.scroll_to_unread += 1
            return
        self.has_older = len(views) == MESSAGE_PAGE_SIZE
        self.has_newer = False
        self.scroll_to_newest += 1

    def _load_members(self, session: Any) -> None:
        """Load the open conversation's members and whether this user may remove them."""
        conversation_id = self.selected_conversation_id
        self.members = [
            MemberItem(id=m.id, key=str(m.id), display_name=m.display_name, is_bot=m.is_bot)
            for m in service.list_members(session, conversation_id)
        ]
        instance = service.get_instance(session, self.selected_instance_id)
        self.is_instance_owner = instance.owner_id == self.profile_id

    def _load_page(self, *, before_seq: int | None = None,
                   after_seq: int | None = None) -> list[MessageItem]:
        with rx.session() as session:
            views = service.list_messages(
                session, self.selected_conversation_id, limit=MESSAGE_PAGE_SIZE,
                before_seq=before_seq, after_seq=after_seq, viewer_id=self.profile_id,
            )
        return [_item_from_view(view) for view in views]

    @rx.event
    def load_older(self):
        """Load the page before the oldest loaded message; the page calls it near the top."""
        if not (self.selected_conversation_id and self.has_older and self.messages):
            return
        page = self._load_page(before_seq=self.messages[0]["seq"])
        self.has_older = len(page) == MESSAGE_PAGE_SIZE
        merged = merge_messages(self.messages, page)
        self.messages, dropped = keep_oldest(merged, MAX_LOADED_MESSAGES)
        self.has_newer = self.has_newer or dropped

    @rx.event
    def load_newer(self):
        """Load the page after the newest loaded message; the page calls it near the end."""
        if not (self.selected_conversation_id and self.has_newer and self.messages):
            return
        page = self._load_page(after_seq=self.messages[-1]["seq"])
        self.has_newer = len(page) == MESSAGE_PAGE_SIZE
        merged = merge_messages(self.messages, page)
        self.messages, dropped = keep_newest(merged, MAX_LOADED_MESSAGES)
        self.has_older = self.has_older or dropped

    @rx.event
    def jump_to_newest(self):
        """Show the newest messages, loading them first if the window stops short of them."""
        if self.has_newer:
            self._reload_conversation()
        else:
            self.scroll_to_newest += 1

    @rx.event
    def jump_to_unread(self):
        """Show the first unread message, loading its page first if it is not loaded."""
        if not self.has_unread_divider:
            self._reload_conversation(at_unread=True)
        else:
            self.scroll_to_unread += 1

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
        self.sidebar_open = False
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
        """Show the composer's text at once as pending, then post it to the open conversation."""
        text = str(form_data.get("text", ""))
        if not self.selected_conversation_id:
            yield rx.toast.error("Open a conversation before sending a message.")
            return
        if not text.strip():
            return
        # The post checks the session again; the pending row needs no database.
        profile_id = self.profile_id
        if profile_id <= 0:
            yield reflex_local_auth.LoginState.redir
            return
        item = MessageItem(
            id=0, seq=0, sender_id=profile_id, sender_name=self.display_name,
            sender_is_bot=False, text=text, markdown=False,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            status=PENDING, client_id=uuid.uuid4().hex, edited=False, deleted=False,
        )
        self.pending = [*self.pending, PendingMessage(
            conversation_id=self.selected_conversation_id, item=item)]
        self.scroll_to_newest += 1
        # Send the pending row to the browser before the post, which may be slow.
        yield
        yield await self._post_pending(item["client_id"])

    @rx.event
    async def retry_message(self, client_id: str):
        """Post a failed message again under its client message id."""
        entry = self._pending_entry(client_id)
        if entry is None or entry["item"]["status"] != FAILED:
            # Already pending or sent: a second click must not post again.
            return
        self._set_pending_status(client_id, PENDING)
        yield
        yield await self._post_pending(client_id)

    def _pending_entry(self, client_id: str) -> PendingMessage | None:
        return next((p for p in self.pending if p["item"]["client_id"] == client_id), None)

    def _set_pending_status(self, client_id: str, status: str) -> None:
        self.pending = [
            PendingMessage(conversation_id=p["conversation_id"],
                           item={**p["item"], "status": status})
            if p["item"]["client_id"] == client_id else p
            for p in self.pending
        ]

    def _drop_pending(self, client_ids: set[str]) -> None:
        if client_ids and any(p["item"]["client_id"] in client_ids for p in self.pending):
            self.pending = [p for p in self.pending if p["item"]["client_id"] not in client_ids]

    async def _post_pending(self, client_id: str) -> Any:
        """Post one pending message; return a toast to show when it failed."""
        entry = self._pending_entry(client_id)
        if entry is None:
            return None
        conversation_id, text = entry["conversation_id"], entry["item"]["text"]
        try:
            profile_id = await self._require_profile()
            if profile_id is None:
                return reflex_local_auth.LoginState.redir
            send_limiter().check(profile_id)
            with rx.session() as session:
                view = await service.post_message(
                    session,
                    conversation_id=conversation_id,
                    sender_id=profile_id,
                    blocks=text_blocks(text),
                    publisher=get_backplane(),
                    after_publish=notification_service().after_publish,
                    client_message_id=client_id,
                )
        except ChatError as exc:
            logger.info("sending message %s to conversation %s failed: %s",
                        client_id, conversation_id, exc)
            self._set_pending_status(client_id, FAILED)
            return rx.toast.error(
                f"The message was not sent: {exc}. Press Retry on it to send it again.",
                id="send-failed",
            )
        except DATABASE_UNAVAILABLE as exc:
            logger.warning("sending to conversation %s failed, the database is unavailable: %s",
                           conversation_id, exc.__class__.__name__)
            self._set_pending_status(client_id, FAILED)
            return rx.toast.error(
                "The message was not sent: the database is unavailable right now. "
                "Press Retry on it in a few seconds.",
                id="send-failed",
            )
        self._drop_pending({client_id})
        if conversation_id == self.selected_conversation_id and not self.has_newer:
            self.messages = merge_messages(self.messages, [_item_from_view(view)])
        return None

    @rx.event
    def start_edit(self, message_id: int):
        """Show the edit box for one of the user's own messages."""
        self.editing_id = int(message_id)

    @rx.event
    def cancel_edit(self):
        """Close the edit box without saving."""
        self.editing_id = 0

    @rx.event
    async def save_edit(self, form_data: dict[str, Any]):
        """Replace the text of the message in the edit box."""
        message_id, text = self.editing_id, str(form_data.get("text", ""))
        if not (message_id and self.selected_conversation_id):
            return None
        try:
            with rx.session() as session:
                view = await service.edit_message(
                    session, conversation_id=self.selected_conversation_id,
                    message_id=message_id, user_id=self.profile_id, content=text,
                    publisher=get_backplane(),
                )
        except ChatError as exc:
            logger.info("editing message %s failed: %s", message_id, exc)
            return _error_toast(f"The message was not changed: {exc}.")
        self.editing_id = 0
        self._replace_loaded([_item_from_view(view)])
        return None

    @rx.event
    async def delete_message(self, message_id: int):
        """Delete one of the user's own messages; it stays in the list as deleted."""
        if not self.selected_conversation_id:
            return None
        try:
            with rx.session() as session:
                view = await service.delete_message(
                    session, conversation_id=self.selected_conversation_id,
                    message_id=int(message_id), user_id=self.profile_id,
                    publisher=get_backplane(),
                )
        except ChatError as exc:
            logger.info("deleting message %s failed: %s", message_id, exc)
            return _error_toast(f"The message was not deleted: {exc}.")
        if self.editing_id == view.id:
            self.editing_id = 0
        self._replace_loaded([_item_from_view(view)])
        return None

    @rx.event
    async def notify_typing(self, _value: str = ""):
        """Publish a typing event of the user to the open conversation; the page throttles the calls."""
        if not self.selected_conversation_id or self.profile_id <= 0:
            return
        try:
            with rx.session() as session:
                await service.publish_typing(
                    session, conversation_id=self.selected_conversation_id,
                    user_id=self.profile_id, publisher=get_backplane(),
                    limiter=typing_limiter(),
                )
        except ChatError as exc:
            # Typing is a hint; the composer keeps working without it.
            logger.info("typing event for conversation %s failed: %s",
                        self.selected_conversation_id, exc)

    def _replace_loaded(self, items: list[MessageItem]) -> None:
        """Replace loaded messages by newer copies with the same ids; ignore the others."""
        loaded = {item["id"] for item in self.messages}
        known = [item for item in items if item["id"] in loaded]
        if known:
            self.messages = merge_messages(self.messages, known)

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
            return _error_toast(str(exc))
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
            return _error_toast("Create or select an instance first.")
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
            return _error_toast(str(exc))
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
            return _error_toast("Open a conversation before adding members.")
        try:
            with rx.session() as session:
                service.require_conversation_member(
                    session, self.selected_conversation_id, profile_id
                )
                user = service.find_user_by_username(session, username)
                if user is None or user.id is None:
                    return _error_toast((
                        f"No user is named {username!r}; check the spelling of the username."
                    ))
                if user.is_bot:
                    return _error_toast((
                        f"{user.display_name} is a bot; bots take part in the conversations "
                        "of their own instance only."
                    ))
                added = service.add_conversation_member(
                    session, conversation_id=self.selected_conversation_id, user_id=user.id
                )
                name, added_id = user.display_name, user.id
                conversation = service.get_conversation(session, self.selected_conversation_id)
        except ChatError as exc:
            return _error_toast(str(exc))
        if added:
            await service.announce_conversation(get_backplane(), conversation, [added_id])
        self.error_message = ""
        self.info_message = (
            f"Added {name} to this conversation." if added
            else f"{name} is already a member of this conversation."
        )
        self._reload_conversation()
        return None

    @rx.event
    async def leave_conversation(self):
        """Take the signed-in user out of the open conversation."""
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        return await self._remove(profile_id)

    @rx.event
    async def remove_member(self, user_id: int):
        """Take a member out of the open conversation; the instance owner's action."""
        profile_id = await self._require_profile()
        if profile_id is None:
            return reflex_local_auth.LoginState.redir
        return await self._remove(int(user_id))

    async def _remove(self, user_id: int) -> Any:
        conversation_id = self.selected_conversation_id
        if not conversation_id:
            return _error_toast("Open a conversation first.")
        title = self.selected_conversation_title
        try:
            with rx.session() as session:
                await service.remove_conversation_member(
                    session, conversation_id=conversation_id, user_id=user_id,
                    removed_by=self.profile_id, publisher=get_backplane(),
                    on_unread_change=notification_service().on_unread_changed,
                )
        except ChatError as exc:
            return _error_toast(str(exc))
        if user_id == self.profile_id:
            self._forget_conversation(conversation_id)
            return rx.toast.info(f"You left {title}.", id="chat-info")
        with rx.session() as session:
            self._load_members(session)
        return None

    def _forget_conversation(self, conversation_id: str) -> None:
        """Drop a conversation this user no longer belongs to; open another if it was open."""
        self.conversations = [c for c in self.conversations if c["id"] != conversation_id]
        self.unread_counts = {k: v for k, v in self.unread_counts.items() if k != conversation_id}
        if self.selected_conversation_id == conversation_id:
            visible = [c for c in self.conversations
                       if c["instance_id"] == self.selected_instance_id]
            self.selected_conversation_id = visible[0]["id"] if visible else ""
            self._reload_conversation()

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
        """Merge ``message.created`` events of the open conversation into ``messages``.

        While the loaded window stops short of the newest message, new
        messages are not merged: they are loaded with the newer pages.
        """
        context = self.conversation_context
        items: list[MessageItem] = []
        for event in events:
            if event.context != context:
                continue
            try:
                items.append(_item_from_event(event.data))
            except (KeyError, TypeError, ValueError):
                logger.warning("ignored a malformed message.created event on %s", event.context)
        if not items:
            return
        mine = {item["client_id"] for item in items
                if item["client_id"] and item["sender_id"] == self.profile_id}
        self._drop_pending(mine)
        senders = {item["sender_id"] for item in items}
        if any(entry["user_id"] in senders for entry in self.typing):
            self.typing = [entry for entry in self.typing if entry["user_id"] not in senders]
        if not self.has_newer:
            merged = merge_messages(self.messages, items)
            self.messages, dropped = keep_newest(merged, MAX_LOADED_MESSAGES)
            self.has_older = self.has_older or dropped


def _on_message_changed(state: ChatState, events: list[Event]) -> None:
    items: list[MessageItem] = []
    for event in events:
        if event.context != state.conversation_context:
            continue
        data = event.data
        try:
            if event.event == MESSAGE_DELETED_EVENT:
                # The deleted event carries ids only; the loaded copy keeps the rest.
                message_id = int(data["messageId"])
                loaded = next((m for m in state.messages if m["id"] == message_id), None)
                if loaded is not None:
                    items.append({**loaded, "text": "", "markdown": False, "deleted": True})
            else:
                items.append(_item_from_event(data))
        except (KeyError, TypeError, ValueError):
            logger.warning("ignored a malformed %s event on %s", event.event, event.context)
    state._replace_loaded(items)
    if state.editing_id and any(i["id"] == state.editing_id and i["deleted"] for i in items):
        state.editing_id = 0


def _on_typing(state: ChatState, events: list[Event]) -> None:
    typing = {entry["user_id"]: entry for entry in state.typing}
    for event in events:
        if event.context != state.conversation_context:
            continue
        try:
            user_id = int(event.data["userId"])
            name = str(event.data["displayName"])
        except (KeyError, TypeError, ValueError):
            logger.warning("ignored a malformed typing event on %s", event.context)
            continue
        if user_id != state.profile_id:
            typing[user_id] = TypingItem(user_id=user_id, name=name, stamp=uuid.uuid4().hex[:12])
    state.typing = list(typing.values())


async def _on_message_created(state: ChatState, events: list[Event]) -> None:
    caught_up = not state.has_unread_divider
    state._apply_message_events(events)
    visibility = await state.get_state(PageVisibilityState)
    if visibility.page_visible:
        # Messages that arrive while the reader is looking get no "new messages" divider.
        if caught_up and state.read_seq >= 0 and state.messages:
            state.read_seq = max(state.read_seq, state.messages[-1]["seq"])
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


def _on_conversation_removed(state: ChatState, events: list[Event]) -> None:
    # This user left or was removed: drop the conversation, with a notice if it was open.
    removed = [event.data.get("conversationId") for event in events
               if event.context == state.user_context]
    titles = {c["id"]: c["title"] for c in state.conversations}
    for conversation_id in removed:
        if conversation_id not in titles:
            continue  # Already dropped, as after leaving from this tab.
        if conversation_id == state.selected_conversation_id:
            state.info_message = (
                f"You are no longer a member of {titles[conversation_id]}; ask one of its "
                "members to add you again."
            )
        state._forget_conversation(conversation_id)


def _on_member_removed(state: ChatState, events: list[Event]) -> None:
    # Someone left the open conversation: show the new member list.
    if any(event.context == state.conversation_context for event in events):
        with rx.session() as session:
            state._load_members(session)


def _on_presence(state: ChatState, events: list[Event]) -> None:
    state._apply_presence_events(events)


def _on_missed_events(state: ChatState, events: list[Event]) -> None:
    state._recover(events)


add_event_handler("message.created", ChatState, _on_message_created)
add_event_handler(MESSAGE_UPDATED_EVENT, ChatState, _on_message_changed)
add_event_handler(MESSAGE_DELETED_EVENT, ChatState, _on_message_changed)
add_event_handler(TYPING_EVENT, ChatState, _on_typing)
for _presence_event in (STATE, JOIN, LEAVE, SUBSCRIBED):
    add_event_handler(_presence_event, ChatState, _on_presence)
# A fresh subscription and a failed recovery both mean messages may be missing.
for _subscription_event in (SUBSCRIBED, RECOVERY_FAILED):
    add_event_handler(_subscription_event, ChatState, _on_missed_events)
add_event_handler(UNREAD_CHANGED_EVENT, ChatState, _on_unread_changed)
add_event_handler(CONVERSATION_ADDED_EVENT, ChatState, _on_conversation_added)
add_event_handler(CONVERSATION_REMOVED_EVENT, ChatState, _on_conversation_removed)
add_event_handler(MEMBER_REMOVED_EVENT, ChatState, _on_member_removed)
