"""Per-tab event-service connections against a real event service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kilo_web.event_service.client import RECOVERY_FAILED, SUBSCRIBED

from kilo_web.event_service import EventServiceServer
from kilo_web.event_service.protocol import Event
from kilo_web.web.tab_connections import (
    ConnectionStatus,
    DeliveryItem,
    StatusChange,
    TabConnectionRegistry,
)

from .conftest import JWT_SECRET, FrameLog, eventually

GRACE = 0.3
RELEASE_DELAY = 0.2
TOKEN = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_TOKEN = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


class Deliveries:
    """The items each tab received, in order, and the batches they came in."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[DeliveryItem]]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, token: str, batch: list[DeliveryItem]) -> None:
        self.batches.append((token, list(batch)))
        if self.gate is not None:
            await self.gate.wait()

    def items(self, token: str = TOKEN) -> list[DeliveryItem]:
        return [item for batch_token, batch in self.batches if batch_token == token for item in batch]

    def events(self, token: str = TOKEN) -> list[Event]:
        """Return the server's events, without the client's local ``context.*`` ones."""
        return [
            item for item in self.items(token)
            if isinstance(item, Event) and item.event not in (SUBSCRIBED, RECOVERY_FAILED)
        ]

    def statuses(self, token: str = TOKEN) -> list[ConnectionStatus]:
        return [item.status for item in self.items(token) if isinstance(item, StatusChange)]


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries()


@pytest.fixture
async def registry(
    server: EventServiceServer, deliveries: Deliveries
) -> AsyncIterator[TabConnectionRegistry]:
    registry = TabConnectionRegistry(
        url=server.url,
        jwt_secret=JWT_SECRET,
        deliver=deliveries,
        grace_seconds=GRACE,
        release_delay_seconds=RELEASE_DELAY,
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.2,
    )
    yield registry
    await registry.close_all()


async def _wait_subscriptions(server: EventServiceServer, user_id: str, expected: dict[str, int]) -> None:
    await eventually(
        lambda: server.subscriptions_of(user_id) == expected,
        message=lambda: f"subscriptions {expected}, have {server.subscriptions_of(user_id)}",
    )


async def _settle(registry: TabConnectionRegistry, token: str = TOKEN) -> None:
    """Wait until the tab's queued operations and pending releases are done."""
    tab = registry.get(token)
    assert tab is not None
    await eventually(lambda: tab._operations.empty() and not tab.pending_releases, message="idle tab")


async def test_first_subscribe_opens_connection(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")

    await _wait_subscriptions(server, "u1", {"/a": 1})
    assert server.connection_count("u1") == 1
    assert len(registry) == 1


async def test_tabs_get_their_own_connections(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    registry.subscribe(OTHER_TOKEN, "u1", "/a")

    await _wait_subscriptions(server, "u1", {"/a": 2})
    assert server.connection_count("u1") == 2


async def test_quick_release_and_claim_sends_no_frames(
    registry: TabConnectionRegistry, server: EventServiceServer, frame_log: FrameLog
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    # React StrictMode: unsubscribe and subscribe again at once.
    registry.unsubscribe(TOKEN, "/a")
    registry.subscribe(TOKEN, "u1", "/a")
    # Once nothing waits for release, no unsubscribe can follow.
    await _settle(registry)

    assert server.subscriptions_of("u1") == {"/a": 1}
    assert frame_log.contexts("context.subscribe") == [("/a",)]
    assert frame_log.contexts("context.unsubscribe") == []


async def test_release_unsubscribes_after_delay(
    registry: TabConnectionRegistry, server: EventServiceServer, frame_log: FrameLog
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})
    loop = asyncio.get_running_loop()
    released_at = loop.time()

    registry.unsubscribe(TOKEN, "/a")
    await _wait_subscriptions(server, "u1", {})

    assert loop.time() - released_at >= RELEASE_DELAY
    assert frame_log.contexts("context.unsubscribe") == [("/a",)]
    assert server.connection_count("u1") == 1


async def test_unsubscribe_without_connection_is_ignored(registry: TabConnectionRegistry) -> None:
    registry.unsubscribe(TOKEN, "/a")

    assert registry.get(TOKEN) is None


async def test_carry_over_keeps_claimed_contexts(
    registry: TabConnectionRegistry, server: EventServiceServer, frame_log: FrameLog
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    registry.subscribe(TOKEN, "u1", "/b")
    await _wait_subscriptions(server, "u1", {"/a": 1, "/b": 1})

    # A reload: the tab's counts are reset, then the page claims /a again.
    registry.carry_over(TOKEN, "u1")
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    assert frame_log.contexts("context.unsubscribe") == [("/b",)]
    subscribed = [context for frame in frame_log.contexts("context.subscribe") for context in frame]
    assert sorted(subscribed) == ["/a", "/b"]


async def test_carry_over_waits_grace_before_release(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()

    registry.carry_over(TOKEN, "u1")
    await _wait_subscriptions(server, "u1", {})

    assert loop.time() - started >= GRACE


async def test_carry_over_for_other_user_closes_connection(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    registry.carry_over(TOKEN, None)

    await eventually(lambda: server.connection_count("u1") == 0, message="closed connection")
    assert registry.get(TOKEN) is None


async def test_subscribe_as_other_user_replaces_connection(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    registry.subscribe(TOKEN, "u2", "/b")

    await _wait_subscriptions(server, "u2", {"/b": 1})
    await eventually(lambda: server.connection_count("u1") == 0, message="u1 disconnected")
    tab = registry.get(TOKEN)
    assert tab is not None and tab.user_id == "u2"


async def test_disconnected_tab_closes_after_grace(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()

    registry.tab_disconnected(TOKEN)
    assert registry.close_pending(TOKEN)

    await eventually(lambda: server.connection_count("u1") == 0, timeout=GRACE + 5)
    assert loop.time() - started >= GRACE
    assert registry.get(TOKEN) is None
    assert not registry.close_pending(TOKEN)


async def test_reconnect_cancels_close(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    registry.tab_disconnected(TOKEN)
    registry.cancel_close(TOKEN)

    assert not registry.close_pending(TOKEN)
    assert server.connection_count("u1") == 1
    assert registry.get(TOKEN) is not None


async def test_close_skipped_while_tab_socket_is_open(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    # The tab connected again under a new socket before the old one's disconnect ran.
    registry.is_tab_connected = lambda token: token == TOKEN
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    registry.tab_disconnected(TOKEN)
    await eventually(lambda: not registry.close_pending(TOKEN), timeout=GRACE + 5)

    assert server.connection_count("u1") == 1
    assert registry.get(TOKEN) is not None


async def test_disconnect_of_unknown_tab_is_ignored(registry: TabConnectionRegistry) -> None:
    registry.tab_disconnected(TOKEN)

    assert not registry.close_pending(TOKEN)


async def test_events_delivered_in_order_after_status(
    registry: TabConnectionRegistry, server: EventServiceServer, deliveries: Deliveries
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    for number in range(5):
        await server.publish("/a", "test.ping", {"n": number})
    await eventually(lambda: len(deliveries.events()) == 5, message="five events")

    assert [event.data["n"] for event in deliveries.events()] == [0, 1, 2, 3, 4]
    assert deliveries.statuses()[:2] == [ConnectionStatus.CONNECTING, ConnectionStatus.CONNECTED]
    first_event = next(i for i, item in enumerate(deliveries.items()) if isinstance(item, Event))
    assert deliveries.items()[first_event].event == SUBSCRIBED
    connected = deliveries.items().index(StatusChange(ConnectionStatus.CONNECTED))
    assert connected < first_event


async def test_burst_arrives_in_one_batch(
    registry: TabConnectionRegistry, server: EventServiceServer, deliveries: Deliveries
) -> None:
    # Hold the first delivery so the burst queues up behind it.
    deliveries.gate = asyncio.Event()
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})
    tab = registry.get(TOKEN)
    assert tab is not None

    for number in range(10):
        await server.publish("/a", "test.ping", {"n": number})
    # Queued: the status change, the local context.subscribed event, ten events.
    await eventually(lambda: tab._inbox.qsize() == 12, message="status and eleven events queued")
    deliveries.gate.set()
    await eventually(lambda: len(deliveries.events()) == 10, message="ten events")

    assert len(deliveries.batches) == 2
    assert deliveries.batches[1][1][0] == StatusChange(ConnectionStatus.CONNECTED)
    assert deliveries.batches[1][1][1].event == SUBSCRIBED
    assert [item.data["n"] for item in deliveries.batches[1][1][2:]] == list(range(10))


async def test_failed_delivery_does_not_stop_later_ones(
    registry: TabConnectionRegistry, server: EventServiceServer, deliveries: Deliveries
) -> None:
    failures = {"left": 1}

    async def flaky(token: str, batch: list[DeliveryItem]) -> None:
        if any(isinstance(item, Event) and item.event == "test.ping" for item in batch) \
                and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("state update failed")
        await deliveries(token, batch)

    registry._deliver = flaky
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    await server.publish("/a", "test.ping", {"n": 1})
    await eventually(lambda: failures["left"] == 0, message="the failed delivery")
    await server.publish("/a", "test.ping", {"n": 2})

    await eventually(lambda: [e.data["n"] for e in deliveries.events()] == [2], message="event 2")


async def test_server_loss_reports_reconnecting(
    registry: TabConnectionRegistry, server: EventServiceServer, deliveries: Deliveries
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    await _wait_subscriptions(server, "u1", {"/a": 1})

    await server.close()

    await eventually(
        lambda: deliveries.statuses()[-1:] == [ConnectionStatus.RECONNECTING],
        message=lambda: f"status reconnecting, have {deliveries.statuses()}",
    )


async def test_invalid_context_does_not_block_later_requests(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "not a context")
    registry.subscribe(TOKEN, "u1", "/a")

    await _wait_subscriptions(server, "u1", {"/a": 1})


async def test_close_all_closes_every_connection(
    registry: TabConnectionRegistry, server: EventServiceServer
) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    registry.subscribe(OTHER_TOKEN, "u2", "/a")
    await _wait_subscriptions(server, "u2", {"/a": 1})
    registry.tab_disconnected(TOKEN)

    await registry.close_all()

    await eventually(lambda: server.connection_count() == 0, message="no connections")
    assert len(registry) == 0
    assert not registry.close_pending(TOKEN)


async def test_closed_connection_rejects_requests(registry: TabConnectionRegistry) -> None:
    registry.subscribe(TOKEN, "u1", "/a")
    tab = registry.get(TOKEN)
    assert tab is not None

    await registry.close(TOKEN)

    assert tab.closed
    with pytest.raises(RuntimeError, match="is closed"):
        tab.subscribe(["/a"])


def test_negative_delays_are_rejected() -> None:
    async def deliver(token: str, batch: list[DeliveryItem]) -> None:
        return None

    with pytest.raises(ValueError, match="must not be negative"):
        TabConnectionRegistry(url="ws://127.0.0.1:1", jwt_secret=JWT_SECRET, deliver=deliver, grace_seconds=-1)
