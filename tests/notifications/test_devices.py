"""Registering and removing push devices (kilo_web.notifications.devices)."""

from __future__ import annotations

import base64

import pytest

from kilo_web.chat.errors import UserNotFoundError
from kilo_web.notifications.devices import (
    InvalidDeviceError,
    deactivate_device,
    list_devices,
    register_expo_device,
    register_webpush_device,
    remove_device,
    remove_device_by_address,
)
from kilo_web.notifications.models import DeviceKind
from tests.notifications.conftest import expo_token
from tests.notifications.push_servers import BrowserSubscription

ORIGINS = ["https://fcm.googleapis.com", "https://*.notify.windows.com"]


def _keys() -> tuple[str, str]:
    browser = BrowserSubscription.create("device-test", "")
    return browser.p256dh, browser.auth


def test_register_expo_token(session, world):
    device = register_expo_device(session, user_id=world.bob, token=expo_token("abc"))

    assert device.kind is DeviceKind.EXPO
    assert [d.id for d in list_devices(session, world.bob)] == [device.id]


@pytest.mark.parametrize("token", ["abc", "ExponentPushToken[]", "ExponentPushToken[a b]", "", None, 5])
def test_invalid_expo_token_rejected(session, world, token):
    with pytest.raises(InvalidDeviceError) as error:
        register_expo_device(session, user_id=world.bob, token=token)

    # The token is a device credential, so the message never repeats it.
    if isinstance(token, str) and token:
        assert token not in str(error.value)


def test_unknown_user_rejected(session, world):
    with pytest.raises(UserNotFoundError):
        register_expo_device(session, user_id=9999, token=expo_token("abc"))


def test_same_token_moves_to_new_user(session, world):
    first = register_expo_device(session, user_id=world.bob, token=expo_token("shared"))

    second = register_expo_device(session, user_id=world.carol, token=expo_token("shared"))

    assert second.id == first.id
    assert list_devices(session, world.bob) == []
    assert [d.id for d in list_devices(session, world.carol)] == [first.id]


def test_registering_again_reactivates_token(session, world):
    device = register_expo_device(session, user_id=world.bob, token=expo_token("phone"))
    deactivate_device(session, device.id, "DeviceNotRegistered")
    assert list_devices(session, world.bob) == []

    again = register_expo_device(session, user_id=world.bob, token=expo_token("phone"))

    assert again.id == device.id
    assert again.active is True


def test_register_webpush_subscription(session, world):
    p256dh, auth = _keys()

    device = register_webpush_device(
        session, user_id=world.bob, endpoint="https://fcm.googleapis.com/fcm/send/abc",
        p256dh=p256dh, auth=auth, allowed_origins=ORIGINS,
    )

    assert device.kind is DeviceKind.WEBPUSH
    assert device.p256dh == p256dh
    assert "abc" not in device.redacted()


def test_wildcard_origin_matches_subdomain(session, world):
    p256dh, auth = _keys()

    device = register_webpush_device(
        session, user_id=world.bob, endpoint="https://wns2-db5p.notify.windows.com/w/?token=x",
        p256dh=p256dh, auth=auth, allowed_origins=ORIGINS,
    )

    assert device.active is True


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8080/push", "https://evil.example/push", "ftp://fcm.googleapis.com/x",
     "fcm.googleapis.com/x", "https://" + "a" * 3000],
)
def test_webpush_endpoint_outside_allowed_origins_rejected(session, world, endpoint):
    p256dh, auth = _keys()

    with pytest.raises(InvalidDeviceError):
        register_webpush_device(
            session, user_id=world.bob, endpoint=endpoint, p256dh=p256dh, auth=auth,
            allowed_origins=ORIGINS,
        )


def test_webpush_bad_keys_rejected(session, world):
    p256dh, auth = _keys()
    short_key = base64.urlsafe_b64encode(b"\x04" + b"1" * 30).decode()
    cases = [(short_key, auth), (p256dh, base64.urlsafe_b64encode(b"12345").decode()),
             ("", auth), (p256dh, "!!!"), (None, auth)]
    for bad_p256dh, bad_auth in cases:
        with pytest.raises(InvalidDeviceError):
            register_webpush_device(
                session, user_id=world.bob, endpoint="https://fcm.googleapis.com/fcm/send/x",
                p256dh=bad_p256dh, auth=bad_auth, allowed_origins=ORIGINS,
            )


def test_remove_device_only_for_owner(session, world):
    device = register_expo_device(session, user_id=world.bob, token=expo_token("phone"))

    assert remove_device(session, user_id=world.carol, device_id=device.id) is False
    assert remove_device(session, user_id=world.bob, device_id=device.id) is True
    assert list_devices(session, world.bob, include_inactive=True) == []


def test_remove_device_by_address(session, world):
    register_expo_device(session, user_id=world.bob, token=expo_token("phone"))

    removed = remove_device_by_address(
        session, user_id=world.bob, kind=DeviceKind.EXPO, address=expo_token("phone")
    )

    assert removed is True
    assert list_devices(session, world.bob, include_inactive=True) == []
