"""Expo and Web Push transports against loopback servers that follow each provider's contract."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kilo_web.notifications.devices import DeviceView
from kilo_web.notifications.expo import ExpoTransport, RateLimiter
from kilo_web.notifications.models import DeviceKind
from kilo_web.notifications.transport import OutcomeKind, PushNotification
from kilo_web.notifications.webpush import WebPushTransport
from tests.notifications.conftest import CLIENT_TIMEOUT, ManualClock, expo_token, wait_until
from tests.notifications.push_servers import Fault, WebPushServer


def _expo_device(index: int) -> DeviceView:
    return DeviceView(id=index, user_id=1, kind=DeviceKind.EXPO, address=expo_token(f"t{index}"),
                      p256dh=None, auth=None, active=True)


def _webpush_device(subscription, device_id: int = 1) -> DeviceView:
    return DeviceView(id=device_id, user_id=1, kind=DeviceKind.WEBPUSH, address=subscription.endpoint,
                      p256dh=subscription.p256dh, auth=subscription.auth, active=True)


def _alert(device: DeviceView, badge: int = 1) -> PushNotification:
    return PushNotification(device=device, badge=badge, title="Sandbox · General", body="hi",
                            data={"type": "message", "messageId": 7}, topic="m7")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Expo


async def test_expo_sends_batches_of_100(expo_server, expo_transport):
    notifications = [_alert(_expo_device(i)) for i in range(250)]

    outcomes = await expo_transport.send(notifications)

    assert [len(send.messages) for send in expo_server.sends] == [100, 100, 50]
    assert all(o.kind is OutcomeKind.ACCEPTED for o in outcomes)
    assert [o.notification for o in outcomes] == notifications
    assert len({o.receipt_id for o in outcomes}) == 250


async def test_expo_message_shape(expo_server, expo_transport):
    device = _expo_device(1)
    alert = _alert(device, badge=4)
    count_only = PushNotification(device=device, badge=3, data={"type": "badge"})

    await expo_transport.send([alert, count_only])

    first, second = expo_server.accepted_messages()
    assert first == {"to": device.address, "badge": 4, "data": {"type": "message", "messageId": 7},
                     "title": "Sandbox · General", "body": "hi", "sound": "default", "priority": "high"}
    assert second == {"to": device.address, "badge": 3, "data": {"type": "badge"}, "priority": "normal"}


async def test_expo_access_token_sent_as_bearer(expo_server):
    transport = ExpoTransport(api_url=expo_server.api_url, timeout=CLIENT_TIMEOUT, access_token="secret-token")
    try:
        await transport.send([_alert(_expo_device(1))])
    finally:
        await transport.aclose()

    assert expo_server.sends[0].authorization == "Bearer secret-token"


async def test_expo_rate_limit_600_per_second(expo_server):
    clock = ManualClock()
    transport = ExpoTransport(api_url=expo_server.api_url, timeout=5.0,
                              rate_limiter=RateLimiter(600, clock=clock))
    notifications = [_alert(_expo_device(i)) for i in range(1300)]
    try:
        sending = asyncio.create_task(transport.send(notifications))
        await wait_until(lambda: expo_server.request_count == 6 and clock.sleeping == 1,
                         message="first second's six batches")
        assert expo_server.request_count == 6

        clock.advance(1.0)
        await wait_until(lambda: expo_server.request_count == 12 and clock.sleeping == 1,
                         message="second second's six batches")
        assert expo_server.request_count == 12

        clock.advance(1.0)
        outcomes = await asyncio.wait_for(sending, timeout=10)
    finally:
        await transport.aclose()

    assert len(outcomes) == 1300
    assert expo_server.request_count == 13


def test_rate_limiter_rejects_oversized_batch():
    limiter = RateLimiter(10)

    with pytest.raises(ValueError):
        asyncio.run(limiter.acquire(11))


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault(status=500), OutcomeKind.TRANSIENT),
    (Fault(status=503, retry_after="30"), OutcomeKind.TRANSIENT),
    (Fault(status=429), OutcomeKind.TRANSIENT),
    (Fault(status=400), OutcomeKind.REJECTED),
    (Fault(status=401), OutcomeKind.REJECTED),
    (Fault(stall=True), OutcomeKind.TRANSIENT),
])
async def test_expo_request_failures_classified(expo_server, expo_transport, fault, kind):
    expo_server.faults.append(fault)

    [outcome] = await expo_transport.send([_alert(_expo_device(1))])

    assert outcome.kind is kind
    assert outcome.detail


async def test_expo_unreachable_is_transient():
    transport = ExpoTransport(api_url=f"http://127.0.0.1:{_free_port()}/--/api/v2", timeout=CLIENT_TIMEOUT)
    try:
        [outcome] = await transport.send([_alert(_expo_device(1))])
    finally:
        await transport.aclose()

    assert outcome.kind is OutcomeKind.TRANSIENT


async def test_expo_device_not_registered_ticket(expo_server, expo_transport):
    expo_server.unregistered.add(expo_token("t2"))

    outcomes = await expo_transport.send([_alert(_expo_device(1)), _alert(_expo_device(2))])

    assert [o.kind for o in outcomes] == [OutcomeKind.ACCEPTED, OutcomeKind.DEVICE_GONE]
    assert "DeviceNotRegistered" in outcomes[1].detail
    # Expo's message names the token; the detail is logged, so the token is redacted.
    assert expo_token("t2") not in outcomes[1].detail


async def test_expo_receipts_fetched_in_batches(expo_server, expo_transport):
    expo_server.unregistered_in_receipt.add(expo_token("t3"))
    outcomes = await expo_transport.send([_alert(_expo_device(i)) for i in range(650)])
    ids = [o.receipt_id for o in outcomes]

    receipts = await expo_transport.fetch_receipts(ids)

    assert [len(batch) for batch in expo_server.receipt_requests] == [300, 300, 50]
    assert len(receipts) == 650
    assert receipts[ids[3]]["details"]["error"] == "DeviceNotRegistered"
    assert receipts[ids[4]] == {"status": "ok"}


# Web Push


async def test_webpush_payload_is_encrypted_and_signed(webpush_server, webpush_transport):
    subscription = webpush_server.subscribe()

    [outcome] = await webpush_transport.send([_alert(_webpush_device(subscription), badge=5)])

    assert outcome.kind is OutcomeKind.ACCEPTED
    assert webpush_server.errors == []
    [delivery] = webpush_server.deliveries
    assert delivery.payload == {"badge": 5, "data": {"type": "message", "messageId": 7},
                                "title": "Sandbox · General", "body": "hi"}
    assert delivery.vapid_claims["sub"] == "mailto:push-test@example.com"
    assert delivery.vapid_claims["aud"] == webpush_server.origin
    assert delivery.headers["ttl"] == "60"
    assert delivery.headers["urgency"] == "high"
    assert delivery.headers["topic"] == "m7"


async def test_webpush_claims_fresh_per_push_service(webpush_server, webpush_transport):
    other_server = WebPushServer()
    other_server.start()
    try:
        first = webpush_server.subscribe()
        second = other_server.subscribe()

        outcomes = await webpush_transport.send(
            [_alert(_webpush_device(first, 1)), _alert(_webpush_device(second, 2))]
        )
        again = await webpush_transport.send([_alert(_webpush_device(second, 2))])
    finally:
        other_server.stop()

    # Each push service checks that the JWT audience is its own origin.
    assert [o.kind for o in outcomes + again] == [OutcomeKind.ACCEPTED] * 3
    assert webpush_server.errors == []
    assert other_server.errors == []


async def test_webpush_count_only_payload(webpush_server, webpush_transport):
    subscription = webpush_server.subscribe()
    count_only = PushNotification(device=_webpush_device(subscription), badge=2,
                                  data={"type": "badge"}, topic="badge")

    await webpush_transport.send([count_only])

    [delivery] = webpush_server.deliveries
    assert delivery.payload == {"badge": 2, "data": {"type": "badge"}}
    assert delivery.headers["urgency"] == "normal"


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault(status=410), OutcomeKind.DEVICE_GONE),
    (Fault(status=404), OutcomeKind.DEVICE_GONE),
    (Fault(status=429, retry_after="10"), OutcomeKind.TRANSIENT),
    (Fault(status=500), OutcomeKind.TRANSIENT),
    (Fault(status=400), OutcomeKind.REJECTED),
    (Fault(status=413), OutcomeKind.REJECTED),
    (Fault(stall=True), OutcomeKind.TRANSIENT),
])
async def test_webpush_failures_classified(webpush_server, webpush_transport, fault, kind):
    subscription = webpush_server.subscribe()
    webpush_server.faults.append(fault)

    [outcome] = await webpush_transport.send([_alert(_webpush_device(subscription))])

    assert outcome.kind is kind


async def test_webpush_unreachable_is_transient(webpush_transport):
    from tests.notifications.push_servers import BrowserSubscription

    subscription = BrowserSubscription.create("gone", f"http://127.0.0.1:{_free_port()}/push/gone")

    [outcome] = await webpush_transport.send([_alert(_webpush_device(subscription))])

    assert outcome.kind is OutcomeKind.TRANSIENT


async def test_webpush_without_key_file_fails_clearly(tmp_path):
    from kilo_web.notifications.vapid import VapidKeyError

    with pytest.raises(VapidKeyError, match="python -m kilo_web.notifications.vapid"):
        WebPushTransport(vapid_key_path=tmp_path / "missing.pem", subject="mailto:a@b.c",
                         timeout=1, ttl_seconds=0)
