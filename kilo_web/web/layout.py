"""KiloChatLayout: the sidebar, the message area and the composer.

The layout builds no event-service client of its own. It holds its contexts
through hook components on the app shell's per-tab client: the open
conversation's chat events (always, while it is open), the selected
instance's presence, and the open conversation's presence.
"""

from __future__ import annotations

from typing import Any

import reflex as rx

from kilo_web.web.chat_state import ChatState, ConversationRow, InstanceItem, MemberItem, MessageItem
from kilo_web.web.push import push_enabler
from kilo_web.web.shell import use_event_subscription, use_presence_subscription
from kilo_web.web.visibility import PageVisibilityState, page_visibility_tracker


def _instance_button(instance: InstanceItem) -> rx.Component:
    selected = instance["id"] == ChatState.selected_instance_id
    return rx.button(
        instance["label"],
        on_click=ChatState.select_instance(instance["id"]),
        variant=rx.cond(selected, "solid", "ghost"),
        width="100%",
        justify="start",
        class_name="instance-item",
    )


def _conversation_button(conversation: ConversationRow) -> rx.Component:
    selected = conversation["id"] == ChatState.selected_conversation_id
    return rx.button(
        rx.text("# ", conversation["title"], flex="1", text_align="left"),
        rx.cond(
            conversation["unread"] > 0,
            rx.badge(conversation["unread"], color_scheme="red", radius="full",
                     class_name="unread-count"),
        ),
        on_click=ChatState.select_conversation(conversation["id"]),
        variant=rx.cond(selected, "soft", "ghost"),
        width="100%",
        justify="start",
        class_name="conversation-item",
        data_title=conversation["title"],
        data_unread=conversation["unread"],
    )


class DocumentTitle(rx.Fragment):
    """Renders nothing; keeps ``document.title`` as "(unread) kilo_web"."""

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect``."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | rx.Var]:
        """Return the effect that writes the title whenever the total changes."""
        total = ChatState.unread_total
        source = f"""
useEffect(() => {{
    const total = {total};
    document.title = total > 0 ? `(${{total}}) kilo_web` : "kilo_web";
}}, [{total}]);"""
        return [rx.Var(_js_expr=source, _var_data=total._get_all_var_data())]


class HiddenPageNotifier(rx.Fragment):
    """Renders nothing; shows ``ChatState.notification`` through the Notification API.

    It shows a notification only while the page is hidden and the user
    granted permission, once per message id.
    """

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect``."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | rx.Var]:
        """Return the effect that shows each new notification."""
        notification = ChatState.notification
        source = f"""
useEffect(() => {{
    const note = {notification};
    if (!note || !note.id || typeof Notification === "undefined") return;
    if (document.visibilityState !== "hidden" || Notification.permission !== "granted") return;
    if (window.__kiloLastNotification === note.id) return;
    window.__kiloLastNotification = note.id;
    new Notification(note.title, {{body: note.body, tag: `message-${{note.id}}`}});
}}, [{notification}]);"""
        return [rx.Var(_js_expr=source, _var_data=notification._get_all_var_data())]


_ENABLE_NOTIFICATIONS = "window.kiloEnableNotifications && window.kiloEnableNotifications()"


def _inline_form(name: str, placeholder: str, label: str, on_submit, form_id: str) -> rx.Component:
    return rx.form(
        rx.hstack(
            rx.input(name=name, placeholder=placeholder, size="1", required=True, flex="1"),
            rx.button(label, type="submit", size="1"),
            width="100%",
        ),
        on_submit=on_submit,
        reset_on_submit=True,
        id=form_id,
        width="100%",
    )


def sidebar() -> rx.Component:
    """Render the user's instances and the conversations of the selected one."""
    return rx.vstack(
        rx.heading("kilo_web", size="5"),
        rx.text("Signed in as ", rx.text.strong(ChatState.display_name), size="2",
                id="signed-in-as"),
        rx.text("Instances", size="1", weight="bold", color_scheme="gray"),
        rx.foreach(ChatState.instances, _instance_button),
        _inline_form(
            "label", "New instance label", "Create", ChatState.create_instance, "create-instance"
        ),
        rx.divider(),
        rx.text("Conversations", size="1", weight="bold", color_scheme="gray"),
        rx.foreach(ChatState.visible_conversations, _conversation_button),
        rx.cond(
            ChatState.selected_instance_id != "",
            _inline_form(
                "title",
                "New conversation title",
                "Create",
                ChatState.create_conversation,
                "create-conversation",
            ),
        ),
        rx.spacer(),
        rx.button(
            "Mark all read",
            on_click=ChatState.mark_all_read,
            variant="outline",
            size="1",
            disabled=ChatState.unread_total == 0,
            id="mark-all-read",
        ),
        rx.button(
            "Enable notifications",
            on_click=rx.call_script(_ENABLE_NOTIFICATIONS),
            id="enable-notifications",
            variant="outline",
            size="1",
        ),
        rx.button("Log out", on_click=ChatState.do_logout, variant="outline", size="1"),
        width="260px",
        min_width="260px",
        height="100vh",
        padding="1em",
        border_right="1px solid var(--gray-a5)",
        overflow_y="auto",
    )


def _member_badge(member: MemberItem) -> rx.Component:
    online = ChatState.instance_online.contains(member["key"])
    return rx.badge(
        rx.box(
            width="8px",
            height="8px",
            border_radius="50%",
            background=rx.cond(online, "var(--green-9)", "var(--gray-6)"),
            class_name=rx.cond(online, "presence-dot online", "presence-dot offline"),
            title=rx.cond(online, "online", "offline"),
        ),
        member["display_name"],
        rx.cond(member["is_bot"], " (bot)", ""),
        variant="soft",
        class_name="member",
        data_user=member["key"],
        data_name=member["display_name"],
        data_online=rx.cond(online, "true", "false"),
    )


def _viewer_face(member: MemberItem) -> rx.Component:
    return rx.tooltip(
        rx.box(
            rx.avatar(fallback=member["display_name"][0:2], size="2", radius="full"),
            class_name="viewer",
            data_user=member["key"],
            data_name=member["display_name"],
        ),
        content=member["display_name"] + " is looking at this conversation",
    )


def _markdown_link(*children: rx.Component, **props: Any) -> rx.Component:
    """Render a Markdown link that opens in a new tab, without access to this page."""
    return rx.link(*children, **props, is_external=True, rel="noopener noreferrer")


def _message_row(message: MessageItem) -> rx.Component:
    mine = message["sender_id"] == ChatState.profile_id
    return rx.box(
        rx.hstack(
            rx.text(message["sender_name"], weight="bold", size="2"),
            rx.moment(message["created_at"], format="HH:mm", size="1", color="gray"),
            align="baseline",
        ),
        rx.cond(
            message["markdown"],
            rx.markdown(
                message["text"],
                # Raw HTML in the source is shown as text, never parsed.
                use_raw=False,
                use_math=False,
                use_katex=False,
                component_map={"a": _markdown_link},
                overflow_wrap="anywhere",
                class_name="message-text message-markdown",
            ),
            rx.text(message["text"], white_space="pre-wrap", overflow_wrap="anywhere", size="3",
                    class_name="message-text"),
        ),
        padding="0.5em 0.75em",
        border_radius="8px",
        background=rx.cond(mine, "var(--accent-a3)", "var(--gray-a2)"),
        class_name="message",
        data_seq=message["seq"],
    )


def message_area() -> rx.Component:
    """Render the open conversation: header, members, messages and composer."""
    return rx.vstack(
        rx.hstack(
            rx.heading(
                ChatState.selected_instance_label,
                " · ",
                ChatState.selected_conversation_title,
                size="4",
                id="conversation-title",
            ),
            rx.spacer(),
            rx.hstack(rx.foreach(ChatState.other_viewers, _viewer_face), id="viewers", spacing="1"),
            rx.hstack(rx.foreach(ChatState.members, _member_badge), wrap="wrap", id="members"),
            width="100%",
            align="center",
        ),
        _inline_form(
            "username", "Add a member by username", "Add", ChatState.add_member, "add-member"
        ),
        rx.auto_scroll(
            rx.vstack(rx.foreach(ChatState.messages, _message_row), spacing="2", width="100%"),
            id="message-list",
            flex="1",
            width="100%",
            min_height="0",
        ),
        rx.form(
            rx.hstack(
                rx.el.textarea(
                    name="text",
                    id="composer",
                    placeholder="Write a message. Enter sends, Shift+Enter adds a line.",
                    enter_key_submit=True,
                    rows=2,
                    style={"flex": "1", "resize": "vertical", "padding": "0.5em"},
                ),
                rx.button("Send", type="submit", id="send"),
                width="100%",
            ),
            on_submit=ChatState.send_message,
            reset_on_submit=True,
            width="100%",
        ),
        width="100%",
        height="100%",
        padding="1em",
    )


def _error_banner() -> rx.Component:
    return rx.fragment(
        rx.cond(
            ChatState.error_message != "",
            rx.callout(ChatState.error_message, color_scheme="red", id="error-message",
                       width="100%"),
        ),
        rx.cond(
            ChatState.info_message != "",
            rx.callout(ChatState.info_message, color_scheme="green", id="info-message",
                       width="100%"),
        ),
    )


def chat_layout() -> rx.Component:
    """Render the chat page for the signed-in user."""
    return rx.hstack(
        sidebar(),
        rx.vstack(
            _error_banner(),
            rx.cond(
                ChatState.selected_conversation_id != "",
                message_area(),
                rx.center(
                    rx.text("Create an instance and a conversation to start chatting."),
                    flex="1",
                    height="100vh",
                ),
            ),
            flex="1",
            min_width="0",
            height="100vh",
            spacing="0",
        ),
        # The open conversation's chat events, held while it is open.
        use_event_subscription(ChatState.conversation_context, True),
        # Instance presence while the layout is shown; conversation presence
        # only while the page is visible, so a hidden tab counts as away.
        page_visibility_tracker(on_change=ChatState.page_visibility_changed),
        # Unread counts and badge changes for this user.
        use_event_subscription(ChatState.user_context, True),
        DocumentTitle.create(),
        HiddenPageNotifier.create(),
        push_enabler(ChatState.push_public_key),
        use_presence_subscription(ChatState.instance_presence_context, True),
        use_presence_subscription(
            ChatState.conversation_presence_context, PageVisibilityState.page_visible
        ),
        spacing="0",
        width="100%",
    )


class KiloChatLayout(rx.ComponentNamespace):
    """The chat UI and its parts; call ``kilo_chat_layout()`` inside the app shell."""

    sidebar = staticmethod(sidebar)
    message_area = staticmethod(message_area)
    __call__ = staticmethod(chat_layout)


kilo_chat_layout = KiloChatLayout()
