"""Push devices: register, remove and list the devices that receive a user's pushes.

Two kinds of device exist:

- an Expo push token (``ExponentPushToken[...]`` or ``ExpoPushToken[...]``)
  from the mobile app's ``getExpoPushTokenAsync``;
- a Web Push subscription from the browser's ``PushManager.subscribe``: an
  endpoint URL on a push service and the keys ``p256dh`` (the browser's
  P-256 public key) and ``auth`` (16 random bytes), both base64url.

A token or endpoint belongs to one user at a time: registering it again
for another user moves it, because the device changed hands.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import logging
import re
import urllib.parse
from collections.abc import Iterable

import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat.errors import InvalidInputError
from kilo_web.chat.models import utc_now
from kilo_web.chat.service import get_user
from kilo_web.notifications.models import (
    DEVICE_ADDRESS_MAX_LENGTH,
    DeviceKind,
    ExpoPushTicket,
    PushDevice,
)

logger = logging.getLogger(__name__)

_EXPO_TOKEN = re.compile(r"(?:ExponentPushToken|ExpoPushToken)\[[A-Za-z0-9_-]{1,200}\]")

_devices = PushDevice.__table__
_tickets = ExpoPushTicket.__table__


class InvalidDeviceError(InvalidInputError):
    """Raised when a push token or Web Push subscription is malformed or not allowed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceView:
    """A push device detached from any session."""

    id: int
    user_id: int
    kind: DeviceKind
    address: str
    p256dh: str | None
    auth: str | None
    active: bool

    @classmethod
    def from_row(cls, row: PushDevice | sa.Row) -> DeviceView:
        return cls(
            id=row.id,
            user_id=row.user_id,
            kind=DeviceKind(row.kind),
            address=row.address,
            p256dh=row.p256dh,
            auth=row.auth,
            active=row.active,
        )

    def redacted(self) -> str:
        """Describe the device for logs without its token or endpoint path."""
        if self.kind is DeviceKind.WEBPUSH:
            origin = urllib.parse.urlsplit(self.address)
            return f"webpush device {self.id} at {origin.scheme}://{origin.netloc}"
        return f"expo device {self.id}"


# Validation


def validate_expo_token(token: object) -> str:
    """Return ``token`` if it looks like an Expo push token, else raise InvalidDeviceError."""
    if not isinstance(token, str) or not _EXPO_TOKEN.fullmatch(token):
        # The message leaves the token out: it is a credential for the device.
        raise InvalidDeviceError(
            "invalid Expo push token: expected ExponentPushToken[...] from getExpoPushTokenAsync"
        )
    return token


def _decode_base64url(name: str, value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidDeviceError(f"Web Push subscription key {name!r} is missing")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidDeviceError(
            f"Web Push subscription key {name!r} is not base64url"
        ) from None


def _origin_allowed(endpoint: str, allowed_origins: Iterable[str]) -> bool:
    parts = urllib.parse.urlsplit(endpoint)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    return any(fnmatch.fnmatchcase(origin, pattern.lower()) for pattern in allowed_origins)


def validate_webpush_subscription(
    endpoint: object, p256dh: object, auth: object, *, allowed_origins: Iterable[str]
) -> tuple[str, str, str]:
    """Check a Web Push subscription and return (endpoint, p256dh, auth).

    The endpoint must be an absolute URL on one of ``allowed_origins``, so a
    client cannot make the server send requests to arbitrary hosts. Raises
    InvalidDeviceError.
    """
    if not isinstance(endpoint, str) or len(endpoint) > DEVICE_ADDRESS_MAX_LENGTH:
        raise InvalidDeviceError(
            f"Web Push endpoint must be a URL of at most {DEVICE_ADDRESS_MAX_LENGTH} characters"
        )
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidDeviceError(f"Web Push endpoint {endpoint[:80]!r} is not an absolute URL")
    if not _origin_allowed(endpoint, allowed_origins):
        raise InvalidDeviceError(
            f"Web Push endpoint origin {parts.scheme}://{parts.netloc} is not an allowed push "
            "service; add it to KILO_WEBPUSH_ENDPOINT_ORIGINS if it is one"
        )
    public_key = _decode_base64url("p256dh", p256dh)
    if len(public_key) != 65 or public_key[0] != 0x04:
        raise InvalidDeviceError(
            "Web Push key 'p256dh' must be an uncompressed P-256 point (65 bytes starting with 4)"
        )
    secret = _decode_base64url("auth", auth)
    if len(secret) != 16:
        raise InvalidDeviceError(f"Web Push key 'auth' must be 16 bytes, got {len(secret)}")
    return endpoint, str(p256dh), str(auth)


# Writes


def _upsert_device(
    session: Session,
    *,
    user_id: int,
    kind: DeviceKind,
    address: str,
    p256dh: str | None = None,
    auth: str | None = None,
    retry_on_conflict: bool = True,
) -> DeviceView:
    get_user(session, user_id)
    now = utc_now()
    try:
        existing = session.execute(
            sa.select(_devices).where(_devices.c.kind == kind.value, _devices.c.address == address)
        ).one_or_none()
        if existing is None:
            device = PushDevice(
                user_id=user_id, kind=kind.value, address=address, p256dh=p256dh, auth=auth
            )
            session.add(device)
            session.flush()
            device_id = device.id
        else:
            device_id = existing.id
            if existing.user_id != user_id:
                logger.info(
                    "moving push device %s from user %s to user %s",
                    device_id,
                    existing.user_id,
                    user_id,
                )
            session.execute(
                sa.update(_devices)
                .where(_devices.c.id == device_id)
                .values(user_id=user_id, p256dh=p256dh, auth=auth, active=True, updated_at=now)
            )
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        if not retry_on_conflict:
            raise
        # Another request inserted the same address between the select and the
        # insert; the second pass finds its row and updates it.
        return _upsert_device(
            session,
            user_id=user_id,
            kind=kind,
            address=address,
            p256dh=p256dh,
            auth=auth,
            retry_on_conflict=False,
        )
    except BaseException:
        session.rollback()
        raise
    view = get_device(session, device_id)
    assert view is not None
    logger.info("registered %s for user %s", view.redacted(), user_id)
    return view


def register_expo_device(session: Session, *, user_id: int, token: str) -> DeviceView:
    """Register an Expo push token for ``user_id`` (re-activating it if it was deactivated).

    Raises InvalidDeviceError or UserNotFoundError.
    """
    token = validate_expo_token(token)
    return _upsert_device(session, user_id=user_id, kind=DeviceKind.EXPO, address=token)


def register_webpush_device(
    session: Session,
    *,
    user_id: int,
    endpoint: str,
    p256dh: str,
    auth: str,
    allowed_origins: Iterable[str],
) -> DeviceView:
    """Register a browser's Web Push subscription for ``user_id``.

    ``allowed_origins`` is ``Settings.webpush_endpoint_origins``. Raises
    InvalidDeviceError or UserNotFoundError.
    """
    endpoint, p256dh, auth = validate_webpush_subscription(
        endpoint, p256dh, auth, allowed_origins=allowed_origins
    )
    return _upsert_device(
        session,
        user_id=user_id,
        kind=DeviceKind.WEBPUSH,
        address=endpoint,
        p256dh=p256dh,
        auth=auth,
    )


def remove_device(session: Session, *, user_id: int, device_id: int) -> bool:
    """Delete one of ``user_id``'s devices; return False if they have no such device."""
    try:
        result = session.execute(
            sa.delete(_devices).where(_devices.c.id == device_id, _devices.c.user_id == user_id)
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if result.rowcount:
        logger.info("removed push device %s of user %s", device_id, user_id)
    return result.rowcount == 1


def remove_device_by_address(
    session: Session, *, user_id: int, kind: DeviceKind, address: str
) -> bool:
    """Delete the device with this token or endpoint if it belongs to ``user_id``.

    This is what a client calls when it unsubscribes or logs out.
    """
    try:
        result = session.execute(
            sa.delete(_devices).where(
                _devices.c.kind == kind.value,
                _devices.c.address == address,
                _devices.c.user_id == user_id,
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return result.rowcount == 1


def deactivate_device(session: Session, device_id: int, reason: str) -> bool:
    """Stop sending to a device that its push service reported gone; commit.

    Expo tokens are kept inactive, so a later registration of the same token
    re-activates it; Web Push subscriptions are deleted, because a browser
    never reuses an expired endpoint.
    """
    try:
        kind = session.execute(
            sa.select(_devices.c.kind).where(_devices.c.id == device_id)
        ).scalar_one_or_none()
        if kind is None:
            session.commit()
            return False
        if kind == DeviceKind.WEBPUSH.value:
            session.execute(sa.delete(_devices).where(_devices.c.id == device_id))
        else:
            session.execute(
                sa.update(_devices)
                .where(_devices.c.id == device_id)
                .values(active=False, updated_at=utc_now())
            )
            session.execute(sa.delete(_tickets).where(_tickets.c.device_id == device_id))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    logger.info("%s push device %s: %s",
                "removed" if kind == DeviceKind.WEBPUSH.value else "deactivated", device_id, reason)
    return True


# Reads


def get_device(session: Session, device_id: int) -> DeviceView | None:
    """Return the device with this id, or None."""
    row = session.execute(sa.select(_devices).where(_devices.c.id == device_id)).one_or_none()
    return None if row is None else DeviceView.from_row(row)


def list_devices(
    session: Session, user_id: int, *, include_inactive: bool = False
) -> list[DeviceView]:
    """Return the devices of ``user_id`` ordered by id; only active ones by default."""
    statement = sa.select(_devices).where(_devices.c.user_id == user_id)
    if not include_inactive:
        statement = statement.where(_devices.c.active == sa.true())
    rows = session.execute(statement.order_by(_devices.c.id)).all()
    return [DeviceView.from_row(row) for row in rows]
