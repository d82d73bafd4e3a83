"""Push dispatch for a committed message.

``PushDispatcher.send_push_for_conversation(message_id)``:

1. Loads the message and its recipients: the conversation's human members
   who had joined when the message was created, minus the sender. It stops
   when there are none, or when the conversation or its instance is gone.
2. Asks ``viewers`` which members have the conversation open and visible.
   Their read position moves to the message: no push and no unread.
3. For each other recipient, claims the push (``accounting.claim_delivery``:
   pending record, then badge increment, in one transaction), publishes
   ``unread.changed`` to them, and sends the title, the body preview and the
   absolute badge number to each of their active devices.
4. Marks a recipient ``delivered`` once every device got a final response.
   Devices that are gone are deactivated or removed. A recipient with a
   transient failure is tried again, with the same badge number, up to
   ``max_attempts`` sends with exponential backoff; after that the record
   stays pending and ``resend_pending`` retries it after a restart.

A message deleted before its push went out is claimed and counted all
the same, because it stays unread until read, but its recipients get a
count-only push with the badge number instead of its title and preview.

Running the whole dispatch again is safe at any point: claimed pairs are
never counted twice, delivered pairs are not sent again, and a pending
pair whose message was read in the meantime is finished as skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat import read_state
from kilo_web.chat.errors import NotAMemberError
from kilo_web.chat.models import Conversation, ConversationMember, Instance, Message, UserProfile
from kilo_web.chat.publisher import Publisher
from kilo_web.notifications import accounting
from kilo_web.notifications.accounting import Checkpoint, Claim, DispatchStep, MessageFacts
from kilo_web.notifications.clock import Clock, SystemClock
from kilo_web.notifications.devices import DeviceView, deactivate_device, list_devices
from kilo_web.notifications.models import DeliveryState, DeviceKind, ExpoPushTicket, PushDelivery
from kilo_web.notifications.preview import message_preview, notification_title
from kilo_web.notifications.transport import (
    BADGE_TOPIC,
    OutcomeKind,
    PushNotification,
    PushTransport,
    SendOutcome,
    outcomes_for,
)

logger = logging.getLogger(__name__)

ViewerLookup = Callable[[str, str], Awaitable[Collection[int]]]
"""Returns the ids of users who have a conversation open and visible, given
(instance id, conversation id); the app backs it with conversation presence."""

MESSAGE_PUSH_TYPE = "message"
BADGE_PUSH_TYPE = "badge"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MessageContext:
    """A committed message with everything its pushes need."""

    facts: MessageFacts
    title: str
    body: str
    sender_is_bot: bool
    recipients: tuple[int, ...]
    deleted: bool = False
    """True when the sender deleted the message; its push then shows no text."""

    def push_data(self) -> dict[str, Any]:
        """Return the ``data`` object of the message's pushes."""
        facts = self.facts
        return {
            "type": MESSAGE_PUSH_TYPE,
            "messageId": facts.message_id,
            "conversationId": facts.conversation_id,
            "instanceId": facts.instance_id,
            "seq": facts.seq,
            "senderUserId": None if self.sender_is_bot else facts.sender_id,
        }


@dataclasses.dataclass(kw_only=True)
class DispatchReport:
    """Outcome of one dispatch, by recipient id."""

    message_id: int
    skipped_reason: str | None = None
    recipients: list[int] = dataclasses.field(default_factory=list)
    viewers_marked_read: list[int] = dataclasses.field(default_factory=list)
    counted: list[int] = dataclasses.field(default_factory=list)
    """Recipients whose badge this dispatch raised (a retry finds none)."""
    delivered: list[int] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    failed: list[int] = dataclasses.field(default_factory=list)
    """Recipients still pending after the last attempt."""


@dataclasses.dataclass(frozen=True)
class _Job:
    recipient_id: int
    claim: Claim
    notifications: tuple[PushNotification, ...]


def load_message_context(session: Session, message_id: int) -> MessageContext | None:
    """Load a message, its conversation, instance and recipients; None if any is gone."""
    row = session.execute(
        sa.select(
            Message.id,
            Message.conversation_id,
            Message.seq,
            Message.sender_id,
            Message.content,
            Message.created_at,
            Message.deleted_at,
            Conversation.title,
            Conversation.instance_id,
            Instance.label,
            UserProfile.is_bot,
        )
        .join(Conversation, Conversation.id == Message.conversation_id)
        .outerjoin(Instance, Instance.id == Conversation.instance_id)
        .join(UserProfile, UserProfile.id == Message.sender_id)
        .where(Message.id == message_id)
    ).one_or_none()
    if row is None:
        return None
    if row.label is None:
        logger.info("no push for message %s: conversation %s has no instance",
                    message_id, row.conversation_id)
        return None
    recipients = session.execute(
        sa.select(ConversationMember.user_id)
        .join(UserProfile, UserProfile.id == ConversationMember.user_id)
        .where(
            ConversationMember.conversation_id == row.conversation_id,
            ConversationMember.user_id != row.sender_id,
            ConversationMember.joined_at <= row.created_at,
            UserProfile.is_bot == sa.false(),
        )
        .order_by(ConversationMember.user_id)
    ).scalars().all()
    return MessageContext(
        facts=MessageFacts(
            message_id=row.id,
            conversation_id=row.conversation_id,
            instance_id=row.instance_id,
            seq=row.seq,
            sender_id=row.sender_id,
            created_at=row.created_at,
        ),
        title=notification_title(row.label, row.title),
        body=message_preview(row.content),
        sender_is_bot=row.is_bot,
        recipients=tuple(recipients),
        deleted=row.deleted_at is not None,
    )


class PushDispatcher:
    """Sends the pushes of committed messages and badge-only pushes after reads."""

    def __init__(
        self,
        *,
        session_factory: Callable[[], Session],
        transports: Mapping[DeviceKind, PushTransport],
        window: datetime.timedelta,
        viewers: ViewerLookup | None = None,
        publisher: Publisher | None = None,
        clock: Clock | None = None,
        max_attempts: int = 3,
        retry_base_seconds: float = 1.0,
        checkpoint: Checkpoint | None = None,
        on_claim_written: Callable[[], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._session_factory = session_factory
        self._transports = dict(transports)
        self._window = window
        self._viewers = viewers
        self._publisher = publisher
        self._clock = clock or SystemClock()
        self._max_attempts = max_attempts
        self._retry_base_seconds = retry_base_seconds
        self._checkpoint = checkpoint
        self._on_claim_written = on_claim_written
        self._missing_transport_logged: set[DeviceKind] = set()

    # Message pushes

    async def send_push_for_conversation(self, message_id: int) -> DispatchReport:
        """Dispatch the pushes of one committed message; see the module docstring.

        Raises only what the database or a checkpoint raises; push failures
        are retried and then reported in ``DispatchReport.failed``.
        """
        report = DispatchReport(message_id=message_id)
        with self._session_factory() as session:
            context = load_message_context(session, message_id)
        if context is None:
            report.skipped_reason = "message, conversation or instance not found"
            return report
        report.recipients = list(context.recipients)
        if not context.recipients:
            report.skipped_reason = "no human recipients"
            logger.debug("no push for message %s: no human recipients", message_id)
            return report

        viewing = await self._current_viewers(context)
        for user_id in context.recipients:
            if user_id in viewing:
                await self._mark_viewer_read(context, user_id)
                report.viewers_marked_read.append(user_id)

        pending = [r for r in context.recipients if r not in viewing]
        attempt = 1
        while pending:
            pending = await self._attempt(context, pending, report)
            if not pending or attempt >= self._max_attempts:
                break
            delay = self._retry_base_seconds * 2 ** (attempt - 1)
            logger.info(
                "retrying push of message %s to users %s in %.1f s (attempt %d of %d)",
                message_id, pending, delay, attempt + 1, self._max_attempts,
            )
            await self._clock.sleep(delay)
            attempt += 1
        if pending:
            report.failed = pending
            logger.error(
                "push of message %s to users %s failed after %d attempts; it stays pending",
                message_id, pending, attempt,
            )
        return report

    async def _current_viewers(self, context: MessageContext) -> set[int]:
        if self._viewers is None:
            return set()
        facts = context.facts
        try:
            return set(await self._viewers(facts.instance_id, facts.conversation_id))
        except Exception:
            # Without presence, pushing to a viewer is better than missing a recipient.
            logger.exception(
                "viewer lookup failed for conversation %s; pushing to every recipient of message %s",
                facts.conversation_id, facts.message_id,
            )
            return set()

    async def _mark_viewer_read(self, context: MessageContext, user_id: int) -> None:
        facts = context.facts
        with self._session_factory() as session:
            badge_before = accounting.device_badge(session, user_id)
            try:
                moved = read_state.mark_read_in_transaction(
                    session, facts.conversation_id, user_id, facts.seq,
                    now=self._clock.now(), dispatch_window=self._window,
                )
                session.commit()
            except NotAMemberError:
                # Removed from the conversation since the recipients were loaded.
                session.rollback()
                logger.info("user %s left conversation %s before message %s was marked read",
                            user_id, facts.conversation_id, facts.message_id)
                return
            except BaseException:
                session.rollback()
                raise
            summary = read_state.unread_summary(session, user_id)
        logger.debug("user %s is viewing conversation %s: message %s marked read",
                     user_id, facts.conversation_id, facts.message_id)
        if moved:
            await read_state.publish_unread_changed(self._publisher, summary)
        if summary.badge != badge_before:
            await self.send_badge_update(user_id, summary.badge)

    async def _attempt(
        self, context: MessageContext, recipients: Sequence[int], report: DispatchReport
    ) -> list[int]:
        """Claim and send to ``recipients`` once; return those with a transient failure."""
        facts = context.facts
        jobs: list[_Job] = []
        for recipient_id in recipients:
            job = await self._prepare(context, recipient_id, report)
            if job is not None:
                jobs.append(job)
        if not jobs:
            return []

        outcomes = await self._send_all([n for job in jobs for n in job.notifications])
        await self._apply_device_outcomes(outcomes)

        still_pending: list[int] = []
        for job in jobs:
            transient = [
                outcomes[id(n)] for n in job.notifications
                if outcomes[id(n)].kind is OutcomeKind.TRANSIENT
            ]
            if transient:
                logger.warning(
                    "push of message %s to user %s failed on %d of %d devices: %s",
                    facts.message_id, job.recipient_id, len(transient),
                    len(job.notifications), transient[0].detail,
                )
                still_pending.append(job.recipient_id)
                continue
            if self._checkpoint is not None:
                self._checkpoint(DispatchStep.AFTER_SEND, facts.message_id, job.recipient_id)
            with self._session_factory() as session:
                accounting.finish_delivery(
                    session, job.claim, DeliveryState.DELIVERED,
                    message_id=facts.message_id, recipient_id=job.recipient_id,
                    now=self._clock.now(), checkpoint=self._checkpoint,
                )
            report.delivered.append(job.recipient_id)
        return still_pending

    async def _prepare(
        self, context: MessageContext, recipient_id: int, report: DispatchReport
    ) -> _Job | None:
        """Claim one recipient's push and build its notifications; None when nothing to send."""
        facts = context.facts
        with self._session_factory() as session:
            claim = accounting.claim_delivery(
                session, facts, recipient_id,
                now=self._clock.now(), window=self._window, checkpoint=self._checkpoint,
            )
            if claim is None:
                report.skipped.append(recipient_id)
                return None
            if claim.created:
                if self._on_claim_written is not None:
                    self._on_claim_written()
                if claim.badge_bucket is not None:
                    report.counted.append(recipient_id)
                    summary = read_state.unread_summary(session, recipient_id)
                    await read_state.publish_unread_changed(self._publisher, summary)
            if claim.state is not DeliveryState.PENDING:
                if recipient_id not in report.delivered:
                    report.skipped.append(recipient_id)
                return None
            if not claim.created and not accounting.message_is_unread(session, facts, recipient_id):
                # Read since the claim: the devices already got the lower badge.
                accounting.finish_delivery(
                    session, claim, DeliveryState.SKIPPED,
                    message_id=facts.message_id, recipient_id=recipient_id,
                    now=self._clock.now(),
                )
                report.skipped.append(recipient_id)
                return None
            devices = self._sendable(list_devices(session, recipient_id))
            accounting.note_send_attempt(session, claim.delivery_id, self._clock.now())

        assert claim.badge is not None
        if context.deleted:
            # The message still counts as unread, so the badge number goes out,
            # but none of its deleted text.
            notifications = tuple(
                PushNotification(device=device, badge=claim.badge,
                                 data={"type": BADGE_PUSH_TYPE}, topic=BADGE_TOPIC)
                for device in devices
            )
        else:
            notifications = tuple(
                PushNotification(
                    device=device,
                    badge=claim.badge,
                    title=context.title,
                    body=context.body,
                    data=context.push_data(),
                    topic=f"m{facts.message_id}",
                )
                for device in devices
            )
        return _Job(recipient_id=recipient_id, claim=claim, notifications=notifications)

    def _sendable(self, devices: list[DeviceView]) -> list[DeviceView]:
        sendable = []
        for device in devices:
            if device.kind in self._transports:
                sendable.append(device)
            elif device.kind not in self._missing_transport_logged:
                self._missing_transport_logged.add(device.kind)
                logger.warning(
                    "not sending to %s devices: the transport is not enabled in "
                    "KILO_PUSH_TRANSPORTS", device.kind.value,
                )
        return sendable

    # Sending

    async def _send_all(
        self, notifications: Sequence[PushNotification]
    ) -> dict[int, SendOutcome]:
        """Send through each device kind's transport at once; outcomes keyed by id(notification)."""
        by_kind: dict[DeviceKind, list[PushNotification]] = defaultdict(list)
        for notification in notifications:
            by_kind[notification.device.kind].append(notification)
        kinds = list(by_kind)
        results = await asyncio.gather(
            *(self._transports[kind].send(by_kind[kind]) for kind in kinds),
            return_exceptions=True,
        )
        outcomes: dict[int, SendOutcome] = {}
        for kind, result in zip(kinds, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                logger.error("%s transport failed on a batch of %d pushes: %r",
                             kind.value, len(by_kind[kind]), result)
                result = outcomes_for(by_kind[kind], OutcomeKind.TRANSIENT, repr(result))
            for outcome in result:
                outcomes[id(outcome.notification)] = outcome
        return outcomes

    async def _apply_device_outcomes(self, outcomes: Mapping[int, SendOutcome]) -> None:
        now = self._clock.now()
        with self._session_factory() as session:
            for outcome in outcomes.values():
                device = outcome.notification.device
                if outcome.kind is OutcomeKind.DEVICE_GONE:
                    deactivate_device(session, device.id, outcome.detail)
                elif outcome.kind is OutcomeKind.REJECTED:
                    logger.error("push to %s of user %s rejected: %s",
                                 device.redacted(), device.user_id, outcome.detail)
                elif outcome.kind is OutcomeKind.ACCEPTED and outcome.receipt_id:
                    self._store_ticket(session, outcome.receipt_id, device.id, now)

    @staticmethod
    def _store_ticket(
        session: Session, receipt_id: str, device_id: int, now: datetime.datetime
    ) -> None:
        try:
            session.merge(ExpoPushTicket(receipt_id=receipt_id, device_id=device_id, created_at=now))
            session.commit()
        except sa.exc.IntegrityError:
            # The device was deleted while the push was in flight.
            session.rollback()

    # Badge-only pushes

    async def send_badge_update(self, user_id: int, badge: int) -> int:
        """Send a count-only push with ``badge`` to every device of ``user_id``; return sends.

        Failures are logged and not retried: the next change sends a newer absolute number.
        """
        with self._session_factory() as session:
            devices = self._sendable(list_devices(session, user_id))
        if not devices:
            return 0
        notifications = [
            PushNotification(
                device=device, badge=badge, data={"type": BADGE_PUSH_TYPE}, topic=BADGE_TOPIC
            )
            for device in devices
        ]
        outcomes = await self._send_all(notifications)
        await self._apply_device_outcomes(outcomes)
        failed = [o for o in outcomes.values() if o.kind is OutcomeKind.TRANSIENT]
        if failed:
            logger.warning("badge push to user %s failed on %d of %d devices: %s",
                           user_id, len(failed), len(devices), failed[0].detail)
        return len(devices)

    # Recovery

    async def resend_pending(self) -> list[DispatchReport]:
        """Dispatch again every message that still has pending records within the window."""
        now = self._clock.now()
        with self._session_factory() as session:
            message_ids = session.execute(
                sa.select(PushDelivery.message_id)
                .where(
                    PushDelivery.state == DeliveryState.PENDING.value,
                    PushDelivery.expires_at > now,
                )
                .distinct()
                .order_by(PushDelivery.message_id)
            ).scalars().all()
        if message_ids:
            logger.info("resending pending pushes of %d messages", len(message_ids))
        reports = []
        for message_id in message_ids:
            reports.append(await self.send_push_for_conversation(message_id))
        return reports


    async def dispatch_unclaimed(self, since: datetime.datetime) -> list[DispatchReport]:
        """Dispatch the messages created after ``since`` that have no push record at all.

        A process that dies after a message commits but before its dispatch
        claims a first recipient leaves no record behind, so
        ``resend_pending`` cannot see it. Dispatching such a message again
        is safe: claims count each recipient once, and recipients who read
        the message meanwhile are skipped.
        """
        with self._session_factory() as session:
            claimed = sa.select(PushDelivery.message_id).where(
                PushDelivery.message_id == Message.id
            )
            message_ids = session.execute(
                sa.select(Message.id)
                .where(Message.created_at > since, ~sa.exists(claimed))
                .order_by(Message.id)
            ).scalars().all()
        if message_ids:
            logger.info("dispatching %d messages that have no push record yet", len(message_ids))
        reports = []
        for message_id in message_ids:
            reports.append(await self.send_push_for_conversation(message_id))
        return reports


async def send_push_for_conversation(dispatcher: PushDispatcher, message_id: int) -> DispatchReport:
    """Dispatch the pushes of one committed message with ``dispatcher``."""
    return await dispatcher.send_push_for_conversation(message_id)
