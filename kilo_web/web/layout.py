"""KiloChatLayout: the sidebar, the message area and the composer.

At phone width (below 768 px) the sidebar becomes a drawer that the menu
button in the top bar opens; picking a conversation closes it. The page
follows the system's light or dark mode until the reader picks one with the
toggle.

The layout builds no event-service client of its own. It holds its contexts
through hook components on the app shell's per-tab client: the open
conversation's chat events (always, while it is open), the selected
instance's presence, and the open conversation's presence.
"""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex_components_core.core.banner import has_connection_errors

from kilo_web.web.chat_state import ChatState, ConversationRow, InstanceItem, MemberItem
from kilo_web.web.page_scripts import (
    DocumentTitle,
    MessageListBehaviour,
    ScrollToNewest,
    ScrollToUnread,
)
from kilo_web.web.push import push_enabler
from kilo_web.web.shell import EventServiceState, use_event_subscription, use_presence_subscription
from kilo_web.web.timeline import FAILED, PENDING, TimelineRow
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
        aria_current=rx.cond(selected, "true", "false"),
    )


def _conversation_button(conversation: ConversationRow) -> rx.Component:
    selected = conversation["id"] == ChatState.selected_conversation_id
    return rx.button(
        rx.text("# ", conversation["title"], flex="1", text_align="left"),
        rx.cond(
            conversation["unread"] > 0,
            rx.badge(conversation["unread"], color_scheme="red", radius="full",
                     class_name="unread-count", aria_label=conversation["unread"].to(str) + " unread"),
        ),
        on_click=ChatState.select_conversation(conversation["id"]),
        variant=rx.cond(selected, "soft", "ghost"),
        width="100%",
        justify="start",
        class_name="conversation-item",
        data_title=conversation["title"],
        data_unread=conversation["unread"],
        data_selected=rx.cond(selected, "true", "false"),
        aria_current=rx.cond(selected, "true", "false"),
    )


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
            rx.input(name=name, placeholder=placeholder, size="1", required=True, flex="1",
                     aria_label=placeholder),
            rx.button(label, type="submit", size="1"),
            width="100%",
        ),
        on_submit=on_submit,
        reset_on_submit=True,
        id=form_id,
        width="100%",
    )


SHORTCUTS = (
    ("/ or Ctrl+K", "write a message"),
    ("Alt+↑ / Alt+↓", "previous or next conversation"),
    ("Enter / Shift+Enter", "send / new line"),
)
"""The keyboard shortcuts, as the sidebar lists them; ``page_scripts`` implements them."""


def _shortcuts_help() -> rx.Component:
    return rx.el.details(
        rx.el.summary("Keyboard shortcuts"),
        rx.el.dl(
            *[rx.fragment(rx.el.dt(rx.code(keys)), rx.el.dd(action)) for keys, action in SHORTCUTS],
        ),
        id="shortcuts-help",
        class_name="shortcuts-help",
    )


def sidebar() -> rx.Component:
    """Render the user's instances and the conversations of the selected one."""
    return rx.vstack(
        rx.hstack(
            rx.heading("kilo_web", size="5"),
            rx.spacer(),
            rx.color_mode.button(id="color-mode-toggle", aria_label="Switch light or dark mode",
                                 size="1", variant="ghost"),
            rx.icon_button(
                rx.icon("x"), on_click=ChatState.set_sidebar_open(False), variant="ghost",
                size="1", aria_label="Close the conversation list", class_name="kilo-mobile-only",
            ),
            width="100%",
            align="center",
        ),
        rx.text("Signed in as ", rx.text.strong(ChatState.display_name), size="2",
                id="signed-in-as"),
        rx.text("Instances", size="1", weight="bold", color_scheme="gray", id="instances-heading"),
        rx.vstack(rx.foreach(ChatState.instances, _instance_button), width="100%", spacing="1",
                  role="list", aria_labelledby="instances-heading"),
        _inline_form(
            "label", "New instance label", "Create", ChatState.create_instance, "create-instance"
        ),
        rx.divider(),
        rx.text("Conversations", size="1", weight="bold", color_scheme="gray",
                id="conversations-heading"),
        rx.vstack(rx.foreach(ChatState.visible_conversations, _conversation_button),
                  width="100%", spacing="1", role="list", aria_labelledby="conversations-heading"),
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
        _shortcuts_help(),
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
        height="100vh",
        padding="1em",
        border_right="1px solid var(--gray-a5)",
        overflow_y="auto",
        class_name="kilo-sidebar",
        data_open=rx.cond(ChatState.sidebar_open, "true", "false"),
        aria_label="Instances and conversations",
        role="navigation",
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
        rx.cond(
            ChatState.is_instance_owner & ~member["is_bot"]
            & (member["id"] != ChatState.profile_id),
            rx.icon_button(
                rx.icon("x", size=10),
                on_click=ChatState.remove_member(member["id"]),
                size="1",
                variant="ghost",
                class_name="remove-member",
                aria_label="Remove " + member["display_name"] + " from this conversation",
                title="Remove from this conversation",
            ),
        ),
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


def _message_body(row: TimelineRow) -> rx.Component:
    # Every message is rendered as Markdown without raw HTML: HTML in the
    # source, plain text included, is shown as text and never parsed.
    return rx.markdown(
        row["message"]["text"],
        use_raw=False,
        use_math=False,
        use_katex=False,
        component_map={"a": _markdown_link},
        overflow_wrap="anywhere",
        class_name="message-text message-markdown",
    )


def _edit_form(row: TimelineRow) -> rx.Component:
    return rx.form(
        rx.el.textarea(
            name="text",
            default_value=row["message"]["text"],
            id="edit-box",
            aria_label="Edit your message. Enter saves, Shift+Enter adds a line.",
            enter_key_submit=True,
            auto_focus=True,
            rows=2,
            style={"width": "100%", "resize": "vertical", "padding": "0.5em",
                   "background": "var(--color-surface)", "color": "var(--gray-12)"},
        ),
        rx.hstack(
            rx.button("Save", type="submit", size="1", id="save-edit"),
            rx.button("Cancel", type="button", size="1", variant="soft",
                      on_click=ChatState.cancel_edit),
        ),
        on_submit=ChatState.save_edit,
        width="100%",
    )


def _message_actions(row: TimelineRow) -> rx.Component:
    message = row["message"]
    return rx.hstack(
        rx.icon_button(rx.icon("pencil", size=14), size="1", variant="ghost",
                       on_click=ChatState.start_edit(message["id"]),
                       aria_label="Edit message", class_name="edit-message"),
        rx.icon_button(rx.icon("trash-2", size=14), size="1", variant="ghost", color_scheme="red",
                       on_click=ChatState.delete_message(message["id"]),
                       aria_label="Delete message", class_name="delete-message"),
        class_name="message-actions",
        spacing="1",
    )


def _message_content(row: TimelineRow) -> rx.Component:
    message = row["message"]
    return rx.cond(
        message["deleted"],
        rx.text("This message was deleted.", size="2", color_scheme="gray", font_style="italic",
                class_name="message-deleted"),
        rx.cond(
            # Messages not stored yet have id 0, as has ``editing_id`` when nothing is edited.
            (ChatState.editing_id == message["id"]) & (message["id"] > 0),
            _edit_form(row),
            rx.fragment(
                _message_body(row),
                rx.cond(message["edited"],
                        rx.text("(edited)", size="1", color_scheme="gray", class_name="message-edited")),
            ),
        ),
    )


def _message_status(row: TimelineRow) -> rx.Component:
    status = row["message"]["status"]
    return rx.fragment(
        rx.cond(
            status == PENDING,
            rx.text("Sending…", size="1", color_scheme="gray", class_name="message-status"),
        ),
        rx.cond(
            status == FAILED,
            rx.hstack(
                rx.text("Not sent.", size="1", color_scheme="red", class_name="message-status"),
                rx.button(
                    "Retry",
                    size="1",
                    variant="soft",
                    color_scheme="red",
                    on_click=ChatState.retry_message(row["message"]["client_id"]),
                    class_name="retry-send",
                    aria_label="Send this message again",
                ),
                align="center",
            ),
        ),
    )


def _group_header(row: TimelineRow) -> rx.Component:
    message = row["message"]
    return rx.hstack(
        rx.avatar(fallback=message["sender_name"][0:2], size="1", radius="full",
                  aria_hidden="true"),
        rx.text(message["sender_name"], weight="bold", size="2", class_name="message-sender"),
        rx.cond(message["sender_is_bot"], rx.badge("bot", size="1", variant="soft")),
        rx.el.time(
            rx.moment(message["created_at"], from_now=True, interval=30_000),
            date_time=message["created_at"],
            title=row["exact_time"],
            class_name="message-time",
        ),
        align="center",
        spacing="2",
    )


def _day_separator(label: rx.Var[str]) -> rx.Component:
    return rx.hstack(
        rx.divider(flex="1"),
        rx.text(label, size="1", weight="medium", color_scheme="gray"),
        rx.divider(flex="1"),
        role="separator",
        aria_label=label,
        class_name="day-separator",
        align="center",
        width="100%",
        padding_y="0.5em",
    )


def _unread_divider() -> rx.Component:
    return rx.hstack(
        rx.divider(flex="1", color_scheme="red"),
        rx.text("New messages", size="1", weight="bold", color_scheme="red"),
        rx.divider(flex="1", color_scheme="red"),
        role="separator",
        aria_label="New messages",
        id="first-unread",
        class_name="unread-divider",
        align="center",
        width="100%",
    )


def _timeline_row(row: TimelineRow) -> rx.Component:
    message = row["message"]
    return rx.box(
        rx.cond(row["day_label"] != "", _day_separator(row["day_label"])),
        rx.cond(row["first_unread"], _unread_divider()),
        rx.box(
            rx.cond(row["group_start"], _group_header(row)),
            _message_content(row),
            _message_status(row),
            rx.cond(
                row["mine"] & (message["status"] == "sent") & ~message["deleted"],
                _message_actions(row),
            ),
            position="relative",
            padding="0.25em 0.75em",
            border_radius="8px",
            background=rx.cond(row["mine"], "var(--accent-a3)", "var(--gray-a2)"),
            margin_top=rx.cond(row["group_start"], "0.5em", "0.125em"),
            title=row["exact_time"],
        ),
        role="listitem",
        class_name="message",
        data_key=row["key"],
        data_seq=message["seq"],
        data_status=message["status"],
        data_client_id=message["client_id"],
        data_group_start=rx.cond(row["group_start"], "true", "false"),
    )


def _typing_entry(entry) -> rx.Component:
    # A new key for every event restarts the fade-out, so the line stays while
    # typing events keep coming and goes a few seconds after the last one.
    return rx.text(entry["name"], " is typing…", size="1", color_scheme="gray",
                   class_name="typing-indicator", key=entry["stamp"])


def _message_list() -> rx.Component:
    return rx.box(
        rx.box(
            # Clicked by the page's scroll script near either end of the list.
            rx.el.button(on_click=ChatState.load_older, id="load-older", hidden=True,
                         tab_index=-1, aria_hidden="true"),
            rx.el.button(on_click=ChatState.load_newer, id="load-newer", hidden=True,
                         tab_index=-1, aria_hidden="true"),
            rx.cond(
                ChatState.has_older,
                rx.center(rx.spinner(size="2"), padding="0.5em", aria_label="Loading older messages"),
            ),
            rx.cond(
                ChatState.messages.length() == 0,
                rx.center(
                    rx.text("No messages yet. Write the first one in the box below.",
                            color_scheme="gray"),
                    id="empty-messages",
                    height="100%",
                ),
            ),
            rx.box(rx.foreach(ChatState.timeline, _timeline_row), role="list",
                   aria_label="Messages", width="100%"),
            id="message-list",
            role="log",
            aria_live="polite",
            data_conversation=ChatState.selected_conversation_id,
            data_has_older=rx.cond(ChatState.has_older, "true", "false"),
            data_has_newer=rx.cond(ChatState.has_newer, "true", "false"),
            data_oldest_seq=rx.cond(ChatState.messages.length() > 0, ChatState.messages[0]["seq"], 0),
            data_newest_seq=rx.cond(ChatState.messages.length() > 0, ChatState.messages[-1]["seq"], 0),
            class_name="message-list",
            height="100%",
            width="100%",
        ),
        rx.button(
            rx.icon("arrow-down", size=16),
            "Newest",
            on_click=ChatState.jump_to_newest,
            id="jump-to-newest",
            class_name="jump-to-newest",
            size="2",
            radius="full",
            aria_label="Jump to the newest message",
        ),
        class_name="message-pane",
        position="relative",
        flex="1",
        width="100%",
        min_height="0",
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
            rx.cond(
                ChatState.has_unread_divider | ChatState.unread_above_window,
                rx.button("Jump to new messages", on_click=ChatState.jump_to_unread,
                          size="1", variant="soft", color_scheme="red", id="jump-to-unread"),
            ),
            rx.hstack(rx.foreach(ChatState.other_viewers, _viewer_face), id="viewers", spacing="1",
                      aria_label="People looking at this conversation"),
            rx.hstack(rx.foreach(ChatState.members, _member_badge), wrap="wrap", id="members",
                      aria_label="Members"),
            rx.button("Leave", on_click=ChatState.leave_conversation, size="1", variant="soft",
                      color_scheme="gray", id="leave-conversation",
                      aria_label="Leave this conversation"),
            width="100%",
            align="center",
            wrap="wrap",
        ),
        _inline_form(
            "username", "Add a member by username", "Add", ChatState.add_member, "add-member"
        ),
        _message_list(),
        rx.box(
            rx.foreach(ChatState.typing, _typing_entry),
            class_name="typing-line",
            aria_live="polite",
            min_height="1.25em",
            width="100%",
        ),
        rx.form(
            rx.hstack(
                rx.el.textarea(
                    name="text",
                    id="composer",
                    placeholder="Write a message. Enter sends, Shift+Enter adds a line.",
                    aria_label="Message. Markdown works; Enter sends, Shift+Enter adds a line.",
                    enter_key_submit=True,
                    rows=2,
                    # Throttled in the browser; the server drops repeats within 2 s as well.
                    on_change=ChatState.notify_typing.throttle(2000),
                    style={"flex": "1", "resize": "vertical", "padding": "0.5em",
                           "background": "var(--color-surface)", "color": "var(--gray-12)",
                           "border": "1px solid var(--gray-a7)", "border_radius": "6px"},
                ),
                rx.button("Send", type="submit", id="send", aria_label="Send the message"),
                width="100%",
            ),
            on_submit=ChatState.send_message,
            reset_on_submit=True,
            width="100%",
        ),
        width="100%",
        height="100%",
        min_height="0",
        padding="1em",
    )


def _empty_state() -> rx.Component:
    return rx.center(
        rx.cond(
            ChatState.instances.length() == 0,
            rx.text("You have no instances yet. Create one with the New instance label box in "
                    "the conversation list (the menu button on a phone).",
                    id="empty-instances", max_width="28em", text_align="center"),
            rx.text("There are no conversations in ", ChatState.selected_instance_label,
                    " yet. Create one with the New conversation title box in the conversation "
                    "list, or ask a member to add you to theirs.",
                    id="empty-conversations", max_width="28em", text_align="center"),
        ),
        flex="1",
        width="100%",
        padding="1em",
    )


def _connection_banner() -> rx.Component:
    return rx.cond(
        EventServiceState.event_service_reconnecting | has_connection_errors,
        rx.callout(
            "Reconnecting to the server. Live updates are paused; what you send is kept "
            "and new messages show up when the connection is back.",
            icon="wifi-off",
            color_scheme="amber",
            id="connection-banner",
            role="status",
            width="100%",
        ),
    )


def _mobile_bar() -> rx.Component:
    return rx.hstack(
        rx.icon_button(rx.icon("menu"), on_click=ChatState.set_sidebar_open(True), variant="ghost",
                       aria_label="Open the conversation list", id="open-sidebar"),
        rx.text(ChatState.selected_conversation_title, weight="bold", truncate=True),
        rx.spacer(),
        rx.cond(ChatState.unread_total > 0,
                rx.badge(ChatState.unread_total, color_scheme="red", radius="full")),
        class_name="kilo-mobile-bar",
        width="100%",
        padding="0.5em 1em",
        align="center",
        border_bottom="1px solid var(--gray-a5)",
    )


_PAGE_CSS = """
.kilo-sidebar { width: 260px; min-width: 260px; }
.kilo-mobile-bar, .kilo-mobile-only { display: none !important; }
.message-list { overflow-y: auto; overflow-anchor: none; }
.message-markdown p { white-space: pre-wrap; margin: 0; }
.message-markdown pre { overflow-x: auto; }
.message-time { font-size: var(--font-size-1); color: var(--gray-11); }
.jump-to-newest { position: absolute; right: 1em; bottom: 1em; display: none !important; }
.message-pane[data-scrolled-up="true"] .jump-to-newest { display: inline-flex !important; }
.message-actions { position: absolute; top: 0.25em; right: 0.5em; opacity: 0; }
.message:hover .message-actions, .message-actions:focus-within { opacity: 1; }
.typing-indicator { animation: kilo-typing-expire 0s linear 6s forwards; }
@keyframes kilo-typing-expire { to { visibility: hidden; } }
.shortcuts-help { font-size: var(--font-size-1); color: var(--gray-11); width: 100%; }
.shortcuts-help dl { display: grid; grid-template-columns: auto 1fr; gap: 0.25em 0.5em; margin: 0.5em 0; }
.shortcuts-help dd { margin: 0; }
@media (max-width: 767px) {
  .kilo-sidebar { display: none !important; position: fixed; top: 0; left: 0; bottom: 0;
                  width: min(85vw, 320px); z-index: 30; background: var(--color-panel-solid);
                  box-shadow: var(--shadow-5); }
  .kilo-sidebar[data-open="true"] { display: flex !important; }
  .kilo-mobile-bar { display: flex !important; }
  .kilo-mobile-only { display: inline-flex !important; }
  .kilo-main { height: 100dvh !important; }
}
"""


def _error_banner() -> rx.Component:
    return rx.fragment(
        _connection_banner(),
        rx.cond(
            ChatState.error_message != "",
            rx.callout(ChatState.error_message, color_scheme="red", id="error-message",
                       width="100%", role="alert"),
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
        rx.el.style(_PAGE_CSS),
        sidebar(),
        rx.vstack(
            _mobile_bar(),
            _error_banner(),
            rx.cond(
                ChatState.selected_conversation_id != "",
                message_area(),
                _empty_state(),
            ),
            flex="1",
            min_width="0",
            height="100vh",
            spacing="0",
            class_name="kilo-main",
            role="main",
        ),
        MessageListBehaviour.create(),
        ScrollToNewest.create(),
        ScrollToUnread.create(),
        rx.box(on_mount=rx.call_script(
            "Intl.DateTimeFormat().resolvedOptions().timeZone || ''",
            callback=ChatState.set_time_zone,
        )),
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
