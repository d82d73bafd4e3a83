"""Who may do what, over HTTP and on the event service, on the real database.

Every refusal must carry the documented status or error code, and no log
line may contain the credential that was refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

import httpx
import jwt
import pytest
import websockets

from kilo_web.chat import bots
from kilo_web.chat.tokens import revoke_user_tokens
from kilo_web.event_service.backplane import InMemoryBackplane
from kilo_web.event_service.embedded import server_from_settings
from kilo_web.event_service.tokens import issue_token, mint_token
from tests.chat.conftest import SECRET, auth_headers, login_session

# HTTP -----------------------------------------------------------------------


def _revoked_key(session, people, instance) -> str:
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    view, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=None)
    bots.revoke_api_key(session, bot_id=people.bot.id, key_id=view.id, user_id=None)
    return key


@pytest.mark.parametrize("credential, code", [
    (None, "unauthorized"),
    ("Basic YWxpY2U6c2VjcmV0", "unauthorized"),
    ("Bearer", "unauthorized"),
    ("Bearer not-a-session", "unauthorized"),
    ("Bearer kilo_bot_0123456789abcdef_short", "invalid_api_key"),
    ("expired-session", "session_expired"),
    ("revoked-key", "invalid_api_key"),
], ids=["missing", "basic", "empty-bearer", "unknown-session", "malformed-key",
        "expired-session", "revoked-key"])
def test_http_refuses_bad_credentials(api_url, session, people, instance, conversation, caplog,
                                      credential, code):
    if credential == "expired-session":
        token = login_session(session, people.alice.local_user_id,
                              expires_in=dt.timedelta(seconds=-1))
        credential = f"Bearer {token}"
    elif credential == "revoked-key":
        credential = f"Bearer {_revoked_key(session, people, instance)}"
    headers = {"Authorization": credential} if credential else {}
    caplog.set_level(logging.DEBUG)

    for method, path in [("POST", "/api/token"), ("GET", "/api/me"),
                         ("GET", f"/api/conversations/{conversation.id}/messages"),
                         ("POST", f"/api/conversations/{conversation.id}/read")]:
        response = httpx.request(method, f"{api_url}{path}", headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == code
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        if credential and credential.startswith("Basic"):
            assert "uses the 'Basic' scheme" in response.json()["error"]["message"]
    if credential and " " in credential:
        secret_part = credential.split(" ", 1)[1]
        assert secret_part not in caplog.text or len(secret_part) < 8


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/conversations/conv-1/messages", None),
    ("POST", "/api/conversations/conv-1/messages", {"text": "let me in"}),
    ("POST", "/api/conversations/conv-1/read", None),
    ("GET", "/api/conversations/conv-1/members", None),
    ("POST", "/api/conversations/conv-1/members", {"username": "carol"}),
    ("GET", "/api/instances/sandbox-1/bots", None),
    ("POST", "/api/conversations", {"instanceId": "sandbox-1", "title": "Mine now"}),
])
def test_http_refuses_non_members(api_url, session, people, conversation, method, path, body):
    response = httpx.request(method, f"{api_url}{path}", json=body,
                             headers=auth_headers(session, people.carol))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_http_bot_management_needs_the_owner(api_url, session, people, instance, conversation):
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    bob = auth_headers(session, people.bob)

    created = httpx.post(f"{api_url}/api/instances/{instance.id}/bots", headers=bob,
                         json={"username": "bobs-bot"})
    keys = httpx.get(f"{api_url}/api/bots/{people.bot.id}/keys", headers=bob)
    new_key = httpx.post(f"{api_url}/api/bots/{people.bot.id}/keys", headers=bob)

    for response in (created, keys, new_key):
        assert response.status_code == 403
        assert "only the owner" in response.json()["error"]["message"]


def test_http_unknown_ids_are_404_not_500(api_url, session, people):
    headers = auth_headers(session, people.alice)
    for path in ("/api/conversations/nope/messages", "/api/conversations/../etc/members",
                 "/api/instances/nope/bots", "/api/bots/999999/keys"):
        response = httpx.get(f"{api_url}{path}", headers=headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


# Event service ------------------------------------------------------------


@pytest.fixture
async def event_service(settings):
    server = server_from_settings(settings, backplane=InMemoryBackplane(), host="127.0.0.1",
                                  port=0)
    await server.start()
    yield server
    await server.close()


def _forged_tokens(user_id: str) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    claims = {"kiloUserId": user_id, "tokenSource": "web", "version": 0,
              "exp": int((now + dt.timedelta(hours=1)).timestamp())}
    return {
        "other-secret": mint_token("another-secret-" + "q" * 40, user_id),
        "expired": issue_token(SECRET, user_id, now=now - dt.timedelta(hours=2),
                               ttl_seconds=60)[0],
        "alg-none": jwt.encode(claims, key=None, algorithm="none"),
        "wrong-alg": jwt.encode(claims, SECRET, algorithm="HS512"),
        "missing-claim": jwt.encode({k: v for k, v in claims.items() if k != "version"},
                                    SECRET, algorithm="HS256"),
        "unknown-user": mint_token(SECRET, "999999"),
        "garbage": "not.a.token",
    }


async def test_event_service_refuses_bad_tokens(event_service, session, people, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = _forged_tokens(str(people.alice.id))
    revoke_user_tokens(session, people.bob.id)
    tokens["revoked"] = mint_token(SECRET, str(people.bob.id), version=0)

    for name, token in tokens.items():
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(event_service.url,
                                     additional_headers={"Authorization": f"Bearer {token}"})
        assert refused.value.response.status_code == 401, name
        assert token not in caplog.text, f"the {name} token was logged"


@pytest.mark.parametrize("context", [
    "/kiloclaw/sandbox-1",
    "/kiloclaw/sandbox-1/conv-1",
    "/presence/kiloclaw/sandbox-1",
    "/presence/kiloclaw/sandbox-1/conv-1",
    "/users/ALICE",
    "/_system/control",
    "/somewhere/else",
])
async def test_event_service_refuses_others_contexts(event_service, people, conversation, context):
    context = context.replace("ALICE", str(people.alice.id))
    token = mint_token(SECRET, str(people.carol.id))
    async with websockets.connect(event_service.url,
                                  additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"type": "context.subscribe", "contexts": [context]}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))

    assert reply["type"] == "error"
    assert reply["code"] == "forbidden"
    assert context in reply["message"]
    assert event_service.subscriptions_of(str(people.carol.id)) == {}
