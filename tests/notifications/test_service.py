"""NotificationService: the hooks the app wires in, badge pushes after reads, and its lifespan."""

from __future__ import annotations

import dataclasses
import datetime
import logging

import pytest
import sqlalchemy as sa

from kilo_web.chat import read_state, service
from kilo_web.chat.content import text_blocks
from kilo_web.notifications.accounting import DispatchStep
from kilo_web.notifications.devices import list_devices, register_expo_device, register_webpush_device
from kilo_web.notifications.models import DeliveryState, DeviceKind, ExpoPushTicket, PushDelivery
from kilo_web.notifications.service import NotificationService, build_transports
from kilo_web.notifications.vapid import VapidKeyError
from kilo_web.settings import Settings
from tests.notifications.conftest import TTL, RecordingPublisher, badge_of, expo_token, wait_until
from tests.notifications.push_servers import Fault


@pytest.fixture
def make_service(session_factory, publisher, expo_transport, webpush_transport):
    services = []

    def build(**overrides):
        options = {
            "session_factory": session_factory,
            "transports": {DeviceKind.EXPO: expo_transport, DeviceKind.WEBPUSH: webpush_transport},
            "window": TTL,
            "publisher": publisher,
            "max_attempts": 2,
            "retry_base_seconds": 0.0,
            "receipt_delay": datetime.timedelta(0),
        }
        options.update(overrides)
        built = NotificationService(**options)
        services.append(built)
        return built

    return build


def _register_browser(session, webpush_server, user_id):
    subscription = webpush_server.subscribe()
    register_webpush_device(
        session, user_id=user_id, endpoint=subscription.endpoint, p256dh=subscription.p256dh,
        auth=subscription.auth, allowed_origins=[webpush_server.origin],
    )
    return subscription


async def _post(session, conversation_id, sender_id, notifications, text="hello"):
    return await service.post_message(
        session, conversation_id=conversation_id, sender_id=sender_id,
        blocks=text_blocks(text), publisher=RecordingPublisher(),
        after_publish=notifications.after_publish,
    )


async def test_post_returns_before_push_is_sent(session, session_factory, world, make_service, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.append(Fault(stall=True))
    notifications = make_service(max_attempts=1)

    view = await _post(session, world.general, world.alice, notifications)

    # The provider is stalling, yet the message is already posted and committed.
    assert view.seq == 1
    await notifications.drain()
    expo_server.release_stalled()
    with session_factory() as check:
        state = check.execute(sa.select(PushDelivery.state)).scalar_one()
    assert state == DeliveryState.PENDING.value


async def test_dispatch_failure_is_logged_not_raised(session, world, make_service, caplog):
    def crash(step, message_id, recipient_id):
        if step is DispatchStep.AFTER_INCREMENT:
            raise RuntimeError("database went away")

    notifications = make_service(checkpoint=crash)

    with caplog.at_level(logging.ERROR, logger="kilo_web.notifications.service"):
        view = await _post(session, world.general, world.alice, notifications)
        await notifications.drain()

    assert view.id is not None
    assert f"push dispatch of message {view.id} failed" in caplog.text


async def test_reading_lowers_badge_on_other_devices(session, session_factory, world, make_service, expo_server, webpush_server, publisher):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-phone"))
    browser = _register_browser(session, webpush_server, world.bob)
    notifications = make_service()
    for conversation_id in (world.general, world.general, world.random):
        await _post(session, conversation_id, world.alice, notifications)
    await notifications.drain()
    assert badge_of(session_factory, world.bob) == 3

    with session_factory() as reader:
        result = await read_state.mark_read(
            reader, world.general, world.bob, publisher=publisher,
            on_change=notifications.on_unread_changed, dispatch_window=TTL,
        )
    await notifications.drain()

    assert result.summary.badge == 1
    assert result.summary.total == 1
    phone_badges = [m for m in expo_server.accepted_messages() if m["data"]["type"] == "badge"]
    assert phone_badges == [{"to": expo_token("bob-phone"), "badge": 1, "data": {"type": "badge"},
                             "priority": "normal"}]
    browser_badges = [p for p in webpush_server.payloads_for(browser) if p["data"]["type"] == "badge"]
    assert browser_badges == [{"badge": 1, "data": {"type": "badge"}}]


async def test_read_without_badge_change_sends_no_push(session, session_factory, world, make_service, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-phone"))
    notifications = make_service()
    await _post(session, world.general, world.bob, notifications)
    await notifications.drain()

    with session_factory() as reader:
        await read_state.mark_read(reader, world.general, world.alice,
                                   on_change=notifications.on_unread_changed, dispatch_window=TTL)
    await notifications.drain()

    assert [m for m in expo_server.accepted_messages() if m["data"]["type"] == "badge"] == []


async def test_mark_all_read_sends_zero_badge(session, session_factory, world, make_service, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-phone"))
    notifications = make_service()
    await _post(session, world.general, world.alice, notifications)
    await _post(session, world.random, world.carol, notifications)
    await notifications.drain()

    with session_factory() as reader:
        await read_state.mark_all_read(reader, world.bob, on_change=notifications.on_unread_changed,
                                       dispatch_window=TTL)
    await notifications.drain()

    badge_pushes = [m["badge"] for m in expo_server.accepted_messages() if m["data"]["type"] == "badge"]
    assert badge_pushes == [0]
    assert badge_of(session_factory, world.bob) == 0


async def test_lifespan_resends_pending_pushes(session, session_factory, world, make_service, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob"))
    expo_server.faults.extend([Fault(status=503), Fault(status=503)])
    first_process = make_service()
    await _post(session, world.general, world.alice, first_process)
    await first_process.drain()
    assert expo_server.accepted_messages() == []

    second_process = make_service()
    async with second_process.lifespan():
        await wait_until(lambda: len(expo_server.accepted_messages()) == 1, message="resent push")
        await second_process.drain()

    assert [m["badge"] for m in expo_server.accepted_messages()] == [1]
    with session_factory() as check:
        assert check.execute(sa.select(PushDelivery.state)).scalar_one() == DeliveryState.DELIVERED.value


async def test_receipts_deactivate_unregistered_tokens(session, session_factory, world, make_service, expo_server):
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-old"))
    register_expo_device(session, user_id=world.bob, token=expo_token("bob-new"))
    expo_server.unregistered_in_receipt.add(expo_token("bob-old"))
    notifications = make_service()
    await _post(session, world.general, world.alice, notifications)
    await notifications.drain()
    with session_factory() as check:
        assert len(check.execute(sa.select(ExpoPushTicket)).all()) == 2

    fetched = await notifications.check_expo_receipts()

    assert fetched == 2
    with session_factory() as check:
        assert [d.address for d in list_devices(check, world.bob)] == [expo_token("bob-new")]
        assert check.execute(sa.select(ExpoPushTicket)).all() == []


def _settings(tmp_path, **changes):
    base = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/x.db", jwt_secret="s" * 40)
    return dataclasses.replace(base, **changes)


def test_transports_built_from_settings(tmp_path, vapid_key_path):
    settings = _settings(tmp_path, vapid_private_key_file=vapid_key_path)

    transports = build_transports(settings)

    assert set(transports) == {DeviceKind.EXPO, DeviceKind.WEBPUSH}
    assert build_transports(_settings(tmp_path, push_transports=())) == {}


def test_unknown_transport_rejected(tmp_path):
    with pytest.raises(ValueError, match="apns"):
        build_transports(_settings(tmp_path, push_transports=("apns",)))


def test_webpush_without_vapid_key_rejected(tmp_path):
    with pytest.raises(VapidKeyError):
        build_transports(_settings(tmp_path, push_transports=("webpush",)))
