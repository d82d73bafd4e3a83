"""Missed events: stream numbers, replay on resubscribe, and failed recovery."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from kilo_web.event_service import EventServiceClient, EventServiceServer, mint_token
from kilo_web.event_service.client import RECOVERY_FAILED
from kilo_web.event_service.history import ContextStream

from .conftest import SECRET, Inbox, TokenSource, eventually

X = "/kiloclaw/s1/c1"


def test_stream_replays_after_seq():
    stream = ContextStream(max_events=3)
    for _ in range(3):
        stream.append(lambda seq: f"frame {seq}")
    assert stream.since(stream.id, 1) == ["frame 2", "frame 3"]
    assert stream.since(stream.id, 3) == []


def test_stream_refuses_gap_or_other_stream():
    stream = ContextStream(max_events=2)
    for _ in range(4):
        stream.append(lambda seq: f"frame {seq}")
    assert stream.since(stream.id, 1) is None
    assert stream.since(stream.id, 2) == ["frame 3", "frame 4"]
    assert stream.since("another", 4) is None
    assert stream.since(stream.id, 5) is None


async def start_client(server: EventServiceServer) -> EventServiceClient:
    client = EventServiceClient(server.url, TokenSource(), reconnect_min_seconds=0.01,
                                reconnect_max_seconds=0.05)
    await client.connect()
    return client


async def drop_and_publish(server, client, numbers) -> None:
    """Close the client's socket, publish while it is away, wait for it to return."""
    before = client.connect_count
    await server.disconnect("u1")
    for number in numbers:
        await server.publish(X, "test.event", {"n": number})
    await eventually(lambda: client.connect_count > before, message="reconnect")


async def test_reconnect_replays_missed_events_once(server):
    client = await start_client(server)
    inbox, failures = Inbox(), Inbox()
    client.on("test.event", inbox)
    client.on(RECOVERY_FAILED, failures)
    try:
        await client.subscribe([X])
        await eventually(lambda: X in server.contexts(), message="subscribed")
        for number in (1, 2):
            await server.publish(X, "test.event", {"n": number})
        await inbox.wait_for_count(2)
        # The stream outlives its last holder for history_linger_seconds,
        # so events published while the client is away are kept.
        await drop_and_publish(server, client, [3, 4])
        await server.publish(X, "test.event", {"n": 5})
        await inbox.wait_for_count(5)
        assert [e.data["n"] for e in inbox.events] == [1, 2, 3, 4, 5]
        assert [e.seq for e in inbox.events] == [1, 2, 3, 4, 5]
        assert failures.events == []
    finally:
        await client.close()


async def test_reconnect_beyond_history_reports_failure(authorizer):
    async with EventServiceServer(secret=SECRET, authorizer=authorizer, history_size=2) as server:
        client = await start_client(server)
        inbox, failures = Inbox(), Inbox()
        client.on("test.event", inbox)
        client.on(RECOVERY_FAILED, failures)
        try:
            await client.subscribe([X])
            await eventually(lambda: X in server.contexts(), message="subscribed")
            await server.publish(X, "test.event", {"n": 1})
            await inbox.wait_for_count(1)
            await drop_and_publish(server, client, [2, 3, 4])
            await failures.wait_for_count(1)
            assert failures.events[0].context == X
            await server.publish(X, "test.event", {"n": 5})
            await inbox.wait_for_count(2)
            assert [e.data["n"] for e in inbox.events] == [1, 5]
        finally:
            await client.close()


async def test_reconnect_after_stream_closed_reports_failure(authorizer):
    async with EventServiceServer(secret=SECRET, authorizer=authorizer,
                                  history_linger_seconds=0.0) as server:
        client = await start_client(server)
        failures = Inbox()
        client.on(RECOVERY_FAILED, failures)
        try:
            await client.subscribe([X])
            await server.publish(X, "test.event", {"n": 1})
            await eventually(lambda: X in server.contexts(), message="subscribed")
            await drop_and_publish(server, client, [])
            await failures.wait_for_count(1)
        finally:
            await client.close()


async def test_fresh_subscribe_after_release_is_not_recovery(server):
    client = await start_client(server)
    failures, inbox = Inbox(), Inbox()
    client.on(RECOVERY_FAILED, failures)
    client.on("test.event", inbox)
    try:
        await client.subscribe([X])
        await eventually(lambda: X in server.contexts(), message="subscribed")
        await client.unsubscribe([X])
        await eventually(lambda: X not in server.contexts(), message="released")
        await server.publish(X, "test.event", {"n": 1})
        await client.subscribe([X])
        await eventually(lambda: X in server.contexts(), message="subscribed again")
        await server.publish(X, "test.event", {"n": 2})
        await inbox.wait_for_count(1)
        assert [e.data["n"] for e in inbox.events] == [2]
        assert failures.events == []
    finally:
        await client.close()


@pytest.mark.parametrize("since", [
    {"/kiloclaw/other": {"stream": "a", "seq": 1}},
    {X: {"stream": 1, "seq": 1}},
    {X: {"stream": "a", "seq": -1}},
    {X: "nope"},
    [],
])
async def test_bad_since_is_invalid_frame(server, since):
    token = mint_token(SECRET, "u1")
    async with connect(server.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"type": "context.subscribe", "contexts": [X], "since": since}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply["type"] == "error"
    assert reply["code"] == "invalid_frame"
    assert server.contexts() == []


async def test_typing_is_sent_without_seq_and_never_replayed(server):
    client = await start_client(server)
    inbox = Inbox()
    client.on("test.event", inbox)
    client.on("typing", inbox)
    try:
        await client.subscribe([X])
        await eventually(lambda: X in server.contexts(), message="subscribed")
        await server.publish(X, "test.event", {"n": 1})
        await server.publish(X, "typing", {"n": 2})
        await server.publish(X, "test.event", {"n": 3})
        await inbox.wait_for_count(3)
        assert [(e.event, e.seq) for e in inbox.events] == [
            ("test.event", 1), ("typing", None), ("test.event", 2),
        ]

        before = client.connect_count
        await server.disconnect("u1")
        await server.publish(X, "typing", {"n": 4})
        await server.publish(X, "test.event", {"n": 5})
        await eventually(lambda: client.connect_count > before, message="reconnect")
        await server.publish(X, "test.event", {"n": 6})
        await inbox.wait_for_count(5)
        # The missed message is replayed; the missed typing is not.
        assert [(e.event, e.data["n"], e.seq) for e in inbox.events[3:]] == [
            ("test.event", 5, 3), ("test.event", 6, 4),
        ]
    finally:
        await client.close()
