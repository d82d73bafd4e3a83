"""DatabaseAuthorizer, token versions and the /api/token endpoint on a real database."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import jwt
import pytest

from kilo_web.chat.access import DatabaseAuthorizer
from kilo_web.chat.tokens import issue_user_token, revoke_user_tokens
from kilo_web.event_service.tokens import InvalidToken, decode_token
from tests.chat.conftest import SECRET, auth_headers, login_session


@pytest.fixture
def authorizer(engine) -> DatabaseAuthorizer:
    return DatabaseAuthorizer(engine)


async def test_authorizer_instance_membership(authorizer, people, instance, conversation):
    contexts = [f"/kiloclaw/{instance.id}", f"/presence/kiloclaw/{instance.id}"]
    assert await authorizer.forbidden_contexts(str(people.bob.id), contexts) == []
    assert await authorizer.forbidden_contexts(str(people.carol.id), contexts) == contexts


async def test_authorizer_conversation_membership(authorizer, people, instance, conversation):
    context = f"/kiloclaw/{instance.id}/{conversation.id}"
    presence = f"/presence{context}"
    assert await authorizer.forbidden_contexts(str(people.alice.id), [context, presence]) == []
    assert await authorizer.forbidden_contexts(str(people.carol.id), [context]) == [context]
    wrong_instance = f"/kiloclaw/other/{conversation.id}"
    assert await authorizer.forbidden_contexts(str(people.alice.id), [wrong_instance]) == [
        wrong_instance
    ]


async def test_authorizer_user_and_platform_contexts(authorizer, people):
    own, other = f"/users/{people.alice.id}", f"/users/{people.bob.id}"
    allowed = await authorizer.forbidden_contexts(str(people.alice.id), [own, "/presence/platform"])
    assert allowed == []
    assert await authorizer.forbidden_contexts(str(people.alice.id), [other]) == [other]
    assert await authorizer.forbidden_contexts(str(people.alice.id), ["/elsewhere/x"]) == [
        "/elsewhere/x"
    ]
    assert await authorizer.forbidden_contexts("not-a-number", [own]) == [own]


async def test_authorizer_visible_users(authorizer, people, instance):
    visible = await authorizer.visible_users(str(people.bob.id))
    assert visible == {str(people.alice.id), str(people.bob.id), str(people.bot.id)}
    assert await authorizer.visible_users(str(people.carol.id)) == frozenset()


async def test_authorizer_token_version(authorizer, session, people):
    assert await authorizer.token_version(str(people.alice.id)) == 0
    revoke_user_tokens(session, people.alice.id)
    assert await authorizer.token_version(str(people.alice.id)) == 1
    assert await authorizer.token_version("999999") is None
    assert await authorizer.token_version("abc") is None


def test_issue_token_carries_current_version(session, people, settings):
    revoke_user_tokens(session, people.bob.id)
    token, expires_at = issue_user_token(session, people.bob.id, settings=settings)
    claims = decode_token(SECRET, token)
    assert claims.user_id == str(people.bob.id)
    assert claims.version == 1
    assert claims.token_source == "web"
    assert claims.expires_at == expires_at


def test_token_endpoint_returns_token_and_expiry(api_url, session, people, settings):
    session_id = login_session(session, people.alice.local_user_id, expires_in=dt.timedelta(days=1))
    before = dt.datetime.now(dt.UTC)
    response = httpx.post(f"{api_url}/api/token", headers={"Authorization": f"Bearer {session_id}"})
    assert response.status_code == 200
    body = response.json()
    expires_at = dt.datetime.fromisoformat(body["expiresAt"])
    assert expires_at.tzinfo is not None
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert claims["kiloUserId"] == str(people.alice.id)
    assert claims["tokenSource"] == "web"
    assert claims["version"] == 0
    assert claims["exp"] == int(expires_at.timestamp())
    lifetime = expires_at - before
    assert dt.timedelta(minutes=59) <= lifetime <= dt.timedelta(minutes=60, seconds=5)


@pytest.mark.parametrize(
    "header, code",
    [(None, "unauthorized"), ("Basic abc", "unauthorized"), ("Bearer unknown", "unauthorized")],
    ids=["missing", "wrong-scheme", "unknown-session"],
)
def test_token_endpoint_rejects_bad_credentials(api_url, header, code):
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{api_url}/api/token", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_endpoint_rejects_expired_session(api_url, session, people):
    session_id = login_session(session, people.bob.local_user_id,
                               expires_in=-dt.timedelta(minutes=1))
    response = httpx.post(f"{api_url}/api/token", headers={"Authorization": f"Bearer {session_id}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "session_expired"


async def test_revoked_token_refused_by_event_service(session, engine, people, settings):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from kilo_web.event_service import EventServiceServer

    old_token, _ = issue_user_token(session, people.alice.id, settings=settings)
    async with EventServiceServer(secret=SECRET, authorizer=DatabaseAuthorizer(engine)) as server:
        headers = {"Authorization": f"Bearer {old_token}"}
        async with connect(server.url, additional_headers=headers) as open_socket:
            new_version = revoke_user_tokens(session, people.alice.id)
            assert await server.revoke(str(people.alice.id), new_version) == 1
            with pytest.raises(ConnectionClosed) as closed:
                await open_socket.recv()
            assert closed.value.rcvd.code == 4003
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        new_token, _ = issue_user_token(session, people.alice.id, settings=settings)
        headers = {"Authorization": f"Bearer {new_token}"}
        async with connect(server.url, additional_headers=headers) as fresh:
            await fresh.send('{"type": "context.subscribe", "contexts": ["/presence/platform"]}')
            assert '"context.subscribed"' in await fresh.recv()
            assert server.connection_count(str(people.alice.id)) == 1


EXPO_TOKEN = "ExponentPushToken[abcdefghijklmnopqrstuv]"
WEBPUSH = {
    "kind": "webpush",
    "endpoint": "https://fcm.googleapis.com/fcm/send/abc123",
    "keys": {
        "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
        "auth": "tBHItJI5svbpez7KI4CCXg",
    },
}


def test_devices_register_list_remove(api_url, session, people):
    headers = auth_headers(session, people.alice)
    expo = httpx.post(f"{api_url}/api/devices", headers=headers,
                      json={"kind": "expo", "token": EXPO_TOKEN})
    assert expo.status_code == 201
    assert expo.json()["device"]["kind"] == "expo"
    web = httpx.post(f"{api_url}/api/devices", headers=headers, json=WEBPUSH)
    assert web.status_code == 201
    assert web.json()["device"]["origin"] == "https://fcm.googleapis.com"

    again = httpx.post(f"{api_url}/api/devices", headers=headers,
                       json={"kind": "expo", "token": EXPO_TOKEN})
    assert again.json()["device"]["id"] == expo.json()["device"]["id"]

    listed = httpx.get(f"{api_url}/api/devices", headers=headers).json()["devices"]
    assert sorted(d["kind"] for d in listed) == ["expo", "webpush"]
    assert all(EXPO_TOKEN not in str(d) for d in listed)

    device_id = expo.json()["device"]["id"]
    removed = httpx.delete(f"{api_url}/api/devices/{device_id}", headers=headers)
    assert removed.status_code == 200
    listed = httpx.get(f"{api_url}/api/devices", headers=headers).json()["devices"]
    assert [d["kind"] for d in listed] == ["webpush"]


def test_devices_of_others_are_not_removable(api_url, session, people):
    alice, bob = auth_headers(session, people.alice), auth_headers(session, people.bob)
    device = httpx.post(f"{api_url}/api/devices", headers=alice,
                        json={"kind": "expo", "token": EXPO_TOKEN}).json()["device"]
    response = httpx.delete(f"{api_url}/api/devices/{device['id']}", headers=bob)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert len(httpx.get(f"{api_url}/api/devices", headers=alice).json()["devices"]) == 1


@pytest.mark.parametrize(
    "body, code",
    [
        ({"kind": "fax"}, "invalid_device"),
        ({"kind": "expo", "token": "not-a-token"}, "invalid_device"),
        ({**WEBPUSH, "endpoint": "https://evil.example/push"}, "invalid_device"),
        ({"kind": "webpush", "endpoint": WEBPUSH["endpoint"]}, "invalid_device"),
        ([1, 2], "invalid_body"),
    ],
    ids=["kind", "expo-token", "origin", "keys", "not-object"],
)
def test_devices_reject_bad_input(api_url, session, people, body, code):
    response = httpx.post(f"{api_url}/api/devices", headers=auth_headers(session, people.bob),
                          json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_devices_reject_invalid_json(api_url, session, people):
    response = httpx.post(f"{api_url}/api/devices", headers=auth_headers(session, people.bob),
                          content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_devices_need_login(api_url):
    assert httpx.get(f"{api_url}/api/devices").status_code == 401


@pytest.fixture
def published(conversation):
    """Events the API publishes on the conversation's context, through the process backplane."""
    from kilo_web.event_service.contexts import kiloclaw_conversation_context
    from kilo_web.event_service.embedded import get_backplane

    backplane = get_backplane()
    context = kiloclaw_conversation_context(conversation.instance_id, conversation.id)
    events: list[tuple[str, dict]] = []
    remove = backplane.add_receiver(lambda ctx, event, data: events.append((event, data))
                                    if ctx == context else None)
    asyncio.run(backplane.watch(context))
    yield events
    asyncio.run(backplane.unwatch(context))
    remove()


def test_messages_post_is_idempotent(api_url, session, people, conversation, published):
    headers = auth_headers(session, people.alice)
    url = f"{api_url}/api/conversations/{conversation.id}/messages"
    first = httpx.post(url, headers=headers, json={"text": "hi", "clientMessageId": "m-1"})
    assert first.status_code == 201
    repeat = httpx.post(url, headers=headers, json={"text": "hi", "clientMessageId": "m-1"})
    assert repeat.status_code == 200
    assert repeat.json()["message"]["id"] == first.json()["message"]["id"]
    assert [event for event, _ in published] == ["message.created"]
    assert published[0][1]["clientMessageId"] == "m-1"


def test_messages_list_pages_back(api_url, session, people, conversation):
    headers = auth_headers(session, people.bob)
    url = f"{api_url}/api/conversations/{conversation.id}/messages"
    for number in range(5):
        response = httpx.post(url, headers=headers, json={"text": f"n{number}"})
        assert response.status_code == 201
    page = httpx.get(url, headers=headers, params={"limit": 2}).json()
    assert [m["blocks"][0]["text"] for m in page["messages"]] == ["n3", "n4"]
    older = httpx.get(url, headers=headers, params={"limit": 2, "before": page["before"]}).json()
    assert [m["blocks"][0]["text"] for m in older["messages"]] == ["n1", "n2"]
    newer = httpx.get(url, headers=headers, params={"after": 3}).json()
    assert [m["seq"] for m in newer["messages"]] == [4, 5]
    first = httpx.get(url, headers=headers, params={"before": 2}).json()
    assert first["before"] is None


@pytest.mark.parametrize(
    "path, method, body, status, code",
    [
        ("/api/conversations/nope/messages", "GET", None, 404, "not_found"),
        ("/api/conversations/conv-1/messages?limit=x", "GET", None, 400, "invalid_parameter"),
        ("/api/conversations/conv-1/messages?limit=0", "GET", None, 400, "invalid_input"),
        ("/api/conversations/conv-1/messages", "POST", {"text": ""}, 400, "invalid_input"),
        ("/api/conversations/conv-1/messages", "POST", {"nothing": 1}, 400, "invalid_body"),
        ("/api/conversations/conv-1/messages", "POST",
         {"text": "x", "clientMessageId": "bad id"}, 400, "invalid_input"),
        ("/api/conversations/conv-1/messages", "POST",
         {"text": "x", "blocks": [{"type": "text", "text": "y"}]}, 400, "invalid_body"),
    ],
    ids=["unknown", "limit-text", "limit-zero", "empty", "no-text", "bad-client-id",
         "text-and-blocks"],
)
def test_messages_bad_requests(api_url, session, people, conversation, path, method, body,
                               status, code):
    response = httpx.request(method, f"{api_url}{path}", headers=auth_headers(session, people.alice),
                             json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_messages_need_membership(api_url, session, people, conversation):
    headers = auth_headers(session, people.carol)
    url = f"{api_url}/api/conversations/{conversation.id}/messages"
    assert httpx.get(url, headers=headers).status_code == 403
    response = httpx.post(url, headers=headers, json={"text": "let me in"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_lists_instances_and_conversations(api_url, session, people, instance, conversation):
    headers = auth_headers(session, people.bob)
    instances = httpx.get(f"{api_url}/api/instances", headers=headers).json()["instances"]
    assert instances == [{"id": instance.id, "label": "Sandbox", "ownerId": people.alice.id}]
    listed = httpx.get(f"{api_url}/api/conversations", headers=headers,
                       params={"instanceId": instance.id}).json()["conversations"]
    assert listed == [{"id": conversation.id, "title": "General", "instanceId": instance.id,
                       "unread": 0}]
    carol = auth_headers(session, people.carol)
    assert httpx.get(f"{api_url}/api/conversations", headers=carol).json() == {"conversations": []}


def test_read_endpoint_clears_one_conversation(api_url, session, people, conversation):
    alice, bob = auth_headers(session, people.alice), auth_headers(session, people.bob)
    url = f"{api_url}/api/conversations/{conversation.id}"
    for number in range(3):
        assert httpx.post(f"{url}/messages", headers=alice,
                          json={"text": f"m{number}"}).status_code == 201
    partial = httpx.post(f"{url}/read", headers=bob, json={"upToSeq": 1}).json()
    assert partial["conversations"][conversation.id] == 2
    assert partial["total"] == 2
    read_all = httpx.post(f"{url}/read", headers=bob)
    assert read_all.status_code == 200
    assert read_all.json()["total"] == 0
    bad = httpx.post(f"{url}/read", headers=bob, json={"upToSeq": "x"})
    assert bad.status_code == 400


def test_members_list_and_add(api_url, session, people, conversation):
    alice, carol = auth_headers(session, people.alice), auth_headers(session, people.carol)
    url = f"{api_url}/api/conversations/{conversation.id}/members"
    assert httpx.get(url, headers=carol).status_code == 403
    assert httpx.post(url, headers=carol, json={"username": "carol"}).status_code == 403
    added = httpx.post(url, headers=alice, json={"username": "carol"})
    assert added.status_code == 201
    assert added.json()["member"]["displayName"] == "Carol"
    again = httpx.post(url, headers=alice, json={"username": "carol"})
    assert again.status_code == 200
    assert again.json()["added"] is False
    names = [m["displayName"] for m in httpx.get(url, headers=carol).json()["members"]]
    assert "Carol" in names
    missing = httpx.post(url, headers=alice, json={"username": "nobody-here"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
