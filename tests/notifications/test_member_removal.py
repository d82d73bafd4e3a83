"""Badges and pushes when a member leaves or is removed from a conversation."""

from __future__ import annotations

from kilo_web.chat import service
from kilo_web.event_service.contexts import user_context
from kilo_web.notifications.devices import register_expo_device
from tests.notifications.conftest import (
    TTL,
    RecordingPublisher,
    badge_of,
    buckets_of,
    expo_token,
    post,
)
from tests.notifications.push_servers import Fault


async def _remove(session, world, conversation_id, user_id, removed_by, publisher, notifications):
    return await service.remove_conversation_member(
        session, conversation_id=conversation_id, user_id=user_id, removed_by=removed_by,
        publisher=publisher, on_unread_change=notifications.on_unread_changed,
        dispatch_window=TTL,
    )


class _NoBadges:
    """A stand-in for the notifications service whose badge hook does nothing."""

    async def on_unread_changed(self, summary):
        return None


def _badge_pushes(expo_server, name):
    return [m["badge"] for m in expo_server.accepted_messages()
            if m["to"] == expo_token(name) and m["data"]["type"] == "badge"]


async def test_removal_lowers_badge_once(session, session_factory, world, notifications,
                                         publisher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    for conversation_id in (world.general, world.general, world.random):
        message_id = await post(session, world, conversation_id, world.alice)
        await notifications.dispatcher.send_push_for_conversation(message_id)
    assert badge_of(session_factory, world.bob) == 3
    publisher.events.clear()

    removed = await _remove(session, world, world.general, world.bob, world.alice, publisher,
                            notifications)
    await notifications.drain()
    again = await _remove(session, world, world.general, world.bob, world.alice, publisher,
                          notifications)
    await notifications.drain()

    assert (removed, again) == (True, False)
    assert badge_of(session_factory, world.bob) == 1
    assert buckets_of(session_factory, world.bob) == {"instance:sandbox-1": 1}
    assert _badge_pushes(expo_server, "bob") == [1]
    changes = publisher.for_context(user_context(world.bob), "unread.changed")
    assert changes == [{"userId": world.bob, "conversations": {world.random: 1},
                        "total": 1, "badge": 1}]


async def test_removal_without_unread_sends_no_badge_push(session, session_factory, world,
                                                          notifications, publisher, expo_server):
    register_expo_device(session, user_id=world.carol, token=expo_token("carol"))

    await _remove(session, world, world.random, world.carol, world.carol, publisher,
                  notifications)
    await notifications.drain()

    assert badge_of(session_factory, world.carol) == 0
    assert _badge_pushes(expo_server, "carol") == []


async def test_removed_member_gets_no_push(session, session_factory, world, notifications,
                                           publisher, expo_server):
    # alice, bob and the bot are in "General"; carol joins and is removed before bob posts.
    service.add_conversation_member(session, conversation_id=world.general, user_id=world.carol)
    for user_id, name in ((world.alice, "alice"), (world.bob, "bob"), (world.carol, "carol")):
        register_expo_device(session, user_id=user_id, token=expo_token(name))
    await _remove(session, world, world.general, world.carol, world.alice, publisher,
                  notifications)
    message_id = await post(session, world, world.general, world.bob, "hi all")

    report = await notifications.dispatcher.send_push_for_conversation(message_id)

    assert report.recipients == [world.alice]
    assert [m["to"] for m in expo_server.accepted_messages()] == [expo_token("alice")]
    assert badge_of(session_factory, world.carol) == 0
    assert badge_of(session_factory, world.bob) == 0


async def test_pending_push_of_removed_member_is_dropped(session, session_factory, world,
                                                         notifications, publisher, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.append(Fault(status=503))
    message_id = await post(session, world, world.general, world.alice)
    first = await notifications.dispatcher.send_push_for_conversation(message_id)
    assert first.failed == [world.bob]
    assert badge_of(session_factory, world.bob) == 1

    await _remove(session, world, world.general, world.bob, world.bob, publisher, notifications)
    await notifications.drain()
    [retry] = await notifications.dispatcher.resend_pending()

    assert retry.recipients == []
    assert badge_of(session_factory, world.bob) == 0
    message_pushes = [m for m in expo_server.accepted_messages() if m["data"]["type"] == "message"]
    assert message_pushes == []
    assert _badge_pushes(expo_server, "bob") == [0]


async def test_viewer_removed_before_dispatch_is_skipped(session, session_factory, world,
                                                         make_dispatcher, expo_server):
    register_expo_device(session, user_id=world.alice, token=expo_token("alice"))
    message_id = await post(session, world, world.general, world.bob)

    async def viewers(instance_id, conversation_id):
        # alice had the conversation open, then left it before the dispatch marked it read.
        await _remove(session, world, world.general, world.alice, world.alice,
                      RecordingPublisher(), _NoBadges())
        return {world.alice}

    report = await make_dispatcher(viewers=viewers).send_push_for_conversation(message_id)

    assert report.viewers_marked_read == [world.alice]
    assert report.delivered == []
    assert expo_server.accepted_messages() == []
    assert badge_of(session_factory, world.alice) == 0
