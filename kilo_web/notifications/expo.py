"""Expo push transport, speaking Expo's push HTTP API with httpx.

The API, as Expo's server SDKs use it:

- ``POST {api}/push/send`` with a JSON array of at most 100 messages. A 200
  response is ``{"data": [ticket, ...]}`` with one ticket per message, in
  order: ``{"status": "ok", "id": receipt_id}`` or ``{"status": "error",
  "message": ..., "details": {"error": code}}``. A request-level failure
  is a non-200 status, or a body with ``{"errors": [{"code", "message"}]}``.
- ``POST {api}/push/getReceipts`` with ``{"ids": [...]}`` (the SDKs send
  at most 300) returns ``{"data": {receipt_id: receipt}}`` once Expo has
  handed the push to Apple or Google. Expo keeps receipts for at least a day.
- The error ``DeviceNotRegistered`` (in a ticket or a receipt) means the
  token is dead, and ``MessageRateExceeded`` is transient. ``RateLimiter``
  keeps the send rate at or below Expo's limit of 600 notifications per
  second per project.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any

import httpx

from kilo_web.notifications.clock import Clock, SystemClock
from kilo_web.notifications.models import DeviceKind
from kilo_web.notifications.transport import (
    OutcomeKind,
    PushNotification,
    SendOutcome,
    outcomes_for,
)

logger = logging.getLogger(__name__)

SEND_BATCH_SIZE = 100
"""Most messages Expo accepts in one send request."""

RECEIPT_BATCH_SIZE = 300
"""Receipt ids per getReceipts request, as Expo's Node SDK sends them."""

MAX_NOTIFICATIONS_PER_SECOND = 600
"""Expo's documented send rate limit per project."""

_TOKEN_IN_TEXT = re.compile(r"(ExponentPushToken|ExpoPushToken)\[[^\]]*\]")

DEVICE_NOT_REGISTERED = "DeviceNotRegistered"
MESSAGE_RATE_EXCEEDED = "MessageRateExceeded"


class ExpoApiError(Exception):
    """Raised when a getReceipts request fails as a whole."""


class RateLimiter:
    """A token bucket that lets through at most ``rate`` items per second on average."""

    def __init__(self, rate: float, *, clock: Clock | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._rate = rate
        self._capacity = rate
        self._tokens = rate
        self._clock = clock or SystemClock()
        self._updated = self._clock.now()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = max((now - self._updated).total_seconds(), 0.0)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._updated = now

    async def acquire(self, count: int) -> None:
        """Wait until ``count`` items may pass; callers pass in arrival order."""
        if count > self._capacity:
            raise ValueError(f"cannot acquire {count} at once; the capacity is {self._capacity}")
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= count:
                    self._tokens -= count
                    return
                await self._clock.sleep((count - self._tokens) / self._rate)


def redact_tokens(text: str) -> str:
    """Replace every Expo push token in ``text``, so that Expo's messages can be logged."""
    return _TOKEN_IN_TEXT.sub(r"\1[redacted]", text)


def _retry_after(response: httpx.Response) -> str:
    value = response.headers.get("retry-after")
    return f"; retry after {value} s" if value else ""


def _error_summary(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors")
    except ValueError:
        errors = None
    if isinstance(errors, list) and errors:
        summary = "; ".join(
            f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)
        )
    else:
        summary = response.text[:200]
    return redact_tokens(summary)


class ExpoTransport:
    """Sends pushes to Expo push tokens."""

    kind = DeviceKind.EXPO

    def __init__(
        self,
        *,
        api_url: str,
        timeout: float,
        access_token: str = "",
        rate_limiter: RateLimiter | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._timeout = timeout
        self._access_token = access_token
        self._limiter = rate_limiter or RateLimiter(MAX_NOTIFICATIONS_PER_SECOND)
        self._client = client
        self._owns_client = client is None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._access_token:
            headers["Authorization"] = f"Bearer {self._access_token}"
        return headers

    @staticmethod
    def message(notification: PushNotification) -> dict[str, Any]:
        """Return the Expo message for one notification."""
        message: dict[str, Any] = {
            "to": notification.device.address,
            "badge": notification.badge,
            "data": dict(notification.data),
        }
        if notification.is_count_only:
            # No title or body: iOS updates the badge without showing anything.
            message["priority"] = "normal"
            return message
        message.update(
            title=notification.title, body=notification.body, sound="default", priority="high"
        )
        return message

    async def send(self, notifications: Sequence[PushNotification]) -> list[SendOutcome]:
        outcomes: list[SendOutcome] = []
        for start in range(0, len(notifications), SEND_BATCH_SIZE):
            batch = notifications[start : start + SEND_BATCH_SIZE]
            await self._limiter.acquire(len(batch))
            outcomes.extend(await self._send_batch(batch))
        return outcomes

    async def _send_batch(self, batch: Sequence[PushNotification]) -> list[SendOutcome]:
        url = f"{self._api_url}/push/send"
        try:
            response = await self._http().post(
                url, json=[self.message(n) for n in batch], headers=self._headers()
            )
        except httpx.TimeoutException:
            return outcomes_for(batch, OutcomeKind.TRANSIENT, f"Expo send timed out after {self._timeout} s")
        except httpx.HTTPError as error:
            return outcomes_for(batch, OutcomeKind.TRANSIENT, f"Expo send failed: {error!r}")

        if response.status_code == 429 or response.status_code >= 500:
            return outcomes_for(
                batch,
                OutcomeKind.TRANSIENT,
                f"Expo responded with {response.status_code}{_retry_after(response)}: "
                f"{_error_summary(response)}",
            )
        if response.status_code != 200:
            return outcomes_for(
                batch,
                OutcomeKind.REJECTED,
                f"Expo rejected the request with {response.status_code}: {_error_summary(response)}",
            )
        try:
            body = response.json()
        except ValueError:
            return outcomes_for(batch, OutcomeKind.TRANSIENT, "Expo responded with 200 and invalid JSON")
        if body.get("errors"):
            return outcomes_for(
                batch, OutcomeKind.REJECTED, f"Expo rejected the request: {_error_summary(response)}"
            )
        tickets = body.get("data")
        if not isinstance(tickets, list) or len(tickets) != len(batch):
            got = len(tickets) if isinstance(tickets, list) else type(tickets).__name__
            # The messages may have been queued, so a resend could duplicate them.
            return outcomes_for(
                batch,
                OutcomeKind.REJECTED,
                f"Expo returned {got} tickets for {len(batch)} messages",
            )
        return [self._ticket_outcome(n, t) for n, t in zip(batch, tickets, strict=True)]

    @staticmethod
    def _ticket_outcome(notification: PushNotification, ticket: Any) -> SendOutcome:
        if not isinstance(ticket, dict):
            return SendOutcome(
                notification=notification, kind=OutcomeKind.REJECTED, detail="malformed ticket"
            )
        if ticket.get("status") == "ok":
            return SendOutcome(
                notification=notification,
                kind=OutcomeKind.ACCEPTED,
                receipt_id=str(ticket["id"]) if ticket.get("id") else None,
            )
        error = (ticket.get("details") or {}).get("error")
        detail = f"Expo ticket error {error}: {redact_tokens(str(ticket.get('message', '')))}"
        if error == DEVICE_NOT_REGISTERED:
            kind = OutcomeKind.DEVICE_GONE
        elif error == MESSAGE_RATE_EXCEEDED:
            kind = OutcomeKind.TRANSIENT
        else:
            kind = OutcomeKind.REJECTED
        return SendOutcome(notification=notification, kind=kind, detail=detail)

    async def fetch_receipts(self, receipt_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Return the receipts Expo has for these ids; ids without a receipt yet are missing.

        Raises ExpoApiError when a request fails; receipts of earlier batches are lost then
        only for this call, because the caller keeps the tickets until their receipts arrive.
        """
        receipts: dict[str, dict[str, Any]] = {}
        for start in range(0, len(receipt_ids), RECEIPT_BATCH_SIZE):
            batch = list(receipt_ids[start : start + RECEIPT_BATCH_SIZE])
            try:
                response = await self._http().post(
                    f"{self._api_url}/push/getReceipts",
                    json={"ids": batch},
                    headers=self._headers(),
                )
            except httpx.HTTPError as error:
                raise ExpoApiError(f"Expo getReceipts failed: {error!r}") from error
            if response.status_code != 200:
                raise ExpoApiError(
                    f"Expo getReceipts failed with status {response.status_code}: {_error_summary(response)}"
                )
            try:
                data = response.json().get("data")
            except ValueError:
                raise ExpoApiError("Expo getReceipts returned invalid JSON") from None
            if not isinstance(data, dict):
                raise ExpoApiError(f"Expo getReceipts returned {type(data).__name__} instead of a map")
            receipts.update({k: v for k, v in data.items() if isinstance(v, dict)})
        return receipts

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        self._client = None
