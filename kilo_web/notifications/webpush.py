"""Web Push transport (RFC 8030), with pywebpush's ``webpush_async``.

Each push is a POST to the subscription's endpoint with the payload
encrypted for the browser (``aes128gcm``, RFC 8291) and a VAPID JWT
(RFC 8292) signed with the key from ``kilo_web.notifications.vapid``. The
push service responds with 201 when it accepted the push. 404 and 410 mean the
subscription is gone; 429 and 5xx are transient; other statuses reject the
push. pywebpush 2.5 raises ``WebPushException`` with the response attached
for any status above 202, and fills in the ``vapid_claims`` dict it is
given, so every call gets a fresh dict.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from pywebpush import WebPushException, webpush_async

from kilo_web.notifications.models import DeviceKind
from kilo_web.notifications.transport import OutcomeKind, PushNotification, SendOutcome
from kilo_web.notifications.vapid import load_vapid_key

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SENDS = 16
"""Web Push requests in flight at once; each goes to one endpoint."""

_GONE_STATUSES = frozenset({404, 410})


class WebPushTransport:
    """Sends pushes to browser Web Push subscriptions."""

    kind = DeviceKind.WEBPUSH

    def __init__(
        self, *, vapid_key_path: Path, subject: str, timeout: float, ttl_seconds: int
    ) -> None:
        self._vapid = load_vapid_key(vapid_key_path)
        self._subject = subject
        self._timeout = timeout
        self._ttl = ttl_seconds
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def send(self, notifications: Sequence[PushNotification]) -> list[SendOutcome]:
        return list(await asyncio.gather(*(self._send_one(n) for n in notifications)))

    async def _send_one(self, notification: PushNotification) -> SendOutcome:
        device = notification.device
        headers: dict[str, str | int | float] = {
            "Urgency": "normal" if notification.is_count_only else "high"
        }
        if notification.topic:
            headers["Topic"] = notification.topic
        async with self._limit:
            try:
                await webpush_async(
                    subscription_info={
                        "endpoint": device.address,
                        "keys": {"p256dh": device.p256dh or "", "auth": device.auth or ""},
                    },
                    data=json.dumps(notification.payload(), ensure_ascii=False),
                    vapid_private_key=self._vapid,
                    vapid_claims={"sub": self._subject},
                    timeout=self._timeout,
                    ttl=self._ttl,
                    headers=headers,
                    aiohttp_session=self._http(),
                )
            except WebPushException as error:
                return self._classify(notification, error)
            except (asyncio.TimeoutError, aiohttp.ClientError) as error:
                return SendOutcome(
                    notification=notification,
                    kind=OutcomeKind.TRANSIENT,
                    detail=f"Web Push request failed: {error!r}",
                )
        return SendOutcome(notification=notification, kind=OutcomeKind.ACCEPTED)

    @staticmethod
    def _classify(notification: PushNotification, error: WebPushException) -> SendOutcome:
        response = error.response
        status = getattr(response, "status", None)
        if status in _GONE_STATUSES:
            kind = OutcomeKind.DEVICE_GONE
        elif status is None or status == 429 or status >= 500:
            kind = OutcomeKind.TRANSIENT
        else:
            kind = OutcomeKind.REJECTED
        reason = getattr(response, "reason", "") or ""
        detail = f"Web Push service responded with {status} {reason}".rstrip()
        return SendOutcome(notification=notification, kind=kind, detail=detail)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
