"""Subscription hooks in Chromium against a real event service.

The app runs in dev mode, so React StrictMode mounts every new component
twice. The assertions read the event service's view of each user's
subscriptions, which must match what the page shows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

GRACE_SECONDS = 1.5
PLATFORM = "/presence/platform"


def hooks_app() -> None:
    """Module body of the test app; AppHarness writes it to the app's package."""
    import reflex as rx

    from kilo_web.settings import Settings
    from kilo_web.web.shell import (
        EventServiceState,
        add_event_handler,
        app_shell,
        install_app_shell,
        use_event_subscription,
    )

    class HookTestState(rx.State):
        user_id: str = ""
        context: str = "/test/a"
        active: bool = True
        items: list[str] = ["/test/item/1", "/test/item/2"]
        received: list[str] = []

        @rx.event
        def toggle_active(self) -> None:
            self.active = not self.active

        @rx.event
        def switch_context(self) -> None:
            self.context = "/test/b"

        @rx.event
        def add_item(self) -> None:
            self.items = [*self.items, f"/test/item/{len(self.items) + 1}"]

        @rx.event
        def remove_first_item(self) -> None:
            self.items = self.items[1:]

    async def resolve_user_id(state: EventServiceState) -> str | None:
        # The first page a tab opens names its user in the query string.
        test_state = await state.get_state(HookTestState)
        user = state.router.url.query_parameters.get("user")
        if user and not test_state.user_id:
            test_state.user_id = user
        return test_state.user_id or None

    def record_events(state: HookTestState, events: list) -> None:
        state.received = [*state.received, *(f"{e.event} {e.context}" for e in events)]

    add_event_handler("test.ping", HookTestState, record_events)

    @rx.memo
    def item_subscription(context: rx.Var[str]) -> rx.Component:
        return rx.fragment(use_event_subscription(context), rx.text(context, class_name="item"))

    def index() -> rx.Component:
        return app_shell(
            use_event_subscription(HookTestState.context, HookTestState.active),
            rx.foreach(HookTestState.items, lambda item: item_subscription(context=item)),
            rx.button("toggle", id="toggle", on_click=HookTestState.toggle_active),
            rx.button("switch", id="switch", on_click=HookTestState.switch_context),
            rx.button("add", id="add", on_click=HookTestState.add_item),
            rx.button("remove", id="remove", on_click=HookTestState.remove_first_item),
            rx.text(EventServiceState.connection_status, id="status"),
            rx.text(EventServiceState.subscription_epoch, id="epoch"),
            rx.foreach(HookTestState.received, lambda line: rx.text(line, class_name="received")),
            rx.link("other", href="/other", id="to-other"),
        )

    def other() -> rx.Component:
        return rx.text("other page", id="other")

    app = rx.App()
    app.add_page(index, route="/")
    app.add_page(other, route="/other")
    install_app_shell(app, resolve_user_id=resolve_user_id, settings=Settings.from_env())


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, event_service: Any, reflex_app: Callable[..., Any]
) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("hooks_app")
    environment = {
        "KILO_EVENT_SERVICE_URL": event_service.url,
        "KILO_JWT_SECRET": event_service.secret,
        "KILO_TAB_GRACE_SECONDS": str(GRACE_SECONDS),
        "KILO_RECONNECT_MIN_SECONDS": "0.1",
        "KILO_RECONNECT_MAX_SECONDS": "1",
    }
    with reflex_app(root, hooks_app, environment=environment) as running:
        yield running


_user_ids = itertools.count(1)


@pytest.fixture
def user_id() -> str:
    """A user id of its own for each test, so tests never share server-side counts."""
    return f"hook-user-{next(_user_ids)}"


@pytest.fixture
def open_page(browser: Any, harness: Any) -> Iterator[Callable[[str], Any]]:
    """Open the index page as a user in a fresh browser context; close them all at the end."""
    contexts: list[Any] = []

    def open_as(user: str) -> Any:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{harness.frontend_url}/?user={user}")
        return page

    yield open_as
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page: Callable[[str], Any], user_id: str) -> Any:
    """The index page, opened as ``user_id``."""
    return open_page(user_id)


@pytest.fixture
def subscriptions(
    event_service: Any, user_id: str, wait_for: Callable[..., Any], holds_for: Callable[..., bool]
) -> Any:
    """Assertions on the event service's view of ``user_id``'s subscriptions."""

    class Subscriptions:
        def current(self) -> dict[str, int]:
            return event_service.subscriptions_of(user_id)

        def wait(self, expected: dict[str, int], timeout: float = 15.0) -> None:
            wait_for(
                lambda: self.current() == expected,
                timeout,
                message=lambda: f"subscriptions {expected}, have {self.current()}",
            )

        def stay(self, expected: dict[str, int], seconds: float) -> bool:
            return holds_for(lambda: self.current() == expected, seconds)

    return Subscriptions()


INDEX_CONTEXTS = {"/test/a": 1, "/test/item/1": 1, "/test/item/2": 1, PLATFORM: 1}


def _without(counts: dict[str, int], *contexts: str) -> dict[str, int]:
    return {context: count for context, count in counts.items() if context not in contexts}


def test_mount_subscribes_each_context_once(
    page: Any, subscriptions: Any, event_service: Any, user_id: str
) -> None:
    subscriptions.wait(INDEX_CONTEXTS)
    assert event_service.connection_count(user_id) == 1
    assert subscriptions.stay(INDEX_CONTEXTS, 0.5)


def test_toggle_active_unsubscribes_and_resubscribes(page: Any, subscriptions: Any) -> None:
    subscriptions.wait(INDEX_CONTEXTS)

    page.click("#toggle")
    subscriptions.wait(_without(INDEX_CONTEXTS, "/test/a"))

    page.click("#toggle")
    subscriptions.wait(INDEX_CONTEXTS)


def test_context_change_moves_subscription(page: Any, subscriptions: Any) -> None:
    subscriptions.wait(INDEX_CONTEXTS)

    page.click("#switch")
    subscriptions.wait({**_without(INDEX_CONTEXTS, "/test/a"), "/test/b": 1})


def test_foreach_memo_subscribes_per_item(
    page: Any, subscriptions: Any, event_service: Any
) -> None:
    subscriptions.wait(INDEX_CONTEXTS)
    frames_before = len(event_service.frames)

    # The new item mounts a new memo component, which StrictMode mounts twice.
    page.click("#add")
    subscriptions.wait({**INDEX_CONTEXTS, "/test/item/3": 1})
    # Only this test uses item 3; its double mount reached the wire as one subscribe.
    item_frames = [
        (frame.type, frame.contexts)
        for _, frame in event_service.frames[frames_before:]
        if "/test/item/3" in frame.contexts
    ]
    assert item_frames == [("context.subscribe", ("/test/item/3",))]

    page.click("#remove")
    subscriptions.wait({**_without(INDEX_CONTEXTS, "/test/item/1"), "/test/item/3": 1})


def test_client_side_navigation_unsubscribes(
    page: Any, subscriptions: Any, event_service: Any, user_id: str
) -> None:
    subscriptions.wait(INDEX_CONTEXTS)

    page.click("#to-other")
    page.wait_for_selector("#other")
    subscriptions.wait({})
    # The tab's Reflex socket stays open, so its event-service socket does too.
    assert event_service.connection_count(user_id) == 1


def test_reload_keeps_subscriptions_without_frames(
    page: Any, subscriptions: Any, event_service: Any, user_id: str, wait_for: Callable[..., Any]
) -> None:
    subscriptions.wait(INDEX_CONTEXTS)
    epoch_before = int(page.inner_text("#epoch"))
    frames_before = len(event_service.frames)

    page.reload()

    def epoch_advanced() -> bool:
        text = page.inner_text("#epoch")
        return text.isdigit() and int(text) > epoch_before

    wait_for(epoch_advanced, message="a new subscription epoch after the reload")
    # The page claims every carried context again, so nothing is released after the grace period.
    assert subscriptions.stay(INDEX_CONTEXTS, GRACE_SECONDS + 1.0)
    assert event_service.connection_count(user_id) == 1
    new_frames = [frame for _, frame in event_service.frames[frames_before:]]
    assert [frame for frame in new_frames if frame.type == "context.unsubscribe"] == []


def test_events_reach_the_page(
    page: Any, subscriptions: Any, event_service: Any, wait_for: Callable[..., Any]
) -> None:
    subscriptions.wait(INDEX_CONTEXTS)
    wait_for(lambda: page.inner_text("#status") == "connected", message="status 'connected'")

    event_service.publish("/test/a", "test.ping", {"n": 1})
    event_service.publish("/test/item/2", "test.ping", {"n": 2})

    expected = ["test.ping /test/a", "test.ping /test/item/2"]
    wait_for(
        lambda: page.locator(".received").all_inner_texts() == expected,
        message=lambda: f"events {expected}, have {page.locator('.received').all_inner_texts()}",
    )


def test_closing_page_closes_connection_after_grace(
    page: Any, subscriptions: Any, event_service: Any, user_id: str, wait_for: Callable[..., Any]
) -> None:
    from kilo_web.web.shell import get_registry

    subscriptions.wait(INDEX_CONTEXTS)
    assert [tab.user_id for tab in get_registry().connections()].count(user_id) == 1

    page.close()
    wait_for(
        lambda: event_service.connection_count(user_id) == 0,
        GRACE_SECONDS + 10.0,
        message=lambda: f"no connection of {user_id}, have {event_service.connection_count(user_id)}",
    )
    assert subscriptions.current() == {}
    assert [tab.user_id for tab in get_registry().connections()].count(user_id) == 0
