"""EventServiceClient over a real loopback server: the refcount contract."""

from __future__ import annotations

import pytest

from kilo_web.event_service import EventServiceServer
from kilo_web.event_service.client import FAILED, CredentialsRejected
from kilo_web.event_service.contexts import InvalidContextError

from .conftest import FrameLog, Inbox, TokenSource, eventually

pytestmark = pytest.mark.asyncio

X = "/kiloclaw/sx"
Y = "/kiloclaw/sy"
BARRIER = "/kiloclaw/barrier"


async def publish_then_barrier(server: EventServiceServer, inbox: Inbox, context: str) -> None:
    """Publish to ``context``, then to BARRIER, and wait until the barrier event arrived.

    Frames on one socket arrive in order, so once the barrier is in, any
    event for ``context`` that the server sent has arrived too.
    """
    before = sum(1 for e in inbox.events if e.context == BARRIER)
    await server.publish(context, "test.event", {"n": len(inbox.events)})
    await server.publish(BARRIER, "test.barrier", {})
    await eventually(
        lambda: sum(1 for e in inbox.events if e.context == BARRIER) > before,
        message="barrier event",
    )


async def test_two_consumers_share_one_wire_subscription(server, make_client, frame_log):
    client = await make_client()
    inbox_a, inbox_b = Inbox(), Inbox()
    client.on("test.event", inbox_a)
    remove_b = client.on("test.event", inbox_b)
    barrier = Inbox()
    client.on("test.barrier", barrier)
    await client.subscribe([BARRIER])

    await client.subscribe([X])  # consumer A
    await client.subscribe([X])  # consumer B
    await eventually(lambda: server.subscriptions_of("u1").get(X) == 1, message="server holds X")
    await server.publish(X, "test.event", {"n": 1})
    await inbox_a.wait_for_count(1)
    await inbox_b.wait_for_count(1)

    await client.unsubscribe([X])  # consumer B leaves
    remove_b()
    await server.publish(X, "test.event", {"n": 2})
    await inbox_a.wait_for_count(2)
    await publish_then_barrier(server, barrier, "/kiloclaw/unused")

    assert [e.data["n"] for e in inbox_a.events] == [1, 2]
    assert [e.data["n"] for e in inbox_b.events] == [1]
    assert frame_log.subscribed().count((X,)) == 1
    assert frame_log.unsubscribed() == []
    assert X in server.contexts()
    assert client.counts[X] == 1


async def test_unsubscribe_never_subscribed_is_noop(server, make_client, frame_log):
    client = await make_client()
    await client.unsubscribe(["/kiloclaw/never"])
    await client.subscribe([BARRIER])
    await eventually(lambda: BARRIER in server.contexts(), message="barrier subscribed")
    assert client.counts == {BARRIER: 1}
    assert frame_log.unsubscribed() == []
    assert server.connection_count("u1") == 1


async def test_unsubscribe_twice_keeps_count_at_zero(server, make_client, frame_log):
    client = await make_client()
    await client.subscribe([X])
    await client.unsubscribe([X])
    await client.unsubscribe([X])
    await client.subscribe([BARRIER])
    await eventually(lambda: BARRIER in server.contexts(), message="barrier subscribed")

    assert client.counts == {BARRIER: 1}
    assert X not in server.contexts()
    assert frame_log.subscribed() == [(X,), (BARRIER,)]
    assert frame_log.unsubscribed() == [(X,)]


async def test_subscribe_batch_sends_only_changed_contexts(server, make_client, frame_log):
    client = await make_client()
    await client.subscribe([X])
    await client.subscribe([X, Y])
    await client.unsubscribe([X, Y])
    await client.subscribe([BARRIER])
    await eventually(lambda: BARRIER in server.contexts(), message="barrier subscribed")

    assert frame_log.subscribed() == [(X,), (Y,), (BARRIER,)]
    assert frame_log.unsubscribed() == [(Y,)]
    assert client.counts == {X: 1, BARRIER: 1}


async def test_subscribe_rejects_malformed_context(make_client):
    client = await make_client()
    with pytest.raises(InvalidContextError, match="invalid context"):
        await client.subscribe([X, "no-leading-slash"])
    assert client.counts == {}


async def test_unsubscribe_in_flight_delivers_nothing(server, make_client):
    client = await make_client()
    inbox = Inbox()
    client.on("*", inbox)
    await client.subscribe([BARRIER])
    # No await between the two calls reaches the server's acknowledgement.
    await client.subscribe([X])
    await client.unsubscribe([X])
    await eventually(lambda: X not in server.contexts() and BARRIER in server.contexts(),
                     message="server settles")
    await publish_then_barrier(server, inbox, X)
    assert [e.context for e in inbox.events] == [BARRIER]


async def test_resubscribe_in_flight_delivers_once(server, make_client):
    client = await make_client()
    inbox = Inbox()
    client.on("*", inbox)
    await client.subscribe([BARRIER])
    await client.subscribe([X])
    await client.unsubscribe([X])
    await client.subscribe([X])
    await eventually(lambda: server.subscriptions_of("u1").get(X) == 1, message="X held")
    await publish_then_barrier(server, inbox, X)
    assert [e.context for e in inbox.events] == [X, BARRIER]


async def reconnect(server: EventServiceServer, client) -> int:
    """Drop the client's socket, wait for the new one, return the old connection id."""
    old_ids = server.connection_ids("u1")
    before = client.connect_count
    await server.disconnect("u1")
    await eventually(lambda: client.connect_count > before and client.connected,
                     message="reconnect")
    return max(old_ids)


async def test_reconnect_omits_released_context(server, make_client, frame_log):
    client = await make_client()
    await client.subscribe([X])
    await client.unsubscribe([X])
    old = await reconnect(server, client)
    await client.subscribe([BARRIER])
    await eventually(lambda: BARRIER in server.contexts(), message="barrier subscribed")
    assert frame_log.subscribed(after=old) == [(BARRIER,)]
    assert X not in server.contexts()


async def test_reconnect_resubscribes_each_context_once(server, make_client, frame_log):
    client = await make_client()
    await client.subscribe([X, Y])
    await client.subscribe([X])
    await eventually(lambda: {X, Y} <= set(server.contexts()), message="X and Y held")
    old = await reconnect(server, client)
    await eventually(lambda: {X, Y} <= set(server.contexts()), message="X and Y back")
    assert frame_log.subscribed(after=old) == [(X, Y)]
    assert client.counts == {X: 2, Y: 1}


async def test_reconnect_restores_resubscribed_context(server, make_client, frame_log):
    client = await make_client()
    await client.subscribe([X])
    await client.unsubscribe([X])
    await client.subscribe([X])
    old = await reconnect(server, client)
    await eventually(lambda: X in server.contexts(), message="X back")
    assert frame_log.subscribed(after=old) == [(X,)]


async def test_reconnect_restores_unacknowledged_subscribe(server, make_client, frame_log):
    client = await make_client()
    dropped = []

    def drop_on_subscribe(connection_id, frame):
        # Close the socket as the subscribe arrives, before it is acknowledged.
        if frame.type == "context.subscribe" and not dropped:
            dropped.append(connection_id)
            server._sessions[connection_id].connection.transport.abort()

    server._frame_observer = drop_on_subscribe
    before = client.connect_count
    await client.subscribe([X])
    await eventually(lambda: client.connect_count > before and X in server.contexts(),
                     message="reconnect with X")
    assert dropped
    assert client.counts == {X: 1}


async def test_strict_mode_double_mount_nets_one(server, make_client, frame_log):
    client = await make_client()
    # React StrictMode in development: mount, cleanup, mount.
    await client.subscribe([X])
    await client.unsubscribe([X])
    await client.subscribe([X])
    await eventually(lambda: server.subscriptions_of("u1").get(X) == 1, message="X held")
    assert client.counts == {X: 1}
    # The user navigates away: the component unmounts once.
    await client.unsubscribe([X])
    await eventually(lambda: X not in server.contexts(), message="X released")
    assert client.counts == {}
    assert server.connection_count("u1") == 1


async def test_calls_before_connect_reach_server(server, make_client, frame_log):
    client = await make_client(connect=False)
    await client.subscribe([X, Y])
    await client.unsubscribe([Y])
    assert frame_log.frames == []
    await client.connect()
    await eventually(lambda: X in server.contexts(), message="X held")
    assert frame_log.subscribed() == [(X,)]
    assert Y not in server.contexts()


async def test_calls_while_disconnected_reach_server(server, make_client, frame_log):
    client = await make_client()
    await client.subscribe([X])
    await eventually(lambda: X in server.contexts(), message="X held")
    await server.close()
    await eventually(lambda: not client.connected, message="client sees the drop")
    await client.unsubscribe([X])
    await client.subscribe([Y])
    old = frame_log.last_connection()
    await server.start()
    # The server restarted on another port; point the client at it.
    client.urls = [server.url]
    await client.wait_connected(timeout=5)
    await eventually(lambda: Y in server.contexts(), message="Y held")
    assert frame_log.subscribed(after=old) == [(Y,)]
    assert X not in server.contexts()


async def test_token_fetched_on_every_connect(server, make_client):
    tokens = TokenSource()
    client = await make_client(tokens=tokens)
    assert tokens.calls == 1
    await reconnect(server, client)
    await reconnect(server, client)
    assert tokens.calls == 3


async def test_handler_removed_stops_receiving(server, make_client):
    client = await make_client()
    inbox, barrier = Inbox(), Inbox()
    remove = client.on("test.event", inbox)
    client.on("test.barrier", barrier)
    await client.subscribe([X, BARRIER])
    await eventually(lambda: {X, BARRIER} <= set(server.contexts()), message="held")
    remove()
    await publish_then_barrier(server, barrier, X)
    assert inbox.events == []


async def test_failing_handler_does_not_silence_others(server, make_client):
    client = await make_client()
    inbox = Inbox()

    def broken(event):
        raise RuntimeError("handler bug")

    client.on("test.event", broken)
    client.on("test.event", inbox)
    await client.subscribe([X])
    await eventually(lambda: X in server.contexts(), message="X held")
    await server.publish(X, "test.event", {})
    await inbox.wait_for_count(1)
    assert client.connected


async def test_close_sends_a_normal_closing_handshake(server, make_client):
    client = await make_client("closer")
    await eventually(lambda: server.connection_count("closer") == 1, message="the connection")
    [session] = [s for s in server._sessions.values() if s.user_id == "closer"]
    connection = session.connection

    await client.close()

    await eventually(lambda: connection.close_code is not None, message="the close")
    assert connection.close_code == 1000


class FlakyTokens(TokenSource):
    """A token source that fails its first ``failures`` calls with ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__("flaky")
        self.failures = failures
        self.error = error

    async def __call__(self) -> str:
        if self.calls < self.failures:
            self.calls += 1
            raise self.error
        return await super().__call__()


async def test_token_source_failure_is_retried(server, make_client, caplog):
    tokens = FlakyTokens(2, RuntimeError("auth server down"))
    client = await make_client(tokens=tokens)
    assert client.connected
    assert tokens.calls == 3
    failures = [r for r in caplog.records if "get_token() failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is None for r in failures)


async def test_rejected_credentials_stop_the_client(server, make_client):
    tokens = FlakyTokens(1_000, CredentialsRejected("API key abc was revoked"))
    client = await make_client(connect=False, tokens=tokens)
    states: list[str] = []
    client.on_state_change(states.append)

    with pytest.raises(CredentialsRejected, match="revoked"):
        await client.connect()

    assert tokens.calls == 1
    assert states == [FAILED]
    with pytest.raises(CredentialsRejected):
        await client.wait_connected(timeout=1)
