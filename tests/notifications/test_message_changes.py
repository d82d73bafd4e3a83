"""Edits, deletes and typing events leave unread counts, badges and pushes alone.

Only ``post_message`` calls the notifications service's ``after_publish``
hook, so nothing here starts a dispatch. A message deleted before its
dispatch still counts as unread, and its recipients get a count-only push.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from kilo_web.chat import read_state, service
from kilo_web.chat.content import text_blocks
from kilo_web.notifications.devices import register_expo_device, register_webpush_device
from kilo_web.notifications.models import PushDelivery
from tests.notifications.conftest import (
    TTL,
    RecordingPublisher,
    badge_of,
    buckets_of,
    expo_token,
)


@pytest.fixture
def bob_browser(session, world, webpush_server):
    subscription = webpush_server.subscribe()
    register_webpush_device(
        session, user_id=world.bob, endpoint=subscription.endpoint, p256dh=subscription.p256dh,
        auth=subscription.auth, allowed_origins=[webpush_server.origin],
    )
    return subscription


async def _post(session, world, text, notifications=None):
    return await service.post_message(
        session, conversation_id=world.general, sender_id=world.alice, blocks=text_blocks(text),
        publisher=RecordingPublisher(),
        after_publish=notifications.after_publish if notifications is not None else None,
    )


def _delivery_rows(session_factory) -> list[tuple]:
    with session_factory() as check:
        return [tuple(row) for row in check.execute(
            sa.select(PushDelivery.message_id, PushDelivery.recipient_id, PushDelivery.state,
                      PushDelivery.badge).order_by(PushDelivery.id)
        ).all()]


async def test_changes_leave_badges_and_pushes(
    session, session_factory, world, notifications, publisher, expo_server, webpush_server,
    bob_browser,
):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-phone"))
    first = await _post(session, world, "first", notifications)
    second = await _post(session, world, "second", notifications)
    await notifications.drain()
    badge_before = badge_of(session_factory, world.bob)
    buckets_before = buckets_of(session_factory, world.bob)
    unread_before = read_state.unread_summary(session, world.bob)
    deliveries_before = _delivery_rows(session_factory)
    expo_before = len(expo_server.accepted_messages())
    browser_before = len(webpush_server.payloads_for(bob_browser))
    unread_events_before = list(publisher.events)
    assert badge_before == 2
    assert unread_before.counts[world.general] == 2
    assert expo_before == 2
    assert browser_before == 2

    chat_events = RecordingPublisher()
    await service.edit_message(session, conversation_id=world.general, message_id=first.id,
                               user_id=world.alice, content="first, edited",
                               publisher=chat_events)
    await service.delete_message(session, conversation_id=world.general, message_id=second.id,
                                 user_id=world.alice, publisher=chat_events)
    for user_id in (world.alice, world.bob):
        await service.publish_typing(session, conversation_id=world.general, user_id=user_id,
                                     publisher=chat_events)
    await notifications.drain()

    assert [event for _, event, _ in chat_events.events] == [
        "message.updated", "message.deleted", "typing", "typing",
    ]
    assert badge_of(session_factory, world.bob) == badge_before
    assert buckets_of(session_factory, world.bob) == buckets_before
    unread_after = read_state.unread_summary(session, world.bob)
    assert unread_after.counts == unread_before.counts
    assert unread_after.total == unread_before.total
    assert unread_after.badge == unread_before.badge
    assert read_state.unread_summary(session, world.alice).total == 0
    assert _delivery_rows(session_factory) == deliveries_before
    assert len(expo_server.accepted_messages()) == expo_before
    assert len(webpush_server.payloads_for(bob_browser)) == browser_before
    assert publisher.events == unread_events_before


async def test_deleted_unread_message_counts_until_read(session, session_factory, world,
                                                        notifications, publisher):
    posted = await _post(session, world, "gone soon", notifications)
    await notifications.drain()

    await service.delete_message(session, conversation_id=world.general, message_id=posted.id,
                                 user_id=world.alice, publisher=RecordingPublisher())

    assert read_state.unread_counts(session, world.bob)[world.general] == 1
    assert badge_of(session_factory, world.bob) == 1
    with session_factory() as reader:
        result = await read_state.mark_read(reader, world.general, world.bob,
                                            publisher=publisher, dispatch_window=TTL)
    assert result.summary.counts[world.general] == 0
    assert result.summary.badge == 0
    assert badge_of(session_factory, world.bob) == 0


async def test_deleted_before_dispatch_pushes_count_only(
    session, session_factory, world, notifications, expo_server, webpush_server, bob_browser,
):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-phone"))
    posted = await _post(session, world, "regret this")
    await service.delete_message(session, conversation_id=world.general, message_id=posted.id,
                                 user_id=world.alice, publisher=RecordingPublisher())

    report = await notifications.dispatcher.send_push_for_conversation(posted.id)

    assert report.counted == [world.bob]
    assert report.delivered == [world.bob]
    assert badge_of(session_factory, world.bob) == 1
    assert expo_server.accepted_messages() == [{
        "to": expo_token("bob-phone"), "badge": 1, "data": {"type": "badge"},
        "priority": "normal",
    }]
    assert webpush_server.payloads_for(bob_browser) == [{"badge": 1, "data": {"type": "badge"}}]
    assert "regret" not in str(expo_server.accepted_messages())
    assert "regret" not in str(webpush_server.payloads_for(bob_browser))


async def test_edited_before_dispatch_pushes_new_text(session, world, notifications,
                                                                 expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-phone"))
    posted = await _post(session, world, "teh typo")
    await service.edit_message(session, conversation_id=world.general, message_id=posted.id,
                               user_id=world.alice, content="the typo",
                               publisher=RecordingPublisher())

    await notifications.dispatcher.send_push_for_conversation(posted.id)

    [push] = expo_server.accepted_messages()
    assert push["body"] == "the typo"
    assert push["badge"] == 1
