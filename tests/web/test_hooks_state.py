"""SubscriptionState handlers and the epoch middleware on real Reflex states.

The sink is the pluggable part of ``SubscriptionState``; here it records
its calls so the tests can check exactly when the state calls it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import reflex as rx
from reflex.state import State
from reflex_base.event import Event
from reflex_base.utils.format import format_event_handler

from kilo_web.web.hooks import SubscriptionEpochMiddleware, SubscriptionState


class RecordingSink:
    """Record each call; reject contexts that do not start with a slash."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def validate_context(self, context: str) -> str:
        if not context.startswith("/"):
            raise ValueError(f"invalid context {context!r}")
        return context

    async def subscribe(self, state: SubscriptionState, context: str) -> None:
        self.calls.append(("subscribe", context))

    async def unsubscribe(self, state: SubscriptionState, context: str) -> None:
        self.calls.append(("unsubscribe", context))

    async def reset(self, state: SubscriptionState, held: list[str]) -> None:
        self.calls.append(("reset", held))


class LedgerTestSubscriptions(SubscriptionState, rx.State):
    subscription_sink: ClassVar[RecordingSink] = RecordingSink()


class SinklessSubscriptions(SubscriptionState, rx.State):
    pass


def _hydrate_event() -> Event:
    return Event(name=format_event_handler(State.event_handlers["hydrate_and_load"]), payload={})


@pytest.fixture
def sink() -> RecordingSink:
    LedgerTestSubscriptions.subscription_sink = RecordingSink()
    return LedgerTestSubscriptions.subscription_sink


@pytest.fixture
async def root() -> State:
    return State(_reflex_internal_init=True)


@pytest.fixture
async def state(root: State, sink: RecordingSink) -> LedgerTestSubscriptions:
    """The tab's subscription state after its first hydrate."""
    await SubscriptionEpochMiddleware(LedgerTestSubscriptions).preprocess(None, root, _hydrate_event())  # type: ignore[arg-type]
    sink.calls.clear()
    return await root.get_state(LedgerTestSubscriptions)


async def _subscribe(state: LedgerTestSubscriptions, context: str, epoch: int | None = None) -> None:
    epoch = state.subscription_epoch if epoch is None else epoch
    await LedgerTestSubscriptions.subscribe_context.fn(state, context, epoch)


async def _unsubscribe(state: LedgerTestSubscriptions, context: str, epoch: int | None = None) -> None:
    epoch = state.subscription_epoch if epoch is None else epoch
    await LedgerTestSubscriptions.unsubscribe_context.fn(state, context, epoch)


async def test_hydrate_issues_an_epoch(state: LedgerTestSubscriptions) -> None:
    assert state.subscription_epoch > 0


async def test_two_holders_call_sink_once(state: LedgerTestSubscriptions, sink: RecordingSink) -> None:
    await _subscribe(state, "/a")
    await _subscribe(state, "/a")

    assert sink.calls == [("subscribe", "/a")]
    assert state.subscription_counts == {"/a": 2}


async def test_strict_mode_sequence_nets_one(
    state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "/a")
    await _unsubscribe(state, "/a")
    await _subscribe(state, "/a")

    assert state.subscription_counts == {"/a": 1}
    assert sink.calls == [("subscribe", "/a"), ("unsubscribe", "/a"), ("subscribe", "/a")]


async def test_stale_epoch_reaches_no_sink(
    state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "/a", epoch=0)
    await _subscribe(state, "/a")
    await _unsubscribe(state, "/a", epoch=state.subscription_epoch - 1)

    assert sink.calls == [("subscribe", "/a")]
    assert state.subscription_counts == {"/a": 1}


async def test_unsubscribe_of_unheld_context_is_ignored(
    state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _unsubscribe(state, "/never")

    assert sink.calls == []
    assert state.subscription_counts == {}


async def test_invalid_context_is_rejected(
    state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "no-slash")

    assert sink.calls == []
    assert state.subscription_counts == {}


async def test_hydrate_starts_new_epoch_and_resets(
    root: State, state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "/a")
    await _subscribe(state, "/b")
    old_epoch = state.subscription_epoch

    await SubscriptionEpochMiddleware(LedgerTestSubscriptions).preprocess(None, root, _hydrate_event())  # type: ignore[arg-type]

    assert state.subscription_epoch > old_epoch
    assert state.subscription_counts == {}
    assert sink.calls[-1] == ("reset", ["/a", "/b"])


async def test_old_epoch_cleanup_after_hydrate_is_ignored(
    root: State, state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "/a")
    old_epoch = state.subscription_epoch
    await SubscriptionEpochMiddleware(LedgerTestSubscriptions).preprocess(None, root, _hydrate_event())  # type: ignore[arg-type]
    await _subscribe(state, "/a")
    sink.calls.clear()

    await _unsubscribe(state, "/a", epoch=old_epoch)

    assert sink.calls == []
    assert state.subscription_counts == {"/a": 1}


async def test_middleware_ignores_other_events(
    root: State, state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "/a")
    epoch = state.subscription_epoch
    other = Event(name=format_event_handler(LedgerTestSubscriptions.event_handlers["resubscribe"]), payload={})

    result = await SubscriptionEpochMiddleware(LedgerTestSubscriptions).preprocess(None, root, other)  # type: ignore[arg-type]

    assert result is None
    assert state.subscription_epoch == epoch
    assert state.subscription_counts == {"/a": 1}


async def test_resubscribe_starts_new_epoch(
    state: LedgerTestSubscriptions, sink: RecordingSink
) -> None:
    await _subscribe(state, "/a")
    epoch = state.subscription_epoch

    await LedgerTestSubscriptions.resubscribe.fn(state)

    assert state.subscription_epoch > epoch
    assert sink.calls[-1] == ("reset", ["/a"])


async def test_limit_rejects_extra_context(
    state: LedgerTestSubscriptions, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LedgerTestSubscriptions, "max_subscriptions_per_tab", 1)
    await _subscribe(state, "/a")
    await _subscribe(state, "/b")

    assert sink.calls == [("subscribe", "/a")]
    assert state.subscription_counts == {"/a": 1}


async def test_missing_sink_raises(root: State) -> None:
    state = await root.get_state(SinklessSubscriptions)

    with pytest.raises(RuntimeError, match="subscription_sink is not set"):
        await SinklessSubscriptions.subscribe_context.fn(state, "/a", 0)
