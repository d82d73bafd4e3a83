"""The notifications service as the app runs it: transports, dispatcher and timers.

``NotificationService.from_settings(...)`` builds everything from
``kilo_web.settings``. The app then:

- passes ``service.after_publish`` to ``chat.service.post_message``, which
  calls it after the realtime publish. The hook starts the message's push
  dispatch as a background task and returns at once.
- passes ``service.on_unread_changed`` to ``chat.read_state.mark_read`` and
  ``mark_all_read``, so that reading on one device lowers the badge on the
  user's other devices.
- registers ``service.lifespan`` as a Reflex lifespan task. It starts the
  cleanup timer and the Expo receipt poller, resends pushes left pending
  by an earlier process, and on exit waits briefly for dispatches in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat.publisher import Publisher
from kilo_web.chat.read_state import UnreadSummary
from kilo_web.chat.service import MessageView
from kilo_web.notifications.accounting import Checkpoint
from kilo_web.notifications.cleanup import CleanupTimer
from kilo_web.notifications.clock import Clock, SystemClock
from kilo_web.notifications.devices import deactivate_device
from kilo_web.notifications.dispatcher import DispatchReport, PushDispatcher, ViewerLookup
from kilo_web.notifications.expo import (
    DEVICE_NOT_REGISTERED,
    ExpoApiError,
    ExpoTransport,
    redact_tokens,
)
from kilo_web.notifications.models import DeviceKind, ExpoPushTicket
from kilo_web.notifications.transport import PushTransport
from kilo_web.notifications.webpush import WebPushTransport
from kilo_web.settings import Settings

logger = logging.getLogger(__name__)

EXPO_RECEIPT_RETENTION = datetime.timedelta(days=1)
"""How long Expo keeps receipts; tickets older than this are dropped unread."""

RECEIPT_BATCH_LIMIT = 3000
"""Most tickets one receipt check reads from the database."""

SHUTDOWN_DRAIN_SECONDS = 5.0
"""How long ``lifespan`` waits for dispatches in flight when the app stops."""


def build_transports(settings: Settings) -> dict[DeviceKind, PushTransport]:
    """Create the transports named in ``settings.push_transports``.

    Raises ValueError for an unknown name and VapidKeyError when Web Push is
    enabled but its key file is missing.
    """
    transports: dict[DeviceKind, PushTransport] = {}
    for name in settings.push_transports:
        if name == DeviceKind.EXPO.value:
            transports[DeviceKind.EXPO] = ExpoTransport(
                api_url=settings.expo_api_url,
                timeout=settings.push_timeout_seconds,
                access_token=settings.expo_access_token,
            )
        elif name == DeviceKind.WEBPUSH.value:
            transports[DeviceKind.WEBPUSH] = WebPushTransport(
                vapid_key_path=settings.vapid_key_path,
                subject=settings.vapid_subject,
                timeout=settings.push_timeout_seconds,
                ttl_seconds=settings.webpush_ttl_seconds,
            )
        else:
            raise ValueError(
                f"KILO_PUSH_TRANSPORTS names unknown transport {name!r}; use expo or webpush"
            )
    return transports


class NotificationService:
    """Owns the dispatcher, its transports and the background tasks of the notifications."""

    def __init__(
        self,
        *,
        session_factory: Callable[[], Session],
        transports: Mapping[DeviceKind, PushTransport],
        window: datetime.timedelta,
        publisher: Publisher | None = None,
        viewers: ViewerLookup | None = None,
        clock: Clock | None = None,
        max_attempts: int = 3,
        retry_base_seconds: float = 1.0,
        receipt_delay: datetime.timedelta = datetime.timedelta(minutes=15),
        checkpoint: Checkpoint | None = None,
        recovery: datetime.timedelta = datetime.timedelta(minutes=15),
    ) -> None:
        self._session_factory = session_factory
        self._transports = dict(transports)
        self._clock = clock or SystemClock()
        self._receipt_delay = receipt_delay
        self._recovery = recovery
        self.window = window
        self.cleanup_timer = CleanupTimer(session_factory, clock=self._clock)
        self.dispatcher = PushDispatcher(
            session_factory=session_factory,
            transports=self._transports,
            window=window,
            viewers=viewers,
            publisher=publisher,
            clock=self._clock,
            max_attempts=max_attempts,
            retry_base_seconds=retry_base_seconds,
            checkpoint=checkpoint,
            on_claim_written=self.cleanup_timer.notify_armed,
        )
        self._tasks: set[asyncio.Task[object]] = set()
        self._receipt_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        session_factory: Callable[[], Session],
        publisher: Publisher | None = None,
        viewers: ViewerLookup | None = None,
    ) -> NotificationService:
        """Build the service with the transports, TTL and retry policy from ``settings``."""
        return cls(
            session_factory=session_factory,
            transports=build_transports(settings),
            window=datetime.timedelta(seconds=settings.push_idempotency_ttl_seconds),
            publisher=publisher,
            viewers=viewers,
            max_attempts=settings.push_max_attempts,
            retry_base_seconds=settings.push_retry_base_seconds,
            receipt_delay=datetime.timedelta(seconds=settings.expo_receipt_delay_seconds),
            recovery=datetime.timedelta(seconds=settings.push_recovery_seconds),
        )

    # Hooks for the chat service

    def after_publish(self, message: MessageView) -> None:
        """Start the push dispatch of a committed message in the background.

        Returns at once. Any failure of the dispatch is logged with the
        message id and never reaches the sender.
        """
        self._spawn(self._dispatch_safely(message.id), f"push-message-{message.id}")

    async def on_unread_changed(self, summary: UnreadSummary) -> None:
        """Send the new badge number to the user's devices, in the background."""
        self._spawn(self._badge_safely(summary.user_id, summary.badge), f"push-badge-{summary.user_id}")

    def _spawn(self, coroutine, name: str) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch_safely(self, message_id: int) -> DispatchReport | None:
        try:
            return await self.dispatcher.send_push_for_conversation(message_id)
        except Exception:
            logger.exception("push dispatch of message %s failed", message_id)
            return None

    async def _badge_safely(self, user_id: int, badge: int) -> None:
        try:
            await self.dispatcher.send_badge_update(user_id, badge)
        except Exception:
            logger.exception("badge push to user %s failed", user_id)

    async def drain(self) -> None:
        """Wait until every background dispatch started so far has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # Expo receipts

    async def check_expo_receipts(self) -> int:
        """Fetch receipts of Expo tickets older than the receipt delay; return how many came.

        ``DeviceNotRegistered`` deactivates the token. Tickets with a receipt,
        and tickets older than Expo's retention, are deleted.
        """
        transport = self._transports.get(DeviceKind.EXPO)
        if not isinstance(transport, ExpoTransport):
            return 0
        now = self._clock.now()
        with self._session_factory() as session:
            rows = session.execute(
                sa.select(ExpoPushTicket.receipt_id, ExpoPushTicket.device_id, ExpoPushTicket.created_at)
                .where(ExpoPushTicket.created_at <= now - self._receipt_delay)
                .order_by(ExpoPushTicket.created_at)
                .limit(RECEIPT_BATCH_LIMIT)
            ).all()
        if not rows:
            return 0
        try:
            receipts = await transport.fetch_receipts([row.receipt_id for row in rows])
        except ExpoApiError:
            logger.exception("fetching %d Expo receipts failed; retrying on the next check", len(rows))
            return 0

        done: list[str] = []
        with self._session_factory() as session:
            for row in rows:
                receipt = receipts.get(row.receipt_id)
                if receipt is None:
                    if row.created_at <= now - EXPO_RECEIPT_RETENTION:
                        done.append(row.receipt_id)
                    continue
                done.append(row.receipt_id)
                if receipt.get("status") == "ok":
                    continue
                error = (receipt.get("details") or {}).get("error")
                if error == DEVICE_NOT_REGISTERED:
                    deactivate_device(session, row.device_id, "Expo receipt: DeviceNotRegistered")
                else:
                    logger.error("Expo receipt %s for device %s: %s %s", row.receipt_id,
                                 row.device_id, error, redact_tokens(str(receipt.get("message", ""))))
            session.execute(sa.delete(ExpoPushTicket).where(ExpoPushTicket.receipt_id.in_(done)))
            session.commit()
        return len(receipts)

    async def _poll_receipts(self) -> None:
        interval = max(min(self._receipt_delay.total_seconds() / 3, 300.0), 1.0)
        while True:
            await self._clock.sleep(interval)
            try:
                await self.check_expo_receipts()
            except Exception:
                logger.exception("Expo receipt check failed")

    # Lifespan

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[NotificationService]:
        """Run the cleanup timer and receipt poller and resend pending pushes, until exit."""
        self.cleanup_timer.start()
        if DeviceKind.EXPO in self._transports:
            self._receipt_task = asyncio.create_task(self._poll_receipts(), name="expo-receipts")
        self._spawn(self._resend_safely(), "push-resend-pending")
        logger.info("notifications service started with transports %s",
                    sorted(kind.value for kind in self._transports))
        try:
            yield self
        finally:
            await self.aclose()

    async def _resend_safely(self) -> None:
        try:
            await self.dispatcher.resend_pending()
            # Messages whose dispatch died before its first claim left no record.
            await self.dispatcher.dispatch_unclaimed(self._clock.now() - self._recovery)
        except Exception:
            logger.exception("resending pending pushes failed")

    async def aclose(self) -> None:
        """Stop the timers, wait briefly for dispatches in flight and close the transports."""
        await self.cleanup_timer.stop()
        if self._receipt_task is not None:
            self._receipt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receipt_task
            self._receipt_task = None
        if self._tasks:
            done, pending = await asyncio.wait(list(self._tasks), timeout=SHUTDOWN_DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("cancelled %d push dispatches at shutdown; they stay pending",
                               len(pending))
        for transport in self._transports.values():
            await transport.aclose()
        logger.info("notifications service stopped")
