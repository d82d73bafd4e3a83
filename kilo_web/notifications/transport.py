"""The interface between the dispatcher and the push services.

A transport sends a batch of ``PushNotification`` values to one kind of
device and returns one ``SendOutcome`` per notification, in the same
order. Transports classify a failed push instead of raising, so the
dispatcher can retry transient failures and drop devices that are gone. The
dispatcher still treats an exception from ``send`` as a transient failure
of the whole batch.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any, Protocol

from kilo_web.notifications.devices import DeviceView
from kilo_web.notifications.models import DeviceKind

BADGE_TOPIC = "badge"
"""Web Push topic of count-only pushes: a newer one replaces an undelivered older one."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PushNotification:
    """One push to one device.

    A notification without ``title`` and ``body`` is a count-only push that
    sets the app badge and shows nothing.
    """

    device: DeviceView
    badge: int
    title: str | None = None
    body: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    topic: str | None = None
    """Web Push ``Topic``: a push with the same topic replaces an undelivered one."""

    @property
    def is_count_only(self) -> bool:
        return self.title is None and self.body is None

    def payload(self) -> dict[str, Any]:
        """Return the JSON object a service worker receives for this push."""
        payload: dict[str, Any] = {"badge": self.badge, "data": dict(self.data)}
        if self.title is not None:
            payload["title"] = self.title
        if self.body is not None:
            payload["body"] = self.body
        return payload


class OutcomeKind(str, enum.Enum):
    """Classification of a push service response to one notification."""

    ACCEPTED = "accepted"
    DEVICE_GONE = "device_gone"
    """The token or subscription no longer exists; stop sending to it."""
    TRANSIENT = "transient"
    """Timeout, connection failure, rate limit or server error: the same push may succeed later."""
    REJECTED = "rejected"
    """A permanent error for this push (bad request, payload too large, bad credentials)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SendOutcome:
    """The classified response for one notification."""

    notification: PushNotification
    kind: OutcomeKind
    detail: str = ""
    receipt_id: str | None = None
    """Expo's ticket id, for fetching the delivery receipt later."""


class PushTransport(Protocol):
    """Sends notifications to the devices of one kind."""

    kind: DeviceKind

    async def send(self, notifications: Sequence[PushNotification]) -> list[SendOutcome]:
        """Send every notification and return one outcome each, in order."""
        ...

    async def aclose(self) -> None:
        """Release the transport's connections."""
        ...


def outcomes_for(
    notifications: Sequence[PushNotification], kind: OutcomeKind, detail: str
) -> list[SendOutcome]:
    """Return the same outcome for every notification of a batch."""
    return [SendOutcome(notification=n, kind=kind, detail=detail) for n in notifications]
