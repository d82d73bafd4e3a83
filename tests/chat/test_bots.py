"""Bot accounts and API keys: the rules in process, then over HTTP and the event service."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
import websockets
from sqlmodel import select

from kilo_web.chat import bots, service
from kilo_web.chat.errors import InvalidApiKeyError, NotAllowedError
from kilo_web.chat.models import ApiKey, ConversationMember
from kilo_web.event_service.embedded import get_backplane, server_from_settings
from kilo_web.event_service.protocol import CloseCode
from kilo_web.event_service.tokens import decode_token
from tests.chat.conftest import SECRET, auth_headers

# In process ---------------------------------------------------------------


def _members(session, conversation_id: str) -> set[int]:
    statement = select(ConversationMember.user_id).where(
        ConversationMember.conversation_id == conversation_id
    )
    return set(session.exec(statement).all())


def test_create_bot_joins_every_conversation_of_its_instance(session, people, instance,
                                                             conversation):
    bot = bots.create_bot(session, instance_id=instance.id, username="helper",
                          display_name="Helper", created_by=people.alice.id)

    assert bot.instance_id == instance.id
    assert bot.id in _members(session, conversation.id)
    later = service.create_conversation(session, instance_id=instance.id, title="Later",
                                        creator_id=people.bob.id)
    assert bot.id in _members(session, later.id)


def test_create_bot_needs_the_instance_owner(session, people, instance):
    with pytest.raises(NotAllowedError, match="only the owner"):
        bots.create_bot(session, instance_id=instance.id, username="sneaky",
                        display_name="Sneaky", created_by=people.bob.id)


def test_bot_belongs_to_one_instance(session, people, instance):
    other = service.create_instance(session, owner_id=people.alice.id, label="Other")
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)

    with pytest.raises(NotAllowedError, match="belongs to one instance"):
        bots.attach_bot(session, bot_id=people.bot.id, instance_id=other.id)
    with pytest.raises(NotAllowedError, match="is a person"):
        bots.attach_bot(session, bot_id=people.bob.id, instance_id=instance.id)


def test_api_key_is_stored_as_a_digest_only(session, people, instance):
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    view, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=None)

    assert key.startswith(f"kilo_bot_{view.id}_")
    row = session.get(ApiKey, view.id)
    # The secret may contain "_" itself, so it is everything after the id.
    secret = key[len(f"kilo_bot_{view.id}_"):]
    assert len(secret) == 43
    assert secret not in row.secret_sha256
    caller = bots.authenticate_api_key(session, key)
    assert (caller.bot_id, caller.instance_id, caller.key_id) == (
        people.bot.id, instance.id, view.id
    )


@pytest.mark.parametrize("mangle", [
    lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),
    lambda key: key.replace("kilo_bot_", "kilo_bot_0"),
    lambda key: "kilo_bot_",
    lambda key: key + "x",
], ids=["wrong-secret", "wrong-shape", "prefix-only", "too-long"])
def test_api_key_rejections_never_repeat_the_key(session, people, instance, mangle):
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    _, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=None)
    bad = mangle(key)

    with pytest.raises(InvalidApiKeyError) as caught:
        bots.authenticate_api_key(session, bad)
    # The secret is everything after "kilo_bot_<16 hex digits>_"; it may hold "_" itself.
    secret = bad[len("kilo_bot_") + 17:]
    assert not secret or secret not in str(caught.value)


def test_revoked_key_is_refused_and_raises_token_version(session, people, instance):
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    view, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=None)

    revoked, version = bots.revoke_api_key(session, bot_id=people.bot.id, key_id=view.id,
                                           user_id=people.alice.id)

    assert revoked.revoked_at is not None
    assert version == 1
    with pytest.raises(InvalidApiKeyError, match="revoked"):
        bots.authenticate_api_key(session, key)
    again, same = bots.revoke_api_key(session, bot_id=people.bot.id, key_id=view.id, user_id=None)
    assert (again.revoked_at, same) == (revoked.revoked_at, 1)


# Over HTTP ----------------------------------------------------------------


@pytest.fixture
def bot_key(api_url, session, people, instance) -> tuple[int, str, str]:
    """Create a bot through the API as the instance's owner; return (bot id, key id, key)."""
    response = httpx.post(
        f"{api_url}/api/instances/{instance.id}/bots",
        headers=auth_headers(session, people.alice),
        json={"username": "sandbot", "displayName": "Sandbox Bot", "keyLabel": "tests"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["bot"]["id"], body["apiKey"]["id"], body["apiKey"]["key"]


def test_http_bot_creation_shows_the_key_once(api_url, session, people, instance, bot_key):
    bot_id, key_id, _ = bot_key
    owner = auth_headers(session, people.alice)

    listed = httpx.get(f"{api_url}/api/bots/{bot_id}/keys", headers=owner).json()["apiKeys"]
    assert [k["id"] for k in listed] == [key_id]
    assert "key" not in listed[0]
    assert listed[0]["label"] == "tests"
    names = [b["username"] for b in
             httpx.get(f"{api_url}/api/instances/{instance.id}/bots", headers=owner).json()["bots"]]
    assert names == ["sandbot"]
    refused = httpx.get(f"{api_url}/api/bots/{bot_id}/keys",
                        headers=auth_headers(session, people.bob))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


def test_http_bot_key_authenticates_as_the_bot(api_url, instance, conversation, bot_key):
    bot_id, _, key = bot_key
    headers = {"Authorization": f"Bearer {key}"}

    me = httpx.get(f"{api_url}/api/me", headers=headers).json()
    assert me == {"id": bot_id, "username": "sandbot", "displayName": "Sandbox Bot",
                  "isBot": True, "instanceId": instance.id}
    token = httpx.post(f"{api_url}/api/token", headers=headers).json()
    claims = decode_token(SECRET, token["token"])
    assert (claims.user_id, claims.token_source, token["userId"]) == (str(bot_id), "bot", bot_id)
    listed = httpx.get(f"{api_url}/api/conversations", headers=headers).json()["conversations"]
    assert [c["id"] for c in listed] == [conversation.id]
    posted = httpx.post(f"{api_url}/api/conversations/{conversation.id}/messages",
                        headers=headers,
                        json={"blocks": [{"type": "markdown", "text": "**hello**"}]})
    assert posted.status_code == 201
    assert posted.json()["message"]["senderIsBot"] is True


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/devices", None),
    ("POST", "/api/devices", {"kind": "expo", "token": "ExponentPushToken[abc]"}),
    ("POST", "/api/instances", {"label": "Bot land"}),
    ("POST", "/api/conversations", {"instanceId": "sandbox-1", "title": "By a bot"}),
    ("POST", "/api/conversations/conv-1/members", {"username": "carol"}),
])
def test_http_bot_refused_on_endpoints_for_people(api_url, conversation, bot_key, method, path,
                                                  body):
    _, _, key = bot_key
    response = httpx.request(method, f"{api_url}{path}", json=body,
                             headers={"Authorization": f"Bearer {key}"})

    assert response.status_code == 403
    assert response.json()["error"]["message"].startswith("bots may not")


def test_http_revoked_key_is_refused_at_once(api_url, session, people, bot_key):
    bot_id, key_id, key = bot_key
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{api_url}/api/me", headers=headers).status_code == 200

    revoked = httpx.delete(f"{api_url}/api/bots/{bot_id}/keys/{key_id}",
                           headers=auth_headers(session, people.alice))
    assert revoked.status_code == 200
    assert revoked.json()["apiKey"]["revokedAt"] is not None

    refused = httpx.get(f"{api_url}/api/me", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert key[len(f"kilo_bot_{key_id}_"):] not in refused.text


def test_http_concurrent_repeats_post_one_message(api_url, conversation, bot_key):
    _, _, key = bot_key
    url = f"{api_url}/api/conversations/{conversation.id}/messages"
    body = {"text": "only once", "clientMessageId": "retry-42"}

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            return await asyncio.gather(*(client.post(url, json=body) for _ in range(8)))

    responses = asyncio.run(post_all())

    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["message"]["id"] for r in responses}) == 1
    page = httpx.get(url, headers={"Authorization": f"Bearer {key}"}).json()["messages"]
    assert [m["clientMessageId"] for m in page].count("retry-42") == 1


# Over the event service ---------------------------------------------------


async def test_revoked_key_closes_the_bot_socket_at_once(api_url, settings, session, people,
                                                         instance, bot_key):
    bot_id, key_id, key = bot_key
    server = server_from_settings(settings, backplane=get_backplane(), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=api_url) as http:
            token = (await http.post("/api/token",
                                     headers={"Authorization": f"Bearer {key}"})).json()["token"]
            async with websockets.connect(
                server.url, additional_headers={"Authorization": f"Bearer {token}"}
            ) as socket:
                owner = auth_headers(session, people.alice)
                response = await http.delete(f"/api/bots/{bot_id}/keys/{key_id}", headers=owner)
                assert response.status_code == 200
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(socket.recv(), timeout=5)
                assert closed.value.rcvd.code == CloseCode.TOKEN_REVOKED

            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(
                    server.url, additional_headers={"Authorization": f"Bearer {token}"}
                )
            assert refused.value.response.status_code == 401
            again = await http.post("/api/token", headers={"Authorization": f"Bearer {key}"})
            assert again.status_code == 401
    finally:
        await server.close()


async def test_clients_may_not_subscribe_to_system_contexts(settings, people):
    from kilo_web.event_service.tokens import mint_token

    server = server_from_settings(settings, backplane=get_backplane(), host="127.0.0.1", port=0)
    await server.start()
    try:
        token = mint_token(SECRET, str(people.alice.id))
        async with websockets.connect(
            server.url, additional_headers={"Authorization": f"Bearer {token}"}
        ) as socket:
            await socket.send('{"type": "context.subscribe", "contexts": ["/_system/control"]}')
            reply = await asyncio.wait_for(socket.recv(), timeout=5)
        assert '"forbidden"' in reply
    finally:
        await server.close()


def test_last_used_is_recorded(session, people, instance):
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    view, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=None)
    assert view.last_used_at is None

    bots.authenticate_api_key(session, key)

    session.expire_all()
    used = session.get(ApiKey, view.id).last_used_at
    assert used is not None
    assert dt.datetime.now(dt.UTC) - used < dt.timedelta(minutes=1)
