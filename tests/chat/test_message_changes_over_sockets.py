"""Edits, deletes and typing reach a subscribed SDK client over real loopback sockets.

The HTTP API (uvicorn) and the event service run in the test's event loop
and share the process backplane, as in the Reflex backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from kilo_web.event_service.client import SUBSCRIBED
from tests.bots.conftest import ChatStack, Inbox
from tests.chat.conftest import auth_headers


@pytest_asyncio.fixture
async def alice_inbox(stack) -> AsyncIterator[Inbox]:
    """alice's SDK client, subscribed to the conversation's context."""
    inbox = Inbox()
    client = stack.person_client(stack.alice_headers, inbox)
    await client.subscribe([stack.conversation_context])
    await client.connect()
    await inbox.wait_for(lambda e: e.event == SUBSCRIBED and e.context == stack.conversation_context,
                         description="alice's subscription")
    yield inbox
    await client.close()


async def _request(stack: ChatStack, headers: dict[str, str], method: str, path: str,
                   body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers) as http:
        response = await http.request(method, path, json=body)
    assert response.status_code < 300, response.text
    return response


async def test_subscriber_sees_edit_typing_and_delete(stack, session, people, alice_inbox):
    bob = auth_headers(session, people.bob)
    messages = "/api/conversations/conv-1/messages"
    posted = (await _request(stack, bob, "POST", messages, {"text": "helo"})).json()["message"]

    await _request(stack, bob, "POST", "/api/conversations/conv-1/typing")
    edited = (await _request(stack, bob, "PATCH", f"{messages}/{posted['id']}",
                             {"content": "hello"})).json()["message"]
    deleted = (await _request(stack, bob, "DELETE",
                              f"{messages}/{posted['id']}")).json()["message"]

    typing = await alice_inbox.wait_for(lambda e: e.event == "typing", description="typing")
    updated = await alice_inbox.wait_for(lambda e: e.event == "message.updated",
                                         description="message.updated")
    removed = await alice_inbox.wait_for(lambda e: e.event == "message.deleted",
                                         description="message.deleted")
    assert typing.context == stack.conversation_context
    assert typing.data == {"conversationId": "conv-1", "userId": people.bob.id,
                           "displayName": "Bob"}
    assert updated.context == stack.conversation_context
    assert updated.data == {key: value for key, value in edited.items() if key != "id"}
    assert updated.data["blocks"] == [{"type": "text", "text": "hello"}]
    assert updated.data["editedAt"] is not None
    assert removed.data == {
        "id": posted["id"], "messageId": posted["id"], "conversationId": "conv-1",
        "instanceId": "sandbox-1", "seq": posted["seq"], "deletedAt": deleted["deletedAt"],
    }
    names = [e.event for e in alice_inbox.events if e.event != SUBSCRIBED]
    assert names == ["message.created", "typing", "message.updated", "message.deleted"]


async def test_subscriber_gets_one_typing_per_interval(stack, session, people, alice_inbox):
    bob = auth_headers(session, people.bob)
    for _ in range(3):
        await _request(stack, bob, "POST", "/api/conversations/conv-1/typing")
    # Events of one context arrive in order, so once this message is in, any
    # further typing event would have arrived before it.
    await _request(stack, bob, "POST", "/api/conversations/conv-1/messages", {"text": "done"})

    await alice_inbox.wait_for(lambda e: e.event == "message.created",
                               description="message.created")

    assert [e.event for e in alice_inbox.events if e.event != SUBSCRIBED] == [
        "typing", "message.created",
    ]


async def test_repeated_delete_publishes_nothing_more(stack, session, people, alice_inbox):
    bob = auth_headers(session, people.bob)
    messages = "/api/conversations/conv-1/messages"
    first = (await _request(stack, bob, "POST", messages, {"text": "one"})).json()["message"]
    await _request(stack, bob, "DELETE", f"{messages}/{first['id']}")
    await _request(stack, bob, "DELETE", f"{messages}/{first['id']}")
    await _request(stack, bob, "POST", messages, {"text": "two"})

    await alice_inbox.wait_for(
        lambda e: e.event == "message.created" and e.data["blocks"][0]["text"] == "two",
        description="the second message",
    )

    assert [e.event for e in alice_inbox.events if e.event != SUBSCRIBED] == [
        "message.created", "message.deleted", "message.created",
    ]
