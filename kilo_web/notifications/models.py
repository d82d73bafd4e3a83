"""Database tables of the notifications service.

- ``badge_counts``: one counter per (user, badge bucket). A user's buckets
  partition their counted unread messages, so the badge a device shows is the
  sum of the user's rows (see ``kilo_web.notifications.badges``).
- ``push_delivery``: the idempotency record of one (message, recipient) push,
  ``pending`` from the moment the badge was counted until the push service
  accepted it (``delivered``), or ``skipped`` when no push was due.
- ``push_device``: Expo push tokens and Web Push subscriptions of each user.
- ``expo_push_ticket``: Expo tickets whose receipts are still to be fetched.
- ``scheduled_job``: the persisted next run time of the cleanup timer, so
  that the timer survives a restart.

The Alembic migration ``0003`` creates these tables; keep the two in sync.
"""

from __future__ import annotations

import datetime
import enum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kilo_web.chat.models import UTCDateTime, utc_now

BADGE_BUCKET_MAX_LENGTH = 160
"""Maximum length of a badge bucket key; the longest key is a conversation bucket."""

DEVICE_ADDRESS_MAX_LENGTH = 2048
"""Maximum length of an Expo push token or a Web Push endpoint URL."""

RECEIPT_ID_MAX_LENGTH = 64
"""Maximum length of an Expo push receipt id (Expo sends UUIDs)."""

JOB_NAME_MAX_LENGTH = 64
"""Maximum length of a ``scheduled_job`` name."""


class DeliveryState(str, enum.Enum):
    """Stage of one (message, recipient) push."""

    PENDING = "pending"
    """The badge was counted (or found already read); the push is not confirmed yet."""
    DELIVERED = "delivered"
    """Every device of the recipient got a final response from its push service."""
    SKIPPED = "skipped"
    """No push was due: the recipient had already read the message."""


class DeviceKind(str, enum.Enum):
    """Push transport a device is reached through."""

    EXPO = "expo"
    WEBPUSH = "webpush"


class BadgeCount(SQLModel, table=True):
    """Counted unread messages of one user in one badge bucket."""

    __tablename__ = "badge_counts"

    user_id: int = Field(foreign_key="user_profile.id", ondelete="CASCADE", primary_key=True)
    badge_bucket: str = Field(sa_type=sa.String(BADGE_BUCKET_MAX_LENGTH), primary_key=True)
    count: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    updated_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class PushDelivery(SQLModel, table=True):
    """Idempotency record of the push for one (message, recipient) pair.

    ``badge`` is the absolute badge number the push carries; a retry sends
    the same number. ``badge_bucket`` names the bucket that this message
    raised, or is None when it raised none. Rows are deleted by the cleanup
    timer once ``expires_at`` has passed.
    """

    __tablename__ = "push_delivery"
    __table_args__ = (
        sa.UniqueConstraint("message_id", "recipient_id", name="uq_push_delivery_message_recipient"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", ondelete="CASCADE", nullable=False)
    recipient_id: int = Field(
        foreign_key="user_profile.id", ondelete="CASCADE", nullable=False, index=True
    )
    state: str = Field(sa_type=sa.String(16), nullable=False)
    badge: int | None = Field(default=None)
    badge_bucket: str | None = Field(default=None, sa_type=sa.String(BADGE_BUCKET_MAX_LENGTH))
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    created_at: datetime.datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_at: datetime.datetime = Field(sa_type=UTCDateTime, nullable=False)
    expires_at: datetime.datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class PushDevice(SQLModel, table=True):
    """A device that receives pushes for one user.

    ``address`` is the Expo push token (``ExponentPushToken[...]``) or the
    Web Push endpoint URL; ``p256dh`` and ``auth`` are the subscription keys
    of a Web Push device (base64url, as the browser gives them). Expo tokens
    that Expo reports as ``DeviceNotRegistered`` are kept with
    ``active = false``; Web Push subscriptions that the push service
    reports gone (404 or 410) are deleted.
    """

    __tablename__ = "push_device"
    __table_args__ = (sa.UniqueConstraint("kind", "address", name="uq_push_device_kind_address"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(
        foreign_key="user_profile.id", ondelete="CASCADE", nullable=False, index=True
    )
    kind: str = Field(sa_type=sa.String(16), nullable=False)
    address: str = Field(sa_type=sa.String(DEVICE_ADDRESS_MAX_LENGTH), nullable=False)
    p256dh: str | None = Field(default=None, sa_type=sa.String(128))
    auth: str | None = Field(default=None, sa_type=sa.String(64))
    active: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    created_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )
    updated_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )


class ExpoPushTicket(SQLModel, table=True):
    """An Expo ticket whose receipt has not been fetched yet."""

    __tablename__ = "expo_push_ticket"

    receipt_id: str = Field(sa_type=sa.String(RECEIPT_ID_MAX_LENGTH), primary_key=True)
    device_id: int = Field(
        foreign_key="push_device.id", ondelete="CASCADE", nullable=False, index=True
    )
    created_at: datetime.datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class ScheduledJob(SQLModel, table=True):
    """The persisted next run time of a timer; None when the timer is not armed."""

    __tablename__ = "scheduled_job"

    name: str = Field(sa_type=sa.String(JOB_NAME_MAX_LENGTH), primary_key=True)
    next_run_at: datetime.datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime.datetime = Field(
        default_factory=utc_now, sa_type=UTCDateTime, nullable=False
    )
