"""Grouping a tab's incoming events by the state handlers registered for them."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import pytest
import reflex as rx

from kilo_web.event_service.protocol import Event
from kilo_web.web import event_handlers
from kilo_web.web.event_handlers import add_event_handler, plan_delivery, run_handlers


class DispatchTestChat(rx.State):
    lines: list[str] = []


class DispatchTestAudit(rx.State):
    count: int = 0


def on_message(state: DispatchTestChat, events: list[Event]) -> None:
    state.lines = [*state.lines, *(event.data["text"] for event in events)]


def on_any(state: DispatchTestAudit, events: list[Event]) -> None:
    state.count += len(events)


def _event(name: str, text: str = "") -> Event:
    return Event(context="/kiloclaw/s1/c1", event=name, data={"text": text})


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Callable[[], None]]]:
    """``add_event_handler`` on an empty registry, restored after the test.

    Modules imported by other tests (the chat state) register handlers at
    import; an empty registry keeps these checks independent of them.
    """
    monkeypatch.setattr(event_handlers, "_registry", collections.defaultdict(dict))
    removers: list[Callable[[], None]] = []

    def add(*args: object) -> Callable[[], None]:
        remove = add_event_handler(*args)  # type: ignore[arg-type]
        removers.append(remove)
        return remove

    yield add
    for remove in removers:
        remove()


def test_events_grouped_per_state_and_handler(register: Callable[..., object]) -> None:
    register("message.created", DispatchTestChat, on_message)
    register("*", DispatchTestAudit, on_any)
    first, other, second = _event("message.created", "hi"), _event("typing"), _event("message.created", "yo")

    plan = plan_delivery([first, other, second])

    assert plan == {
        DispatchTestChat: [(on_message, [first, second])],
        DispatchTestAudit: [(on_any, [first, other, second])],
    }


def test_unmatched_events_plan_nothing(register: Callable[..., object]) -> None:
    register("message.created", DispatchTestChat, on_message)

    assert plan_delivery([_event("typing")]) == {}


def test_reregistration_replaces_handler(register: Callable[..., object]) -> None:
    def handler(state: DispatchTestChat, events: list[Event]) -> None:
        return None

    first = handler
    register("message.created", DispatchTestChat, first)

    def handler(state: DispatchTestChat, events: list[Event]) -> None:  # noqa: F811
        return None

    register("message.created", DispatchTestChat, handler)
    plan = plan_delivery([_event("message.created")])

    assert [registered for registered, _ in plan[DispatchTestChat]] == [handler]


def test_remove_unregisters_handler(register: Callable[..., Callable[[], None]]) -> None:
    remove = register("message.created", DispatchTestChat, on_message)

    remove()

    assert plan_delivery([_event("message.created")]) == {}


async def test_failing_handler_does_not_stop_others() -> None:
    calls: list[str] = []

    def broken(state: object, events: list[Event]) -> None:
        calls.append("broken")
        raise RuntimeError("bad handler")

    async def working(state: object, events: list[Event]) -> None:
        calls.append(f"working {len(events)}")

    await run_handlers(object(), [(broken, [_event("a")]), (working, [_event("a"), _event("b")])], tab="t")  # type: ignore[arg-type]

    assert calls == ["broken", "working 2"]
