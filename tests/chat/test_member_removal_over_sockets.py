"""Removing a member over HTTP reaches SDK clients over real loopback sockets.

The HTTP API (uvicorn) and the event service run in the test's event loop
and share the process backplane, as in the Reflex backend.
"""

from __future__ import annotations

import httpx

from kilo_web.chat import service
from kilo_web.event_service.client import SUBSCRIBED
from kilo_web.event_service.contexts import kiloclaw_conversation_context, user_context
from tests.bots.conftest import ChatStack, Inbox
from tests.chat.conftest import auth_headers


async def _connected(stack: ChatStack, headers: dict[str, str], contexts: list[str]):
    inbox = Inbox()
    client = stack.person_client(headers, inbox)
    await client.subscribe(contexts)
    await client.connect()
    for context in contexts:
        await inbox.wait_for(lambda e, c=context: e.event == SUBSCRIBED and e.context == c,
                             description=f"subscription to {context}")
    return client, inbox


async def test_removed_member_stops_receiving_conversation(stack, session, people):
    random = service.create_conversation(session, instance_id=stack.instance.id, title="Random",
                                         creator_id=people.alice.id, member_ids=[people.bob.id])
    random_context = kiloclaw_conversation_context(stack.instance.id, random.id)
    bob_headers = auth_headers(session, people.bob)
    bob_context = user_context(people.bob.id)
    bob, bob_inbox = await _connected(
        stack, bob_headers, [bob_context, stack.conversation_context, random_context])
    alice, alice_inbox = await _connected(stack, stack.alice_headers, [stack.conversation_context])
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, headers=stack.alice_headers) as http:
            response = await http.delete(
                f"/api/conversations/{stack.conversation.id}/members/{people.bob.id}")
        assert response.status_code == 204

        revoked = await bob_inbox.wait_for(lambda e: e.event == "access.revoked",
                                           description="access.revoked")
        removed = await bob_inbox.wait_for(lambda e: e.event == "conversation.removed",
                                           description="conversation.removed")
        member_removed = await alice_inbox.wait_for(lambda e: e.event == "member.removed",
                                                    description="member.removed")
        assert revoked.context == bob_context
        assert stack.conversation_context in revoked.data["contexts"]
        assert removed.data == {"conversationId": stack.conversation.id,
                                "instanceId": stack.instance.id}
        assert member_removed.data == {"conversationId": stack.conversation.id,
                                       "instanceId": stack.instance.id,
                                       "userId": people.bob.id, "removedBy": people.alice.id}
        assert bob.counts == {bob_context: 1, random_context: 1}

        assert (await stack.post(stack.conversation.id, "after bob left")).status_code == 201
        assert (await stack.post(random.id, "still here")).status_code == 201
        await alice_inbox.wait_for(lambda e: e.event == "message.created",
                                   description="alice's message in General")
        await bob_inbox.wait_for(lambda e: e.event == "message.created",
                                 description="the message in Random")
        assert [m["conversationId"] for m in bob_inbox.messages()] == [random.id]
        assert not any(e.event == "member.removed" for e in bob_inbox.events)
    finally:
        await bob.close()
        await alice.close()
