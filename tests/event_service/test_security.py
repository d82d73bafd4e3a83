"""Token version, expiry, in-band refresh and access control over real sockets."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kilo_web.event_service import EventServiceClient, EventServiceServer, issue_token, mint_token
from kilo_web.event_service.client import refresh_delay, token_expiry

from .conftest import SECRET, eventually

X = "/kiloclaw/s1"


def open_socket(server, token: str):
    return connect(server.url, additional_headers={"Authorization": f"Bearer {token}"})


async def request(socket, frame: dict) -> dict:
    await socket.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(socket.recv(), 5))


async def test_handshake_rejects_revoked_version(server, authorizer):
    authorizer.versions["u1"] = 2
    with pytest.raises(InvalidStatus) as caught:
        async with open_socket(server, mint_token(SECRET, "u1", version=1)):
            pass
    assert caught.value.response.status_code == 401
    assert b"revoked" in caught.value.response.body


async def test_handshake_accepts_current_version(server, authorizer):
    authorizer.versions["u1"] = 2
    async with open_socket(server, mint_token(SECRET, "u1", version=2)) as socket:
        reply = await request(socket, {"type": "context.subscribe", "contexts": [X]})
    assert reply["type"] == "context.subscribed"


async def test_handshake_rejects_unknown_user(server, authorizer):
    authorizer.versions["ghost"] = None
    with pytest.raises(InvalidStatus) as caught:
        async with open_socket(server, mint_token(SECRET, "ghost")):
            pass
    assert b"does not exist" in caught.value.response.body


async def test_revoke_closes_open_connections(server, authorizer):
    async with open_socket(server, mint_token(SECRET, "u1", version=0)) as old, \
            open_socket(server, mint_token(SECRET, "u2", version=0)) as other:
        authorizer.versions["u1"] = 1
        assert await server.revoke("u1", 1) == 1
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(old.recv(), 5)
        assert caught.value.rcvd.code == 4003
        reply = await request(other, {"type": "context.subscribe", "contexts": [X]})
        assert reply["type"] == "context.subscribed"


async def test_expired_token_closes_with_4001(server):
    token, _ = issue_token(SECRET, "u1", ttl_seconds=1)
    async with open_socket(server, token) as socket:
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(socket.recv(), 5)
    assert caught.value.rcvd.code == 4001
    assert caught.value.rcvd.reason == "token expired"


async def test_auth_refresh_keeps_connection_open(server):
    token, expires_at = issue_token(SECRET, "u1", ttl_seconds=1)
    async with open_socket(server, token) as socket:
        reply = await request(socket, {"type": "auth.refresh", "token": mint_token(SECRET, "u1")})
        assert reply["type"] == "auth.refreshed"
        assert reply["expiresAt"] > expires_at.isoformat()
        # Keep talking until well past the first token's expiry.
        deadline = expires_at.timestamp() + 1.0
        while time.time() < deadline:
            reply = await request(socket, {"type": "context.subscribe", "contexts": [X]})
            assert reply["type"] == "context.subscribed"
            await asyncio.sleep(0.1)  # Pacing of the loop, not a synchronisation.


@pytest.mark.parametrize(
    "token, message",
    [
        (mint_token(SECRET, "u2"), "another user"),
        (mint_token("x" * 64, "u1"), "invalid"),
        ("garbage", "invalid"),
    ],
    ids=["other-user", "forged", "garbage"],
)
async def test_auth_refresh_rejects_bad_token(server, token, message):
    async with open_socket(server, mint_token(SECRET, "u1")) as socket:
        reply = await request(socket, {"type": "auth.refresh", "token": token})
        assert reply["type"] == "error"
        assert reply["code"] == "invalid_token"
        assert message in reply["message"]
        reply = await request(socket, {"type": "context.subscribe", "contexts": [X]})
        assert reply["type"] == "context.subscribed"


async def test_forbidden_context_subscribes_nothing(server):
    async with open_socket(server, mint_token(SECRET, "u1")) as socket:
        reply = await request(
            socket, {"type": "context.subscribe", "contexts": [X, "/forbidden/secret"]}
        )
        assert reply["type"] == "error"
        assert reply["code"] == "forbidden"
        assert "/forbidden/secret" in reply["message"]
        assert server.subscriptions_of("u1") == {}


@pytest.mark.parametrize("context, hint", [
    ("/users/someone-else", "belongs to that user alone"),
    ("/_system/control", "belong to the event-service nodes"),
    ("/forbidden/secret", "join the instance or conversation first"),
], ids=["other-user", "system", "not-a-member"])
async def test_forbidden_error_says_what_would_allow_it(server, authorizer, context, hint):
    authorizer.denied.add(("u1", "/users/someone-else"))
    async with open_socket(server, mint_token(SECRET, "u1")) as socket:
        reply = await request(socket, {"type": "context.subscribe", "contexts": [context]})
    assert reply["code"] == "forbidden"
    assert hint in reply["message"]


async def test_handshake_non_jwt_names_token_endpoint(server):
    with pytest.raises(InvalidStatus) as caught:
        async with connect(server.url, additional_headers={
                "Authorization": "Bearer kilo_bot_0123456789abcdef_" + "s" * 43}):
            pass
    assert caught.value.response.status_code == 401
    assert "POST /api/token" in caught.value.response.body.decode()


async def test_rate_limit_drops_excess_frames(authorizer):
    from kilo_web.event_service import EventServiceServer

    async with EventServiceServer(
        secret=SECRET, authorizer=authorizer, max_frames_per_second=5, frame_burst=5
    ) as server, open_socket(server, mint_token(SECRET, "u1")) as socket:
        for index in range(10):
            await socket.send(json.dumps({"type": "context.subscribe", "contexts": [f"/k/{index}"]}))
        replies = [json.loads(await asyncio.wait_for(socket.recv(), 5)) for _ in range(6)]
        assert [r["type"] for r in replies[:5]] == ["context.subscribed"] * 5
        assert replies[5]["code"] == "rate_limited"
        assert len(server.subscriptions_of("u1")) == 5


def test_refresh_delay_leaves_margin():
    assert refresh_delay(1000.0, now=0.0, margin_seconds=60) == 940.0
    assert refresh_delay(100.0, now=0.0, margin_seconds=60) == 50.0
    assert refresh_delay(10.0, now=20.0, margin_seconds=60) == 0.0


def test_token_expiry_reads_exp():
    token, expires_at = issue_token(SECRET, "u1", ttl_seconds=120)
    assert token_expiry(token) == expires_at.timestamp()
    assert token_expiry("not a token") is None


async def test_client_refreshes_token_in_band(server):
    calls = []

    async def short_tokens() -> str:
        calls.append(time.time())
        token, _ = issue_token(SECRET, "u1", ttl_seconds=3)
        return token

    client = EventServiceClient(server.url, short_tokens, reconnect_min_seconds=0.05,
                                refresh_margin_seconds=2.0)
    try:
        await asyncio.wait_for(client.connect(), 5)
        await client.subscribe([X])
        await eventually(lambda: client.refresh_count >= 2, timeout=10, message="two refreshes")
        assert client.connect_count == 1
        assert server.subscriptions_of("u1") == {X: 1}
    finally:
        await client.close()


async def test_client_rejected_token_backs_off(server):
    calls = []

    async def forged() -> str:
        calls.append(time.monotonic())
        return mint_token("f" * 64, "u1")

    client = EventServiceClient(server.url, forged, reconnect_min_seconds=0.05,
                                reconnect_max_seconds=0.8)
    connect_task = asyncio.create_task(client.connect())
    try:
        await eventually(lambda: len(calls) >= 6, timeout=20, message="six attempts")
        gaps = [later - earlier for earlier, later in zip(calls, calls[1:])]
        # Full jitter draws each delay below a cap that doubles: the total
        # cannot collapse to the cost of the handshakes alone.
        assert sum(gaps) > 0.05
        assert not client.connected
        assert server.connection_count() == 0
    finally:
        connect_task.cancel()
        await client.close()


async def test_user_subscribe_rate_is_shared_by_connections(authorizer):
    async with EventServiceServer(secret=SECRET, authorizer=authorizer,
                                  user_subscribe_rate=1.0, user_subscribe_burst=150,
                                  max_frames_per_second=1000) as server:
        token = mint_token(SECRET, "greedy")
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(server.url, additional_headers=headers) as first, \
                connect(server.url, additional_headers=headers) as second:
            batch = [f"/kiloclaw/s/c{i}" for i in range(100)]
            await first.send(json.dumps({"type": "context.subscribe", "contexts": batch}))
            assert json.loads(await first.recv())["type"] == "context.subscribed"
            more = [f"/kiloclaw/s/d{i}" for i in range(100)]
            await second.send(json.dumps({"type": "context.subscribe", "contexts": more}))
            refused = json.loads(await second.recv())
            other = mint_token(SECRET, "modest")
            async with connect(server.url,
                               additional_headers={"Authorization": f"Bearer {other}"}) as third:
                await third.send(json.dumps({"type": "context.subscribe", "contexts": more}))
                accepted = json.loads(await third.recv())

    assert refused["type"] == "error"
    assert refused["code"] == "rate_limited"
    assert "user greedy" in refused["message"]
    assert accepted["type"] == "context.subscribed"
