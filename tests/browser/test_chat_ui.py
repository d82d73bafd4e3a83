"""The chat page in Chromium: Markdown, times and groups, the connection banner,
optimistic sending, unread divider, long history, phone width, dark mode,
shortcuts, empty states, the tab title, toasts, editing, deleting, typing,
and the screenshots in docs/screenshots/.

The app runs as ``reflex run`` with the embedded event service. The page
reaches the event service through a proxy that the test blocks and unblocks.
Accounts, conversations and messages are written straight into the app's
SQLite file, which is much faster than typing them, and the page reads them
from there like any others.
"""

from __future__ import annotations

import datetime
import itertools
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.accounts.users import create_local_user
from kilo_web.chat import read_state, service
from kilo_web.chat.database import make_engine
from kilo_web.chat.models import Conversation, Message
from kilo_web.web.chat_state import MAX_LOADED_MESSAGES, MESSAGE_PAGE_SIZE
from tests.helpers import ProxyThread

from .conftest import PROJECT_DIR, wait_for
from .test_chat_e2e import RunningApp, message_texts, send

PASSWORD = "correct horse battery"
SCREENSHOT_DIR = PROJECT_DIR / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
UTC = datetime.timezone.utc


@dataclass
class UiApp:
    app: RunningApp
    proxy: ProxyThread
    engine: sa.Engine


@pytest.fixture(scope="module")
def ui_app(tmp_path_factory) -> Iterator[UiApp]:
    root = tmp_path_factory.mktemp("ui-app")
    data_dir = root / "data"
    app = RunningApp(data_dir, root / "reflex.log")
    proxy = ProxyThread(int(app.environment["KILO_EVENT_SERVICE_PORT"]))
    app.environment.update({
        "KILO_EVENT_SERVICE_URL": proxy.proxy.url,
        "KILO_DEMO_BOT": "0",
        "KILO_RECONNECT_MIN_SECONDS": "0.1",
        "KILO_RECONNECT_MAX_SECONDS": "1",
        # A small burst, so a test can run into the limit and see a send fail.
        "KILO_MESSAGE_BURST": "5",
        "KILO_MESSAGES_PER_MINUTE": "30",
    })
    try:
        app.start()
        engine = make_engine(f"sqlite:///{data_dir / 'kilo_web.db'}")
        yield UiApp(app, proxy, engine)
        engine.dispose()
    finally:
        app.stop()
        proxy.stop()


_numbers = itertools.count(1)


@dataclass
class Room:
    """Two users in one conversation of a new instance."""

    reader: str
    writer: str
    reader_id: int
    writer_id: int
    instance_id: str
    conversation_id: str


def make_room(ui: UiApp, title: str = "Plans", *, extra_titles: tuple[str, ...] = ()) -> Room:
    number = next(_numbers)
    suffix = uuid.uuid4().hex[:6]
    with Session(ui.engine) as session:
        reader = create_local_user(session, username=f"r{number}_{suffix}", password=PASSWORD,
                                   display_name=f"Reader {number}")
        writer = create_local_user(session, username=f"w{number}_{suffix}", password=PASSWORD,
                                   display_name=f"Writer {number}")
        instance = service.create_instance(session, owner_id=reader.id, label=f"Sandbox {number}")
        conversation = service.create_conversation(
            session, instance_id=instance.id, title=title, creator_id=reader.id,
            member_ids=[writer.id])
        for extra in extra_titles:
            service.create_conversation(session, instance_id=instance.id, title=extra,
                                        creator_id=reader.id, member_ids=[writer.id])
        return Room(f"r{number}_{suffix}", f"w{number}_{suffix}", reader.id, writer.id,
                    instance.id, conversation.id)


def insert_messages(ui: UiApp, conversation_id: str,
                    rows: list[tuple[int, str, datetime.datetime]]) -> None:
    """Store messages (sender id, text, time) in one transaction, numbered after the last."""
    with Session(ui.engine) as session:
        conversation = session.get(Conversation, conversation_id)
        first = conversation.last_message_seq + 1
        session.execute(sa.insert(Message), [
            {"conversation_id": conversation_id, "seq": first + index, "sender_id": sender,
             "content": [{"type": "text", "text": text}], "created_at": at}
            for index, (sender, text, at) in enumerate(rows)
        ])
        conversation.last_message_seq = first + len(rows) - 1
        session.add(conversation)
        session.commit()


def stored_texts(ui: UiApp, conversation_id: str) -> list[str]:
    with Session(ui.engine) as session:
        # A deleted message has no blocks.
        return [view.blocks[0]["text"] for view in service.list_messages(
            session, conversation_id, limit=200) if view.blocks]


def open_page(ui: UiApp, browser, room: Room, *, viewport=DESKTOP, color_scheme="light"):
    context = browser.new_context(viewport=viewport, color_scheme=color_scheme,
                                  timezone_id="UTC")
    page = context.new_page()
    page.goto(f"{ui.app.url}/login")
    page.fill("input[name=username]", room.reader)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # At phone width the sidebar is hidden, so wait for the message list instead.
    page.wait_for_selector("#message-list", timeout=30_000)
    return context, page


def screenshot(page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"))


def test_markdown_renders_safely(ui_app, browser):
    room = make_room(ui_app)
    context, page = open_page(ui_app, browser, room)
    try:
        send(page, "**bold** and `inline`\n\n```\nprint('block')\n```\n\n"
                   "[site](https://example.org/docs) [bad](javascript:window.pwned=1) "
                   "<img src=x onerror=\"window.pwned=2\"> <b>raw</b>")
        body = page.locator(".message[data-status='sent'] .message-markdown").last
        body.locator("a", has_text="site").wait_for()
        assert body.locator("strong", has_text="bold").count() == 1
        assert body.locator("code", has_text="inline").count() == 1
        assert body.locator("pre", has_text="print('block')").count() == 1
        link = body.locator("a", has_text="site")
        assert link.get_attribute("href") == "https://example.org/docs"
        assert link.get_attribute("target") == "_blank"
        assert link.get_attribute("rel") == "noopener noreferrer"
        assert "javascript" not in (body.locator("a", has_text="bad").get_attribute("href") or "")
        assert body.locator("img, b").count() == 0
        assert "<img" in body.inner_text()

        # Plain text stays text, line breaks included.
        send(page, "plain <script>window.pwned=3</script>\nsecond line")
        plain = page.locator(".message-text", has_text="second line")
        plain.wait_for()
        assert plain.locator("script").count() == 0
        assert "plain <script>window.pwned=3</script>\nsecond line" in message_texts(page)
        assert page.evaluate("window.pwned") is None
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def test_times_day_separators_and_groups(ui_app, browser):
    room = make_room(ui_app)
    now = datetime.datetime.now(UTC)
    yesterday = now - datetime.timedelta(days=1)
    insert_messages(ui_app, room.conversation_id, [
        (room.writer_id, "old one", yesterday),
        (room.writer_id, "first", now - datetime.timedelta(minutes=4)),
        (room.writer_id, "second", now - datetime.timedelta(minutes=3)),
        (room.reader_id, "mine", now - datetime.timedelta(minutes=2)),
    ])
    context, page = open_page(ui_app, browser, room)
    try:
        wait_for(lambda: page.locator(".message").count() == 4,
                 message=lambda: f"4 messages, got {message_texts(page)}")
        assert page.locator(".day-separator").all_inner_texts() == ["Yesterday", "Today"]
        starts = [row.get_attribute("data-group-start") for row in page.locator(".message").all()]
        assert starts == ["true", "true", "false", "true"]
        # Relative time in the header, the exact time on hover.
        header_time = page.locator(".message").nth(1).locator(".message-time")
        wait_for(lambda: "ago" in header_time.inner_text(),
                 message=lambda: f"a relative time, got {header_time.inner_text()!r}")
        exact = header_time.get_attribute("title") or ""
        local = now - datetime.timedelta(minutes=4)
        assert exact.endswith(f"{local:%B %Y}, {local:%H:%M}:{local:%S}")
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def test_connection_banner_follows_event_service(ui_app, browser):
    room = make_room(ui_app)
    opened = ui_app.app.log_count("opened an event-service connection")
    context, page = open_page(ui_app, browser, room)
    banner = page.locator("#connection-banner")
    try:
        wait_for(lambda: ui_app.app.log_count("opened an event-service connection") > opened,
                 message="the tab's event-service connection")
        assert banner.count() == 0
        ui_app.proxy.call(ui_app.proxy.proxy.block)
        banner.wait_for(timeout=30_000)
        screenshot(page, "desktop-reconnecting")
        ui_app.proxy.call(ui_app.proxy.proxy.unblock)
        banner.wait_for(state="detached", timeout=30_000)
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        ui_app.proxy.call(ui_app.proxy.proxy.unblock)
        context.close()


def test_failed_send_retries_without_duplicate(ui_app, browser):
    room = make_room(ui_app)
    context, page = open_page(ui_app, browser, room)
    failed = page.locator(".message[data-status='failed']")
    try:
        # Send until the rate limit rejects one; the burst allows 5 at once.
        for number in range(12):
            send(page, f"burst {number}")
            # The message shows at once, before the server stored it.
            page.locator(".message-text", has_text=f"burst {number}").wait_for()
            wait_for(lambda: page.locator(".message[data-status='pending']").count() == 0,
                     message="the send to settle")
            if failed.count():
                break
        assert failed.count() == 1, "the rate limit never rejected a message"
        text = failed.locator(".message-text").inner_text()
        client_id = failed.get_attribute("data-client-id")
        page.locator("[data-sonner-toast]", has_text="Retry").first.wait_for()
        assert text not in stored_texts(ui_app, room.conversation_id)

        # Retry until the limit lets it through; a double click still stores it once.
        def sent() -> bool:
            if failed.count() == 0:
                return True
            failed.locator(".retry-send").dblclick()
            return False

        wait_for(sent, timeout=30, interval=1.0, message="the retry to succeed")
        page.locator(f".message[data-status='sent'] .message-text", has_text=text).wait_for()
        assert stored_texts(ui_app, room.conversation_id).count(text) == 1
        assert message_texts(page).count(text) == 1
        with Session(ui_app.engine) as session:
            stored = service.find_client_message(session, sender_id=room.reader_id,
                                                 client_message_id=client_id)
        assert stored is not None and stored.blocks[0]["text"] == text
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def at_bottom(page) -> bool:
    return page.evaluate("""() => {
        const list = document.getElementById("message-list");
        return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    }""")


def test_unread_divider_and_jumps(ui_app, browser):
    room = make_room(ui_app)
    now = datetime.datetime.now(UTC)
    insert_messages(ui_app, room.conversation_id, [
        (room.writer_id, f"line {n}", now - datetime.timedelta(minutes=40 - n)) for n in range(40)
    ])
    with Session(ui_app.engine) as session:
        read_state.advance_read_position(session, room.conversation_id, room.reader_id, 10,
                                         now=now)
        session.commit()
    context, page = open_page(ui_app, browser, room)
    try:
        divider = page.locator("#first-unread")
        divider.wait_for()
        # The divider sits right above the first unread message, seq 11.
        assert page.locator(".message:has(#first-unread)").get_attribute("data-seq") == "11"
        wait_for(lambda: at_bottom(page), message="the list to start at its end")
        page.locator("#jump-to-unread").click()
        wait_for(lambda: divider.is_visible() and page.evaluate("""() => {
            const box = document.getElementById("first-unread").getBoundingClientRect();
            const list = document.getElementById("message-list").getBoundingClientRect();
            return box.top >= list.top && box.bottom <= list.bottom;
        }"""), message="the divider scrolled into view")

        # Scrolled up, the "newest" button shows and brings the end back.
        jump = page.locator("#jump-to-newest")
        jump.wait_for(state="visible")
        jump.click()
        wait_for(lambda: at_bottom(page), message="the list back at its end")
        jump.wait_for(state="hidden")
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def divider_in_view(page) -> bool:
    return page.evaluate("""() => {
        const divider = document.getElementById("first-unread");
        if (!divider) return false;
        const box = divider.getBoundingClientRect();
        const list = document.getElementById("message-list").getBoundingClientRect();
        return box.top >= list.top && box.bottom <= list.bottom;
    }""")


def test_jump_to_unread_loads_its_page(ui_app, browser):
    # 300 messages, 160 of them unread: the first unread is pages away from the newest.
    room = make_room(ui_app)
    now = datetime.datetime.now(UTC)
    insert_messages(ui_app, room.conversation_id, [
        (room.writer_id, f"item {n + 1}", now - datetime.timedelta(minutes=300 - n))
        for n in range(300)
    ])
    with Session(ui_app.engine) as session:
        read_state.advance_read_position(session, room.conversation_id, room.reader_id, 140,
                                         now=now)
        session.commit()
    context, page = open_page(ui_app, browser, room)
    rows = page.locator(".message")
    try:
        # The conversation opens at its newest page, without the divider.
        page.locator(".message-text", has_text="item 300").wait_for()
        assert page.locator("#first-unread").count() == 0

        page.locator("#jump-to-unread").click()
        page.locator("#first-unread").wait_for()
        assert page.locator(".message:has(#first-unread)").get_attribute("data-seq") == "141"
        wait_for(lambda: divider_in_view(page), message="the divider scrolled into view")
        # Pages near the divider may load as well, within the window's limit.
        assert rows.count() <= MAX_LOADED_MESSAGES
        assert page.locator(".message-text", has_text="item 300").count() == 0

        # "Newest" goes back to the end of the conversation.
        page.locator("#jump-to-newest").click()
        page.locator(".message-text", has_text="item 300").wait_for()
        wait_for(lambda: at_bottom(page), message="the list back at its end")
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def first_visible(page) -> tuple[str, float]:
    return tuple(page.evaluate("""() => {
        const list = document.getElementById("message-list");
        const top = list.getBoundingClientRect().top;
        for (const row of list.querySelectorAll(".message")) {
            const box = row.getBoundingClientRect();
            if (box.bottom > top) return [row.dataset.key, box.top];
        }
        return ["", 0];
    }"""))


def test_long_history_pages_keep_view_anchored(ui_app, browser):
    room = make_room(ui_app)
    start = datetime.datetime.now(UTC) - datetime.timedelta(days=2)
    total = 10_000
    insert_messages(ui_app, room.conversation_id, [
        (room.writer_id if n % 3 else room.reader_id, f"history {n + 1}",
         start + datetime.timedelta(seconds=15 * n)) for n in range(total)
    ])
    context, page = open_page(ui_app, browser, room)
    rows = page.locator(".message")
    try:
        page.locator(".message-text", has_text=f"history {total}").wait_for()
        # The first paint contains one page: the newest messages only.
        assert rows.count() == MESSAGE_PAGE_SIZE
        assert rows.first.get_attribute("data-seq") == str(total - MESSAGE_PAGE_SIZE + 1)

        loaded = MESSAGE_PAGE_SIZE
        for _ in range(6):
            wait_for(lambda: page.locator("#message-list[data-has-older='true']").count() == 1,
                     message="more history to load")
            page.evaluate("document.getElementById('message-list').scrollTop = 0")
            key, top = first_visible(page)
            before = rows.first.get_attribute("data-seq")
            wait_for(lambda: rows.first.get_attribute("data-seq") != before,
                     message=lambda: f"an older page above seq {before}")
            anchored = page.locator(f".message[data-key='{key}']")
            wait_for(lambda: abs(anchored.bounding_box()["y"] - top) < 2,
                     message=lambda: f"message {key} back at y={top}, "
                                     f"it is at {anchored.bounding_box()['y']}")
            loaded = rows.count()
            # The window never contains more than its maximum, whatever was loaded.
            assert loaded <= MAX_LOADED_MESSAGES
        assert loaded == MAX_LOADED_MESSAGES
        assert page.locator("#message-list[data-has-newer='true']").count() == 1
        assert page.locator(".message-text", has_text=f"history {total}").count() == 0

        # "Newest" brings back the newest page.
        page.locator("#jump-to-newest").click()
        page.locator(".message-text", has_text=f"history {total}").wait_for()
        wait_for(lambda: rows.count() == MESSAGE_PAGE_SIZE and at_bottom(page),
                 message=lambda: f"the newest page at the end, {rows.count()} rows")
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def test_phone_drawer_dark_mode_and_shortcuts(ui_app, browser):
    room = make_room(ui_app, "Alpha", extra_titles=("Beta",))
    context, page = open_page(ui_app, browser, room, viewport=PHONE, color_scheme="dark")
    sidebar = page.locator(".kilo-sidebar")
    try:
        assert page.evaluate("document.documentElement.classList.contains('dark')")
        assert not sidebar.is_visible()
        page.get_by_label("Open the conversation list").click()
        sidebar.wait_for(state="visible")
        page.locator(".conversation-item[data-title='Beta']").click()
        page.locator("#conversation-title", has_text="Beta").wait_for()
        sidebar.wait_for(state="hidden")
        assert page.locator("#empty-messages").is_visible()

        # Alt+ArrowUp opens the previous conversation, "/" focuses the composer.
        page.keyboard.press("Alt+ArrowUp")
        page.locator("#conversation-title", has_text="Alpha").wait_for()
        page.keyboard.press("Alt+ArrowDown")
        page.locator("#conversation-title", has_text="Beta").wait_for()
        page.keyboard.press("/")
        wait_for(lambda: page.evaluate("document.activeElement?.id") == "composer",
                 message="the composer to have focus")
        assert page.input_value("#composer") == ""
        page.locator("body").click(position={"x": 5, "y": 300})
        page.keyboard.press("Control+k")
        wait_for(lambda: page.evaluate("document.activeElement?.id") == "composer",
                 message="the composer to have focus after Ctrl+K")

        # The toggle switches to light mode.
        page.get_by_label("Open the conversation list").click()
        page.get_by_label("Switch light or dark mode").click()
        wait_for(lambda: not page.evaluate("document.documentElement.classList.contains('dark')"),
                 message="light mode after the toggle")
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def test_empty_states_say_what_to_do(ui_app, browser):
    username = f"e{next(_numbers)}_{uuid.uuid4().hex[:6]}"
    with Session(ui_app.engine) as session:
        user_id = create_local_user(session, username=username, password=PASSWORD).id
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    try:
        page.goto(f"{ui_app.app.url}/login")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        empty = page.locator("#empty-instances")
        empty.wait_for(timeout=30_000)
        assert "Create one" in empty.inner_text()

        with Session(ui_app.engine) as session:
            service.create_instance(session, owner_id=user_id, label="Quiet sandbox")
        page.reload()
        empty = page.locator("#empty-conversations")
        empty.wait_for(timeout=30_000)
        assert "Quiet sandbox" in empty.inner_text()
        assert "Create one" in empty.inner_text()
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def test_title_favicon_badge_and_error_toast(ui_app, browser):
    room = make_room(ui_app, "Alpha", extra_titles=("Beta",))
    context, page = open_page(ui_app, browser, room)
    try:
        page.locator("#conversation-title", has_text="Alpha").wait_for()
        with Session(ui_app.engine) as session:
            beta = next(c for c in service.list_conversations_for_user(session, room.writer_id)
                        if c.title == "Beta")
        insert_messages(ui_app, beta.id, [(room.writer_id, f"b{n}", datetime.datetime.now(UTC))
                                          for n in range(3)])
        # Rows written straight to the database publish nothing, so reload.
        page.reload()
        wait_for(lambda: page.title() == "(3) kilo_web",
                 message=lambda: f"the title with the count, got {page.title()!r}")
        wait_for(lambda: page.evaluate(
            "document.querySelector(\"link[rel~='icon']\")?.dataset.badge") == "3",
            message="the favicon badge")
        assert page.evaluate(
            "document.querySelector(\"link[rel~='icon']\").href.startsWith('data:image/png')")

        page.fill("#add-member input[name=username]", "nobody_by_that_name")
        page.press("#add-member input[name=username]", "Enter")
        page.locator("[data-sonner-toast]", has_text="check the spelling").wait_for()
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        context.close()


def open_as(ui: UiApp, browser, username: str):
    context = browser.new_context(viewport=DESKTOP, timezone_id="UTC")
    page = context.new_page()
    page.goto(f"{ui.app.url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#message-list", timeout=30_000)
    return context, page


def test_edit_delete_and_typing_live(ui_app, browser):
    room = make_room(ui_app)
    reader_context, reader_page = open_page(ui_app, browser, room)
    writer_context, writer_page = open_as(ui_app, browser, room.writer)
    try:
        # The writer types: the reader sees it, and not on their own page.
        writer_page.fill("#composer", "thinking about it")
        reader_page.locator(".typing-indicator", has_text="is typing").wait_for()
        assert writer_page.locator(".typing-indicator").count() == 0
        writer_page.fill("#composer", "")

        send(reader_page, "first draft")
        mine = reader_page.locator(".message[data-status='sent']", has_text="first draft")
        mine.wait_for()
        writer_page.locator(".message-text", has_text="first draft").wait_for()
        # Only one's own messages can be edited.
        assert writer_page.locator(".edit-message").count() == 0

        mine.hover()
        mine.get_by_label("Edit message").click()
        reader_page.fill("#edit-box", "final text")
        reader_page.press("#edit-box", "Enter")
        reader_page.locator(".message-text", has_text="final text").wait_for()
        assert reader_page.locator(".message-edited").count() == 1
        writer_page.locator(".message-text", has_text="final text").wait_for()
        writer_page.locator(".message-edited").wait_for()

        edited = reader_page.locator(".message[data-status='sent']", has_text="final text")
        edited.hover()
        edited.get_by_label("Delete message").click()
        reader_page.locator(".message-deleted").wait_for()
        writer_page.locator(".message-deleted").wait_for()
        assert "final text" not in message_texts(writer_page)
        assert stored_texts(ui_app, room.conversation_id) == []
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        reader_context.close()
        writer_context.close()


def test_remove_member_and_leave_live(ui_app, browser):
    room = make_room(ui_app, "Alpha", extra_titles=("Beta",))
    owner_context, owner_page = open_page(ui_app, browser, room)
    member_context, member_page = open_as(ui_app, browser, room.writer)
    member_badge = f"#members .member[data-user='{room.writer_id}']"
    try:
        owner_page.locator(member_badge).wait_for()
        # Only the instance owner sees the remove buttons, and never on their own badge.
        assert member_page.locator(".remove-member").count() == 0
        assert owner_page.locator(
            f"#members .member[data-user='{room.reader_id}'] .remove-member").count() == 0

        member_page.locator(".conversation-item[data-title='Alpha']").click()
        member_page.locator("#conversation-title", has_text="Alpha").wait_for()
        owner_page.locator(".conversation-item[data-title='Alpha']").click()
        owner_page.locator("#conversation-title", has_text="Alpha").wait_for()
        owner_page.get_by_label(re.compile("Remove .* from this conversation")).click()

        # The owner's list loses the member; the member's sidebar loses Alpha, with a notice.
        owner_page.locator(member_badge).wait_for(state="detached")
        member_page.locator(".conversation-item[data-title='Alpha']").wait_for(state="detached")
        member_page.locator("#info-message", has_text="no longer a member of Alpha").wait_for()

        # The member leaves Beta themselves.
        member_page.locator(".conversation-item[data-title='Beta']").click()
        member_page.locator("#conversation-title", has_text="Beta").wait_for()
        member_page.locator("#leave-conversation").click()
        member_page.locator(".conversation-item[data-title='Beta']").wait_for(state="detached")
        with Session(ui_app.engine) as session:
            members = {m.id for m in service.list_members(session, room.conversation_id)}
        assert members == {room.reader_id}
    except Exception:
        print(ui_app.app.log_tail(80))
        raise
    finally:
        owner_context.close()
        member_context.close()


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_screenshots_of_main_screens(ui_app, browser, color_scheme):
    room = make_room(ui_app, "Launch plan", extra_titles=("Support", "Random"))
    now = datetime.datetime.now(UTC)
    insert_messages(ui_app, room.conversation_id, [
        (room.writer_id, "Morning! The build for the launch is green.",
         now - datetime.timedelta(days=1, minutes=30)),
        (room.reader_id, "Great. I will write the release notes.",
         now - datetime.timedelta(days=1, minutes=20)),
        (room.writer_id, "Checklist for today:", now - datetime.timedelta(minutes=12)),
        (room.writer_id, "1. tag the release\n2. update the docs\n3. announce it",
         now - datetime.timedelta(minutes=11)),
        (room.reader_id, "Tagged `v1.4.0`. Notes are on https://example.org/notes",
         now - datetime.timedelta(minutes=3)),
    ])
    for viewport, size in ((DESKTOP, "desktop"), (PHONE, "phone")):
        context, page = open_page(ui_app, browser, room, viewport=viewport,
                                  color_scheme=color_scheme)
        try:
            page.locator(".message-text", has_text="announce it").wait_for()
            page.locator(".message-time").last.wait_for()
            screenshot(page, f"{size}-chat-{color_scheme}")
            if size == "phone":
                page.get_by_label("Open the conversation list").click()
                page.locator(".kilo-sidebar").wait_for(state="visible")
                screenshot(page, f"{size}-conversations-{color_scheme}")
        finally:
            context.close()
    assert (SCREENSHOT_DIR / f"desktop-chat-{color_scheme}.png").exists()
