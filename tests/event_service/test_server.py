"""EventServiceServer over real sockets, driven by a raw websockets client."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kilo_web.event_service import EventServiceServer, issue_token, mint_token

from .conftest import SECRET, RuleAuthorizer, eventually

pytestmark = pytest.mark.asyncio

X = "/kiloclaw/s1"
Y = "/kiloclaw/s1/c1"


def open_socket(server: EventServiceServer, token: str | None = None, *, user_id: str = "u1"):
    token = token if token is not None else mint_token(SECRET, user_id)
    return connect(server.url, additional_headers={"Authorization": f"Bearer {token}"})


async def request(socket, frame: dict) -> dict:
    """Send one frame and return the server's next frame."""
    await socket.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(socket.recv(), 5))


async def next_frame(socket) -> dict:
    return json.loads(await asyncio.wait_for(socket.recv(), 5))


async def test_handshake_accepts_bearer_header(server):
    async with open_socket(server) as socket:
        reply = await request(socket, {"type": "context.subscribe", "contexts": [X]})
    assert reply["type"] == "context.subscribed"
    assert reply["contexts"] == [X]
    assert reply["streams"][X]["seq"] == 0


async def test_handshake_accepts_query_token(server):
    token = mint_token(SECRET, "u1")
    async with connect(f"{server.url}/?token={token}") as socket:
        reply = await request(socket, {"type": "context.subscribe", "contexts": [X]})
    assert reply["type"] == "context.subscribed"


@pytest.mark.parametrize(
    "token, reason",
    [
        (None, "missing token"),
        (mint_token("another-secret-" + "y" * 40, "u1"), "Signature verification failed"),
        (jwt.encode({"kiloUserId": "u1", "tokenSource": "web", "version": 0,
                     "exp": 4102444800}, None, algorithm="none"), "alg"),
        (jwt.encode({"kiloUserId": "u1", "tokenSource": "web", "version": 0,
                     "exp": 4102444800}, SECRET, algorithm="HS512"), "alg"),
        (jwt.encode({"kiloUserId": "u1", "exp": 4102444800}, SECRET, algorithm="HS256"),
         "tokenSource"),
        ("not-a-jwt", "invalid"),
    ],
    ids=["missing", "forged", "alg-none", "wrong-alg", "missing-claim", "garbage"],
)
async def test_handshake_rejects_bad_token(server, token, reason):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with pytest.raises(InvalidStatus) as caught:
        async with connect(server.url, additional_headers=headers):
            pass
    response = caught.value.response
    assert response.status_code == 401
    body = response.body.decode()
    assert reason.lower() in body.lower() or "invalid" in body.lower()
    assert server.connection_count() == 0


async def test_handshake_rejects_expired_token(server):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    token, _ = issue_token(SECRET, "u1", ttl_seconds=60, now=past)
    with pytest.raises(InvalidStatus) as caught:
        async with open_socket(server, token):
            pass
    assert caught.value.response.status_code == 401
    assert b"expired" in caught.value.response.body


async def test_subscribe_then_receive_event(server):
    async with open_socket(server) as socket:
        await request(socket, {"type": "context.subscribe", "contexts": [X]})
        await server.publish(X, "message.created", {"id": 1})
        frame = await next_frame(socket)
    assert frame == {
        "type": "event", "context": X, "event": "message.created", "data": {"id": 1}, "seq": 1,
    }


async def test_unsubscribe_stops_events(server):
    async with open_socket(server) as socket:
        await request(socket, {"type": "context.subscribe", "contexts": [X, Y]})
        reply = await request(socket, {"type": "context.unsubscribe", "contexts": [X]})
        assert reply == {"type": "context.unsubscribed", "contexts": [X]}
        await server.publish(X, "test.event", {"n": 1})
        await server.publish(Y, "test.event", {"n": 2})
        frame = await next_frame(socket)
    assert frame["context"] == Y


async def test_fan_out_to_every_connection(server):
    async with open_socket(server, user_id="a") as first, open_socket(server, user_id="b") as second, \
            open_socket(server, user_id="a") as third:
        for socket in (first, second, third):
            await request(socket, {"type": "context.subscribe", "contexts": [X]})
        assert server.subscriptions_of("a") == {X: 2}
        await server.publish(X, "test.event", {"n": 1})
        frames = [await next_frame(socket) for socket in (first, second, third)]
    assert all(frame["data"] == {"n": 1} for frame in frames)


async def test_deliveries_follow_holders_between_events(server):
    # The server keeps the connections of each context between events; every
    # change of holders must show in the next event's recipients.
    async with open_socket(server, user_id="a") as first, open_socket(server, user_id="b") as second:
        for socket in (first, second):
            await request(socket, {"type": "context.subscribe", "contexts": [X]})
        await server.publish(X, "test.event", {"n": 1})
        assert [(await next_frame(s))["data"] for s in (first, second)] == [{"n": 1}] * 2

        await request(second, {"type": "context.unsubscribe", "contexts": [X]})
        await server.publish(X, "test.event", {"n": 2})
        assert (await next_frame(first))["data"] == {"n": 2}

        async with open_socket(server, user_id="c") as third:
            await request(third, {"type": "context.subscribe", "contexts": [X]})
            await server.publish(X, "test.event", {"n": 3})
            assert [(await next_frame(s))["data"] for s in (first, third)] == [{"n": 3}] * 2
        await eventually(lambda: server.connection_count("c") == 0, message="third gone")
        await server.publish(X, "test.event", {"n": 4})
        assert (await next_frame(first))["data"] == {"n": 4}

        # Had the second connection been sent 2, 3 or 4, it would come before this.
        await request(second, {"type": "context.subscribe", "contexts": [Y]})
        await server.publish(Y, "test.event", {"n": 5})
        assert (await next_frame(second))["data"] == {"n": 5}


async def test_subscribe_twice_is_idempotent(server):
    async with open_socket(server) as socket:
        await request(socket, {"type": "context.subscribe", "contexts": [X]})
        reply = await request(socket, {"type": "context.subscribe", "contexts": [X, X]})
        assert reply["type"] == "context.subscribed"
        assert reply["contexts"] == [X]
        await server.publish(X, "test.event", {"n": 1})
        frame = await next_frame(socket)
        assert frame["data"] == {"n": 1}
        # A second copy of the event would arrive before this acknowledgement.
        reply = await request(socket, {"type": "context.subscribe", "contexts": [Y]})
        assert reply["type"] == "context.subscribed"
        assert server.subscriptions_of("u1") == {X: 1, Y: 1}


async def test_unsubscribe_unknown_context_is_noop(server):
    async with open_socket(server) as socket:
        reply = await request(socket, {"type": "context.unsubscribe", "contexts": ["/kiloclaw/never"]})
        assert reply == {"type": "context.unsubscribed", "contexts": ["/kiloclaw/never"]}
        await request(socket, {"type": "context.subscribe", "contexts": [X]})
        await request(socket, {"type": "context.unsubscribe", "contexts": [X]})
        reply = await request(socket, {"type": "context.unsubscribe", "contexts": [X]})
        assert reply["type"] == "context.unsubscribed"
        assert server.contexts() == []


async def test_close_releases_every_context(server):
    async with open_socket(server) as socket:
        await request(socket, {"type": "context.subscribe", "contexts": [X, Y]})
    await eventually(lambda: server.connection_count() == 0, message="connection gone")
    assert server.contexts() == []


@pytest.mark.parametrize(
    "payload, code",
    [
        ("{not json", "invalid_json"),
        (b"\x00\x01", "binary_frame"),
        ('["a list"]', "invalid_frame"),
        ('{"contexts": []}', "invalid_frame"),
        ('{"type": "context.publish", "contexts": []}', "unknown_type"),
        ('{"type": "context.subscribe"}', "invalid_frame"),
        ('{"type": "context.subscribe", "contexts": "/kiloclaw/s1"}', "invalid_frame"),
        ('{"type": "context.subscribe", "contexts": [42]}', "invalid_context"),
        ('{"type": "context.subscribe", "contexts": ["kiloclaw"]}', "invalid_context"),
        ('{"type": "context.subscribe", "contexts": ["/' + "a" * 300 + '"]}', "invalid_context"),
        (json.dumps({"type": "context.subscribe",
                     "contexts": [f"/k/{i}" for i in range(101)]}), "too_many_contexts"),
    ],
    ids=["json", "binary", "not-object", "no-type", "unknown-type", "no-contexts",
         "contexts-not-list", "context-not-string", "context-malformed", "context-too-long",
         "too-many-in-frame"],
)
async def test_bad_frame_gets_error_and_socket_survives(server, payload, code):
    async with open_socket(server) as socket:
        await socket.send(payload)
        error = await next_frame(socket)
        assert error["type"] == "error"
        assert error["code"] == code
        assert error["message"]
        reply = await request(socket, {"type": "context.subscribe", "contexts": [X]})
        assert reply["type"] == "context.subscribed"
    assert server.contexts() == [X] or server.connection_count() == 0


async def test_too_many_contexts_per_connection(frame_log):
    async with EventServiceServer(secret=SECRET, authorizer=RuleAuthorizer(),
                                   max_contexts_per_connection=3) as server:
        async with open_socket(server) as socket:
            await request(socket, {"type": "context.subscribe", "contexts": ["/k/1", "/k/2"]})
            error = await request(socket, {"type": "context.subscribe",
                                           "contexts": ["/k/3", "/k/4"]})
            assert error["code"] == "too_many_contexts"
            assert server.subscriptions_of("u1") == {"/k/1": 1, "/k/2": 1}
            reply = await request(socket, {"type": "context.subscribe", "contexts": ["/k/3"]})
            assert reply["type"] == "context.subscribed"


async def test_oversized_frame_closes_with_1009():
    async with EventServiceServer(secret=SECRET, authorizer=RuleAuthorizer(),
                                   max_frame_bytes=2048) as server:
        async with open_socket(server) as socket:
            await socket.send(json.dumps({"type": "context.subscribe",
                                          "contexts": ["/k/" + "a" * 4000]}))
            with pytest.raises(ConnectionClosed) as caught:
                await asyncio.wait_for(socket.recv(), 5)
        assert caught.value.rcvd.code == 1009
        await eventually(lambda: server.connection_count() == 0, message="connection gone")


async def test_churn_returns_counts_to_zero(server):
    sockets = [await open_socket(server, user_id=f"u{i % 3}").__aenter__() for i in range(6)]
    for round_number in range(20):
        for index, socket in enumerate(sockets):
            contexts = [f"/kiloclaw/s{(index + round_number) % 4}", X]
            await request(socket, {"type": "context.subscribe", "contexts": contexts})
            if round_number % 2:
                await request(socket, {"type": "context.unsubscribe", "contexts": contexts})
    for socket in sockets:
        await socket.close()
    await eventually(lambda: server.connection_count() == 0, message="all closed")
    assert server.contexts() == []


async def test_compression_is_off_unless_asked(authorizer):
    token = mint_token(SECRET, "u1")
    headers = {"Authorization": f"Bearer {token}"}
    for compression, expected in ((None, None), ("deflate", "permessage-deflate")):
        async with EventServiceServer(secret=SECRET, authorizer=authorizer,
                                      compression=compression) as server:
            async with connect(server.url, additional_headers=headers) as ws:
                negotiated = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert (negotiated.split(";")[0] if negotiated else None) == expected
