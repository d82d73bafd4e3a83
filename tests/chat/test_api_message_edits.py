"""Editing, deleting and typing over the HTTP API on a loopback socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kilo_web.chat import bots, service
from kilo_web.chat.content import text_blocks
from kilo_web.event_service.embedded import get_backplane
from tests.chat.conftest import auth_headers
from tests.chat.test_chat_fanout import RecordingPublisher

CONTEXT = "/kiloclaw/sandbox-1/conv-1"


class Published:
    """Events the process backplane delivered for ``CONTEXT``, from any thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, context: str, event: str, data: dict[str, Any]) -> None:
        if context == CONTEXT:
            with self._lock:
                self.events.append((event, data))

    def names(self) -> list[str]:
        with self._lock:
            return [event for event, _ in self.events]


@pytest.fixture
def published() -> Iterator[Published]:
    """Record what the API publishes to the conversation through the process backplane."""
    backplane = get_backplane()
    recorder = Published()
    remove = backplane.add_receiver(recorder)
    asyncio.run(backplane.watch(CONTEXT))
    yield recorder
    asyncio.run(backplane.unwatch(CONTEXT))
    remove()


@pytest.fixture
def bot_headers(session, people, instance) -> dict[str, str]:
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    _, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=None)
    return {"Authorization": f"Bearer {key}"}


def _post(session, sender, text="original") -> service.MessageView:
    return asyncio.run(service.post_message(
        session, conversation_id="conv-1", sender_id=sender.id, blocks=text_blocks(text),
        publisher=RecordingPublisher(),
    ))


def _message_url(api_url: str, message_id: int | str) -> str:
    return f"{api_url}/api/conversations/conv-1/messages/{message_id}"


# PATCH


def test_patch_message_returns_edited_message(api_url, session, people, conversation, published):
    posted = _post(session, people.bob)

    response = httpx.patch(_message_url(api_url, posted.id),
                           headers=auth_headers(session, people.bob), json={"content": "fixed"})

    assert response.status_code == 200
    message = response.json()["message"]
    assert message["id"] == posted.id
    assert message["blocks"] == [{"type": "text", "text": "fixed"}]
    assert message["editedAt"] is not None
    assert message["deletedAt"] is None
    assert published.names() == ["message.updated"]
    assert published.events[0][1]["editedAt"] == message["editedAt"]


def test_patch_message_accepts_blocks(api_url, session, people, conversation):
    posted = _post(session, people.bob)
    blocks = [{"type": "markdown", "text": "**now bold**"}]

    response = httpx.patch(_message_url(api_url, posted.id),
                           headers=auth_headers(session, people.bob), json={"content": blocks})

    assert response.status_code == 200
    assert response.json()["message"]["blocks"] == blocks


def test_patch_message_of_other_sender_is_403(api_url, session, people, conversation, published):
    posted = _post(session, people.bob)

    response = httpx.patch(_message_url(api_url, posted.id),
                           headers=auth_headers(session, people.alice), json={"content": "mine"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "only its sender may edit it" in response.json()["error"]["message"]
    assert published.names() == []


def test_patch_unknown_message_is_404(api_url, session, people, conversation):
    response = httpx.patch(_message_url(api_url, 999),
                           headers=auth_headers(session, people.bob), json={"content": "x"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "message 999 not found in conversation 'conv-1'" in response.json()["error"]["message"]


def test_patch_non_integer_message_id_is_400(api_url, session, people, conversation):
    response = httpx.patch(_message_url(api_url, "abc"),
                           headers=auth_headers(session, people.bob), json={"content": "x"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_patch_deleted_message_is_410(api_url, session, people, conversation):
    posted = _post(session, people.bob)
    headers = auth_headers(session, people.bob)
    assert httpx.delete(_message_url(api_url, posted.id), headers=headers).status_code == 200

    response = httpx.patch(_message_url(api_url, posted.id), headers=headers,
                           json={"content": "back"})

    assert response.status_code == 410
    assert response.json()["error"]["code"] == "message_deleted"


@pytest.mark.parametrize(
    ("body", "code"),
    [({}, "invalid_body"), ({"content": 5}, "invalid_body"), ({"content": " "}, "invalid_input"),
     ({"content": [{"type": "video"}]}, "invalid_input")],
    ids=["missing", "number", "blank", "bad-block"],
)
def test_patch_message_with_bad_body_is_400(api_url, session, people, conversation, body, code):
    posted = _post(session, people.bob)

    response = httpx.patch(_message_url(api_url, posted.id),
                           headers=auth_headers(session, people.bob), json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_patch_message_counts_against_send_limit(api_url, session, people, conversation):
    posted = _post(session, people.bob)
    headers = auth_headers(session, people.bob)
    url = _message_url(api_url, posted.id)

    statuses = [httpx.patch(url, headers=headers, json={"content": f"v{n}"}).status_code
                for n in range(21)]

    assert statuses == [200] * 20 + [429]
    refused = httpx.patch(url, headers=headers, json={"content": "one more"})
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1


def test_bot_patches_and_deletes_own_message(api_url, session, people, conversation, bot_headers):
    posted = _post(session, people.bot, "beep")

    edited = httpx.patch(_message_url(api_url, posted.id), headers=bot_headers,
                         json={"content": "boop"})
    deleted = httpx.delete(_message_url(api_url, posted.id), headers=bot_headers)

    assert edited.status_code == 200
    assert edited.json()["message"]["blocks"] == [{"type": "text", "text": "boop"}]
    assert deleted.status_code == 200
    assert deleted.json()["message"]["deletedAt"] is not None


def test_bot_patching_persons_message_is_403(api_url, session, people, conversation, bot_headers):
    posted = _post(session, people.alice)

    response = httpx.patch(_message_url(api_url, posted.id), headers=bot_headers,
                           json={"content": "bot was here"})

    assert response.status_code == 403


def test_get_on_message_path_is_405(api_url, session, people, conversation):
    posted = _post(session, people.bob)

    response = httpx.get(_message_url(api_url, posted.id), headers=auth_headers(session, people.bob))

    assert response.status_code == 405
    assert response.headers["Allow"] == "DELETE, PATCH"


# DELETE


def test_delete_twice_publishes_once(api_url, session, people,
                                                              conversation, published):
    posted = _post(session, people.bob, "oops")
    headers = auth_headers(session, people.bob)

    first = httpx.delete(_message_url(api_url, posted.id), headers=headers)
    second = httpx.delete(_message_url(api_url, posted.id), headers=headers)

    assert first.status_code == 200
    assert second.status_code == 200
    assert first.json()["message"]["blocks"] == []
    assert first.json()["message"]["deletedAt"] is not None
    assert second.json() == first.json()
    assert published.names() == ["message.deleted"]
    assert published.events[0][1]["deletedAt"] == first.json()["message"]["deletedAt"]


def test_delete_message_hides_content_in_history(api_url, session, people, conversation):
    posted = _post(session, people.bob, "secret")
    headers = auth_headers(session, people.bob)
    httpx.delete(_message_url(api_url, posted.id), headers=headers)

    history = httpx.get(f"{api_url}/api/conversations/conv-1/messages",
                        headers=auth_headers(session, people.alice)).json()["messages"]

    assert len(history) == 1
    assert history[0]["id"] == posted.id
    assert history[0]["blocks"] == []
    assert history[0]["deletedAt"] is not None
    assert "secret" not in str(history)


def test_delete_message_of_other_sender_is_403(api_url, session, people, conversation, published):
    posted = _post(session, people.bob)

    response = httpx.delete(_message_url(api_url, posted.id),
                            headers=auth_headers(session, people.alice))

    assert response.status_code == 403
    assert published.names() == []


def test_delete_message_by_non_member_is_403(api_url, session, people, conversation):
    posted = _post(session, people.bob)

    response = httpx.delete(_message_url(api_url, posted.id),
                            headers=auth_headers(session, people.carol))

    assert response.status_code == 403


def test_delete_unknown_message_is_404(api_url, session, people, conversation):
    response = httpx.delete(_message_url(api_url, 4242), headers=auth_headers(session, people.bob))

    assert response.status_code == 404


# POST typing


def test_post_typing_is_204_and_coalesced(api_url, session, people, conversation, published):
    url = f"{api_url}/api/conversations/conv-1/typing"
    headers = auth_headers(session, people.bob)

    first = httpx.post(url, headers=headers)
    second = httpx.post(url, headers=headers)
    other = httpx.post(url, headers=auth_headers(session, people.alice))

    assert [first.status_code, second.status_code, other.status_code] == [204, 204, 204]
    assert first.content == b""
    assert [data["userId"] for _, data in published.events] == [people.bob.id, people.alice.id]
    assert published.names() == ["typing", "typing"]


def test_post_typing_by_bot_is_204(api_url, session, people, conversation, bot_headers, published):
    response = httpx.post(f"{api_url}/api/conversations/conv-1/typing", headers=bot_headers)

    assert response.status_code == 204
    assert published.events == [("typing", {"conversationId": "conv-1",
                                            "userId": people.bot.id,
                                            "displayName": "Kilo Bot"})]


def test_post_typing_by_non_member_is_403(api_url, session, people, conversation, published):
    response = httpx.post(f"{api_url}/api/conversations/conv-1/typing",
                          headers=auth_headers(session, people.carol))

    assert response.status_code == 403
    assert published.names() == []


def test_post_typing_in_unknown_conversation_is_404(api_url, session, people, conversation):
    response = httpx.post(f"{api_url}/api/conversations/nowhere/typing",
                          headers=auth_headers(session, people.bob))

    assert response.status_code == 404


def test_post_typing_without_credentials_is_401(api_url, conversation):
    response = httpx.post(f"{api_url}/api/conversations/conv-1/typing")

    assert response.status_code == 401
