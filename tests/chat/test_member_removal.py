"""Removing conversation members and leaving: the service rules, the events and the HTTP API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from kilo_web.chat import bots, read_state, service
from kilo_web.chat.access import DatabaseAuthorizer
from kilo_web.chat.content import text_blocks
from kilo_web.chat.errors import (
    ConversationNotFoundError,
    NotAllowedError,
    UserNotFoundError,
)
from kilo_web.chat.models import ConversationReadState
from kilo_web.event_service.contexts import (
    kiloclaw_conversation_context,
    kiloclaw_conversation_presence_context,
    user_context,
)
from kilo_web.event_service.control import CONTROL_CONTEXT
from tests.chat.conftest import auth_headers


class Recorder:
    """A publisher that keeps every (context, event, data) in publish order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        self.events.append((context, event, data))

    def names(self) -> list[str]:
        return [event for _, event, _ in self.events]


async def _post(session, conversation_id: str, sender_id: int, text: str = "hi") -> None:
    await service.post_message(session, conversation_id=conversation_id, sender_id=sender_id,
                               blocks=text_blocks(text), publisher=Recorder())


async def _remove(session, conversation, user_id: int, removed_by: int,
                  publisher: Recorder | None = None) -> bool:
    return await service.remove_conversation_member(
        session, conversation_id=conversation.id, user_id=user_id, removed_by=removed_by,
        publisher=publisher or Recorder(),
    )


# Service rules


async def test_member_leaves_conversation(session, people, instance, conversation):
    removed = await _remove(session, conversation, people.bob.id, people.bob.id)

    assert removed is True
    assert not service.is_conversation_member(session, conversation.id, people.bob.id)
    assert service.is_instance_member(session, instance.id, people.bob.id)


async def test_owner_removes_other_member(session, people, conversation):
    removed = await _remove(session, conversation, people.bob.id, people.alice.id)

    assert removed is True
    assert not service.is_conversation_member(session, conversation.id, people.bob.id)


async def test_non_owner_cannot_remove_others(session, people, conversation):
    publisher = Recorder()

    with pytest.raises(NotAllowedError, match="only the owner of instance 'sandbox-1'"):
        await _remove(session, conversation, people.alice.id, people.bob.id, publisher)

    assert service.is_conversation_member(session, conversation.id, people.alice.id)
    assert publisher.events == []


async def test_removing_non_member_is_noop(session, people, conversation):
    publisher = Recorder()

    removed = await _remove(session, conversation, people.carol.id, people.alice.id, publisher)

    assert removed is False
    assert publisher.events == []


async def test_leaving_twice_is_noop(session, people, conversation):
    assert await _remove(session, conversation, people.bob.id, people.bob.id) is True
    publisher = Recorder()

    assert await _remove(session, conversation, people.bob.id, people.bob.id, publisher) is False
    assert publisher.events == []


async def test_instance_bot_cannot_be_removed(session, people, instance, conversation):
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)

    with pytest.raises(NotAllowedError, match="bot of instance 'sandbox-1'"):
        await _remove(session, conversation, people.bot.id, people.alice.id)
    with pytest.raises(NotAllowedError, match="bot of instance"):
        await _remove(session, conversation, people.bot.id, people.bot.id)

    assert service.is_conversation_member(session, conversation.id, people.bot.id)


async def test_removal_of_unknown_ids_raises(session, people, conversation):
    with pytest.raises(ConversationNotFoundError):
        await service.remove_conversation_member(
            session, conversation_id="no-such", user_id=people.bob.id,
            removed_by=people.alice.id, publisher=Recorder())
    with pytest.raises(UserNotFoundError):
        await _remove(session, conversation, 999_999, people.alice.id)


async def test_removal_publishes_revocation_then_events(session, people, instance, conversation):
    publisher = Recorder()

    await _remove(session, conversation, people.bob.id, people.alice.id, publisher)

    conversation_context = kiloclaw_conversation_context(instance.id, conversation.id)
    bob_context = user_context(people.bob.id)
    assert publisher.names() == [
        "access.revoked", "member.removed", "conversation.removed", "unread.changed",
    ]
    revoked, member_removed, conversation_removed, unread = publisher.events
    assert revoked == (CONTROL_CONTEXT, "access.revoked", {
        "userId": str(people.bob.id),
        "contexts": [conversation_context,
                     kiloclaw_conversation_presence_context(instance.id, conversation.id)],
    })
    assert member_removed == (conversation_context, "member.removed", {
        "conversationId": conversation.id, "instanceId": instance.id,
        "userId": people.bob.id, "removedBy": people.alice.id,
    })
    assert conversation_removed == (bob_context, "conversation.removed", {
        "conversationId": conversation.id, "instanceId": instance.id,
    })
    assert unread[0] == bob_context
    assert unread[2]["conversations"] == {}


async def test_publish_failure_keeps_removal(session, people, conversation):
    class Broken:
        async def publish(self, context, event, data):
            raise ConnectionError("backplane down")

    removed = await service.remove_conversation_member(
        session, conversation_id=conversation.id, user_id=people.bob.id,
        removed_by=people.bob.id, publisher=Broken())

    assert removed is True
    assert not service.is_conversation_member(session, conversation.id, people.bob.id)


# Read state and unread counts


async def test_removal_drops_unread_and_read_position(session, people, instance, conversation):
    random = service.create_conversation(session, instance_id=instance.id, title="Random",
                                         creator_id=people.alice.id, member_ids=[people.bob.id])
    for _ in range(3):
        await _post(session, conversation.id, people.alice.id)
    await _post(session, random.id, people.alice.id)
    await read_state.mark_read(session, conversation.id, people.bob.id, 1)

    await _remove(session, conversation, people.bob.id, people.bob.id)

    assert read_state.unread_counts(session, people.bob.id) == {random.id: 1}
    position = session.get(ConversationReadState, (conversation.id, people.bob.id))
    assert position is None


async def test_rejoined_member_counts_only_new_messages(session, people, conversation):
    await _post(session, conversation.id, people.alice.id, "before")
    await _remove(session, conversation, people.bob.id, people.bob.id)
    await _post(session, conversation.id, people.alice.id, "while away")

    service.add_conversation_member(session, conversation_id=conversation.id, user_id=people.bob.id)
    await _post(session, conversation.id, people.alice.id, "after")

    assert read_state.unread_counts(session, people.bob.id) == {conversation.id: 1}


async def test_removed_member_loses_event_service_access(engine, session, people, instance,
                                                         conversation):
    authorizer = DatabaseAuthorizer(engine)
    contexts = [kiloclaw_conversation_context(instance.id, conversation.id),
                kiloclaw_conversation_presence_context(instance.id, conversation.id)]
    assert await authorizer.forbidden_contexts(str(people.bob.id), contexts) == []

    await _remove(session, conversation, people.bob.id, people.bob.id)

    assert await authorizer.forbidden_contexts(str(people.bob.id), contexts) == contexts


# HTTP API


@pytest.fixture
def user_events(people):
    """Events the API publishes on bob's context, through the process backplane."""
    from kilo_web.event_service.embedded import get_backplane

    backplane = get_backplane()
    context = user_context(people.bob.id)
    events: list[tuple[str, dict]] = []
    remove = backplane.add_receiver(lambda ctx, event, data: events.append((event, data))
                                    if ctx == context else None)
    asyncio.run(backplane.watch(context))
    yield events
    asyncio.run(backplane.unwatch(context))
    remove()


def _members_url(api_url: str, conversation_id: str, user_id: object) -> str:
    return f"{api_url}/api/conversations/{conversation_id}/members/{user_id}"


def test_api_member_leaves(api_url, session, people, conversation, user_events):
    bob = auth_headers(session, people.bob)

    response = httpx.delete(_members_url(api_url, conversation.id, people.bob.id), headers=bob)

    assert response.status_code == 204
    assert response.content == b""
    assert [event for event, _ in user_events] == ["conversation.removed", "unread.changed"]
    listing = httpx.get(f"{api_url}/api/conversations/{conversation.id}/members", headers=bob)
    assert listing.status_code == 403


def test_api_leaving_again_is_204(api_url, session, people, conversation, user_events):
    bob = auth_headers(session, people.bob)
    url = _members_url(api_url, conversation.id, people.bob.id)

    assert httpx.delete(url, headers=bob).status_code == 204
    assert httpx.delete(url, headers=bob).status_code == 204
    assert [event for event, _ in user_events] == ["conversation.removed", "unread.changed"]


def test_api_owner_removes_member(api_url, session, people, conversation):
    alice = auth_headers(session, people.alice)

    response = httpx.delete(_members_url(api_url, conversation.id, people.bob.id), headers=alice)

    assert response.status_code == 204
    members = httpx.get(f"{api_url}/api/conversations/{conversation.id}/members", headers=alice)
    assert people.bob.id not in [m["id"] for m in members.json()["members"]]


def test_api_non_owner_removal_is_403(api_url, session, people, conversation):
    bob = auth_headers(session, people.bob)

    response = httpx.delete(_members_url(api_url, conversation.id, people.alice.id), headers=bob)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert "only the owner of instance 'sandbox-1' may remove other members" in error["message"]
    assert "every member may remove themselves" in error["message"]


def test_api_removal_errors(api_url, session, people, instance, conversation):
    alice = auth_headers(session, people.alice)
    bots.attach_bot(session, bot_id=people.bot.id, instance_id=instance.id)
    _, key = bots.create_api_key(session, bot_id=people.bot.id, created_by=people.alice.id)

    unknown_user = httpx.delete(_members_url(api_url, conversation.id, 999_999), headers=alice)
    not_an_integer = httpx.delete(_members_url(api_url, conversation.id, "bob"), headers=alice)
    unknown_conversation = httpx.delete(_members_url(api_url, "no-such", people.bob.id),
                                        headers=alice)
    instance_bot = httpx.delete(_members_url(api_url, conversation.id, people.bot.id),
                                headers=alice)
    bot_caller = httpx.delete(_members_url(api_url, conversation.id, people.bot.id),
                              headers={"Authorization": f"Bearer {key}"})
    anonymous = httpx.delete(_members_url(api_url, conversation.id, people.bob.id))

    assert (unknown_user.status_code, unknown_user.json()["error"]["code"]) == (404, "not_found")
    assert not_an_integer.status_code == 400
    assert "user_id 'bob' is not an integer" in not_an_integer.json()["error"]["message"]
    assert unknown_conversation.status_code == 404
    assert instance_bot.status_code == 403
    assert "bot of instance" in instance_bot.json()["error"]["message"]
    assert bot_caller.status_code == 403
    assert "bots may not remove members" in bot_caller.json()["error"]["message"]
    assert anonymous.status_code == 401
    rows = session.execute(sa.text("select count(*) from conversation_member")).scalar_one()
    assert rows == 3
