"""Recipients, viewers, payloads and delivery of message pushes (PushDispatcher)."""

from __future__ import annotations

import sqlalchemy as sa

from kilo_web.chat import read_state, service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.models import ConversationMember, Instance
from kilo_web.event_service.contexts import user_context
from kilo_web.notifications.badges import instance_bucket
from kilo_web.notifications.devices import list_devices, register_expo_device, register_webpush_device
from kilo_web.notifications.models import DeliveryState, PushDelivery
from tests.notifications.conftest import badge_of, buckets_of, expo_token, post, viewers_from


def _register_phone(session, user_id, name):
    return register_expo_device(session, user_id=user_id, token=expo_token(name))


def _deliveries(session_factory):
    with session_factory() as session:
        rows = session.execute(
            sa.select(PushDelivery.message_id, PushDelivery.recipient_id, PushDelivery.state)
        ).all()
    return {(m, r): s for m, r, s in rows}


async def test_recipients_exclude_sender_bot_and_removed(session, session_factory, world, make_dispatcher, expo_server):
    # W (carol) was removed from the conversation just before U (alice) posts.
    service.add_conversation_member(session, conversation_id=world.general, user_id=world.carol)
    session.execute(
        sa.delete(ConversationMember).where(
            ConversationMember.conversation_id == world.general,
            ConversationMember.user_id == world.carol,
        )
    )
    session.commit()
    for user_id, name in ((world.alice, "alice"), (world.bob, "bob"), (world.carol, "carol")):
        _register_phone(session, user_id, name)
    message_id = await post(session, world, world.general, world.alice, "hi all")

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.recipients == [world.bob]
    assert report.delivered == [world.bob]
    assert [m["to"] for m in expo_server.accepted_messages()] == [expo_token("bob")]
    assert badge_of(session_factory, world.alice) == 0
    assert badge_of(session_factory, world.bob) == 1
    assert badge_of(session_factory, world.carol) == 0
    assert badge_of(session_factory, world.bot) == 0


async def test_push_payload_title_body_and_sender(session, world, make_dispatcher, expo_server):
    _register_phone(session, world.bob, "bob")
    message_id = await post(session, world, world.general, world.alice, "See you at noon")

    await make_dispatcher().send_push_for_conversation(message_id)

    [message] = expo_server.accepted_messages()
    assert message["title"] == "Sandbox · General"
    assert message["body"] == "See you at noon"
    assert message["badge"] == 1
    assert message["data"]["senderUserId"] == world.alice
    assert message["data"]["messageId"] == message_id
    assert message["data"]["conversationId"] == world.general
    assert message["data"]["instanceId"] == world.instance_id


async def test_bot_sender_has_null_sender_id(session, world, make_dispatcher, expo_server):
    _register_phone(session, world.alice, "alice")
    _register_phone(session, world.bob, "bob")
    message_id = await post(session, world, world.general, world.bot, "beep")

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.recipients == [world.alice, world.bob]
    messages = expo_server.accepted_messages()
    assert len(messages) == 2
    assert all(m["data"]["senderUserId"] is None for m in messages)


async def test_no_push_without_human_recipients(session, session_factory, world, make_dispatcher, expo_server):
    conversation = service.create_conversation(
        session, instance_id=world.instance_id, title="Solo", creator_id=world.alice,
        member_ids=[world.bot], conversation_id="solo",
    )
    message_id = await post(session, world, conversation.id, world.alice)

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.skipped_reason == "no human recipients"
    assert expo_server.request_count == 0
    assert _deliveries(session_factory) == {}


async def test_no_push_when_instance_is_gone(session, session_factory, world, make_dispatcher, expo_server):
    _register_phone(session, world.bob, "bob")
    message_id = await post(session, world, world.general, world.alice)
    session.execute(sa.delete(Instance).where(Instance.id == world.instance_id))
    session.commit()

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.skipped_reason is not None
    assert expo_server.request_count == 0


async def test_viewer_gets_no_push_and_no_unread(session, session_factory, world, make_dispatcher, expo_server, publisher):
    _register_phone(session, world.alice, "alice")
    _register_phone(session, world.bob, "bob")
    dispatcher = make_dispatcher(viewers=viewers_from({world.general: {world.bob}}))
    message_id = await post(session, world, world.general, world.bot, "status update")

    report = await dispatcher.send_push_for_conversation(message_id)

    assert report.viewers_marked_read == [world.bob]
    assert [m["to"] for m in expo_server.accepted_messages()] == [expo_token("alice")]
    with session_factory() as check:
        assert read_state.unread_counts(check, world.bob)[world.general] == 0
        assert read_state.read_position(check, world.general, world.bob) == 1
        assert read_state.unread_counts(check, world.alice)[world.general] == 1
    assert badge_of(session_factory, world.bob) == 0
    assert badge_of(session_factory, world.alice) == 1
    bob_events = publisher.for_context(user_context(world.bob), read_state.UNREAD_CHANGED_EVENT)
    assert bob_events[-1]["total"] == 0


async def test_failing_viewer_lookup_pushes_everyone(session, world, make_dispatcher, expo_server):
    async def broken_viewers(instance_id, conversation_id):
        raise ConnectionError("presence unavailable")

    _register_phone(session, world.bob, "bob")
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher(viewers=broken_viewers).send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]


async def test_recipient_gets_unread_changed_event(session, world, make_dispatcher, publisher):
    message_id = await post(session, world, world.general, world.alice)

    await make_dispatcher().send_push_for_conversation(message_id)

    [event] = publisher.for_context(user_context(world.bob), read_state.UNREAD_CHANGED_EVENT)
    assert event == {
        "userId": world.bob,
        "conversations": {world.general: 1, world.random: 0},
        "total": 1,
        "badge": 1,
    }


async def test_badge_is_absolute_across_conversations(session, session_factory, world, make_dispatcher, expo_server):
    _register_phone(session, world.bob, "bob")
    dispatcher = make_dispatcher()
    for conversation_id in (world.general, world.random, world.general):
        message_id = await post(session, world, conversation_id, world.alice)
        await dispatcher.send_push_for_conversation(message_id)

    assert [m["badge"] for m in expo_server.accepted_messages()] == [1, 2, 3]
    assert buckets_of(session_factory, world.bob) == {instance_bucket(world.instance_id): 3}
    with session_factory() as check:
        assert read_state.unread_total(check, world.bob) == 3


async def test_recipient_without_devices_is_counted(session, session_factory, world, make_dispatcher):
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    assert badge_of(session_factory, world.bob) == 1
    assert _deliveries(session_factory) == {(message_id, world.bob): DeliveryState.DELIVERED.value}


async def test_push_reaches_expo_and_webpush_devices(session, world, make_dispatcher, expo_server, webpush_server):
    _register_phone(session, world.bob, "bob")
    subscription = webpush_server.subscribe()
    register_webpush_device(
        session, user_id=world.bob, endpoint=subscription.endpoint,
        p256dh=subscription.p256dh, auth=subscription.auth,
        allowed_origins=[webpush_server.origin],
    )
    message_id = await post(session, world, world.general, world.alice, "two devices")

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    [payload] = webpush_server.payloads_for(subscription)
    assert payload["title"] == "Sandbox · General"
    assert payload["body"] == "two devices"
    assert payload["badge"] == 1
    assert payload["data"]["messageId"] == message_id
    assert webpush_server.errors == []
    assert len(expo_server.accepted_messages()) == 1


async def test_unregistered_expo_token_is_deactivated(session, session_factory, world, make_dispatcher, expo_server):
    _register_phone(session, world.bob, "bob-old")
    _register_phone(session, world.bob, "bob-new")
    expo_server.unregistered.add(expo_token("bob-old"))
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    with session_factory() as check:
        active = [d.address for d in list_devices(check, world.bob)]
        everything = list_devices(check, world.bob, include_inactive=True)
    assert active == [expo_token("bob-new")]
    assert len(everything) == 2


async def test_gone_webpush_subscription_is_removed(session, session_factory, world, make_dispatcher, webpush_server):
    for status in (404, 410):
        subscription = webpush_server.subscribe()
        webpush_server.gone[subscription.id] = status
        register_webpush_device(
            session, user_id=world.bob, endpoint=subscription.endpoint,
            p256dh=subscription.p256dh, auth=subscription.auth,
            allowed_origins=[webpush_server.origin],
        )
    message_id = await post(session, world, world.general, world.alice)

    report = await make_dispatcher().send_push_for_conversation(message_id)

    assert report.delivered == [world.bob]
    with session_factory() as check:
        assert list_devices(check, world.bob, include_inactive=True) == []


async def test_post_message_hook_runs_after_publish(session, world):
    calls = []

    class OrderPublisher:
        async def publish(self, context, event, data):
            calls.append("publish")

    def hook(view):
        calls.append(("hook", view.id))
        raise RuntimeError("a broken hook must not fail the send")

    view = await service.post_message(
        session, conversation_id=world.general, sender_id=world.alice,
        blocks=text_blocks("x"), publisher=OrderPublisher(), after_publish=hook,
    )

    assert calls == ["publish", ("hook", view.id)]


async def test_viewer_badge_drop_reaches_devices(session, session_factory, world, make_dispatcher, expo_server):
    _register_phone(session, world.bob, "bob")
    first = await post(session, world, world.general, world.alice, "before bob opened it")
    await make_dispatcher().send_push_for_conversation(first)
    second = await post(session, world, world.general, world.alice, "while bob reads")

    await make_dispatcher(viewers=viewers_from({world.general: {world.bob}})).send_push_for_conversation(second)

    assert badge_of(session_factory, world.bob) == 0
    badge_pushes = [m for m in expo_server.accepted_messages() if m["data"]["type"] == "badge"]
    assert [m["badge"] for m in badge_pushes] == [0]


async def test_unclaimed_messages_dispatch_after_a_crash(session, session_factory, world,
                                                        make_dispatcher, expo_server):
    import datetime

    _register_phone(session, world.bob, "bob")
    # Stored, then the process died before the dispatch claimed anyone: no record.
    lost = service.create_message(session, conversation_id=world.general, sender_id=world.alice,
                                  blocks=text_blocks("lost in the crash")).id
    dispatched = await post(session, world, world.general, world.alice, "dispatched")
    dispatcher = make_dispatcher()
    await dispatcher.send_push_for_conversation(dispatched)
    assert badge_of(session_factory, world.bob) == 1

    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=15)
    reports = await dispatcher.dispatch_unclaimed(since)
    again = await dispatcher.dispatch_unclaimed(since)

    assert [report.message_id for report in reports] == [lost]
    assert again == []
    with session_factory() as check:
        assert badge_of(session_factory, world.bob) == read_state.unread_summary(check,
                                                                                world.bob).total
    assert badge_of(session_factory, world.bob) == 2
    assert [m["body"] for m in expo_server.accepted_messages()][-1] == "lost in the crash"
