"""Exactly-once badge accounting for message pushes.

Each (message, recipient) pair goes through two stages, both recorded in
``push_delivery``:

1. ``claim_delivery`` inserts a ``pending`` record with
   ``INSERT ... ON CONFLICT DO NOTHING`` and, only when that insert created
   the row, raises the recipient's badge bucket by one and stores the
   resulting absolute badge number in the record. Insert and increment
   commit together, so a crash between them leaves neither, and a retry
   that finds the record never counts again and sends the stored number.
2. ``finish_delivery`` marks the record ``delivered`` once every device of
   the recipient got a final response from its push service.

The badge equals the unread count. A message is *counted* for a recipient
when it is unread for them (see ``kilo_web.chat.read_state``) and either
its push was claimed, or it is older than the claim window (the push
idempotency TTL), after which no claim is accepted any more. Reads and
membership changes recount the buckets from that definition
(``refresh_user_badges``), and a claim adds exactly the one message it
counts. So once every posted message has had its push claimed, each
bucket equals the unread messages it covers, and the device badge equals
the user's unread total. Until then, the unread count already includes
messages whose push is still in flight.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
from collections import defaultdict
from collections.abc import Callable

import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat import read_state
from kilo_web.chat.models import ConversationMember, ConversationReadState, Message
from kilo_web.notifications.badges import bucket_for_conversation
from kilo_web.notifications.cleanup import arm_cleanup
from kilo_web.notifications.models import BadgeCount, DeliveryState, PushDelivery
from kilo_web.notifications.sql import dialect_insert, insert_ignore
from kilo_web.settings import get_settings

logger = logging.getLogger(__name__)

_badges = BadgeCount.__table__
_deliveries = PushDelivery.__table__
_members = ConversationMember.__table__
_messages = Message.__table__
_positions = ConversationReadState.__table__


class DispatchStep(str, enum.Enum):
    """Points of a dispatch where a ``Checkpoint`` is called."""

    AFTER_CLAIM = "after_claim"
    """The pending record is inserted; the increment has not run; nothing is committed."""
    AFTER_INCREMENT = "after_increment"
    """The record and the increment are committed; nothing was sent."""
    AFTER_SEND = "after_send"
    """The push services accepted the push; the record is still pending."""
    BEFORE_DELIVERED = "before_delivered"
    """The record was updated to delivered; the update is not committed."""


Checkpoint = Callable[[DispatchStep, int, int], None]
"""Called with (step, message id, recipient id). An exception it raises aborts the dispatch
as a crash would at that point; failure-injection tests use it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MessageFacts:
    """Facts about a committed message that the accounting reads."""

    message_id: int
    conversation_id: str
    instance_id: str
    seq: int
    sender_id: int
    created_at: datetime.datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """The idempotency record of one (message, recipient) push after ``claim_delivery``."""

    delivery_id: int
    state: DeliveryState
    badge: int | None
    """The absolute badge number to send; None when the message was not counted."""
    badge_bucket: str | None
    created: bool
    """True when this call inserted the record (and so did the counting)."""


def default_window() -> datetime.timedelta:
    """Return the claim window: the push idempotency TTL from settings."""
    return datetime.timedelta(seconds=get_settings().push_idempotency_ttl_seconds)


# Reading badges


def bucket_counts(session: Session, user_id: int) -> dict[str, int]:
    """Return the non-zero badge buckets of ``user_id`` by key."""
    rows = session.execute(
        sa.select(_badges.c.badge_bucket, _badges.c.count).where(
            _badges.c.user_id == user_id, _badges.c.count != 0
        )
    ).all()
    return dict(rows)


def device_badge(session: Session, user_id: int) -> int:
    """Return the absolute badge number of ``user_id``: the sum of their buckets."""
    total = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(_badges.c.count), 0)).where(
            _badges.c.user_id == user_id
        )
    ).scalar_one()
    return int(total)


def counted_unread_by_bucket(
    session: Session,
    user_id: int,
    *,
    now: datetime.datetime,
    window: datetime.timedelta | None = None,
) -> dict[str, int]:
    """Count the user's counted unread messages per badge bucket (see the module docstring)."""
    window_start = now - (window or default_window())
    claimed = sa.exists(
        sa.select(_deliveries.c.id).where(
            _deliveries.c.message_id == _messages.c.id,
            _deliveries.c.recipient_id == _members.c.user_id,
        )
    )
    query = read_state.unread_messages_query(
        user_id, [sa.or_(claimed, _messages.c.created_at <= window_start)]
    )
    counts: dict[str, int] = defaultdict(int)
    for conversation_id, instance_id, count in session.execute(query).all():
        counts[bucket_for_conversation(instance_id, conversation_id)] += count
    return dict(counts)


# Writing badges


def refresh_user_badges(
    session: Session,
    user_id: int,
    *,
    now: datetime.datetime,
    window: datetime.timedelta | None = None,
) -> int:
    """Recount every badge bucket of ``user_id``; return the new device badge.

    Runs inside the caller's transaction and does not commit. The bucket rows
    are locked before counting, so a concurrent claim either is counted here
    or adds its increment after this transaction commits.
    """
    member_buckets = {
        bucket_for_conversation(instance_id, conversation_id)
        for conversation_id, instance_id, _ in session.execute(
            read_state.unread_messages_query(user_id)
        ).all()
    }
    for bucket in sorted(member_buckets):
        insert_ignore(
            session,
            _badges,
            {"user_id": user_id, "badge_bucket": bucket, "count": 0, "updated_at": now},
            ["user_id", "badge_bucket"],
        )
    existing = session.execute(
        sa.select(_badges.c.badge_bucket, _badges.c.count)
        .where(_badges.c.user_id == user_id)
        .order_by(_badges.c.badge_bucket)
        .with_for_update()
    ).all()

    counted = counted_unread_by_bucket(session, user_id, now=now, window=window)
    for bucket, old_count in existing:
        new_count = counted.get(bucket, 0)
        if new_count == 0:
            session.execute(
                sa.delete(_badges).where(
                    _badges.c.user_id == user_id, _badges.c.badge_bucket == bucket
                )
            )
        elif new_count != old_count:
            session.execute(
                sa.update(_badges)
                .where(_badges.c.user_id == user_id, _badges.c.badge_bucket == bucket)
                .values(count=new_count, updated_at=now)
            )
    return sum(counted.values())


def _increment_bucket(
    session: Session, user_id: int, bucket: str, now: datetime.datetime
) -> None:
    statement = dialect_insert(session, _badges).values(
        user_id=user_id, badge_bucket=bucket, count=1, updated_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=["user_id", "badge_bucket"],
        set_={"count": _badges.c.count + 1, "updated_at": now},
    )
    session.execute(statement)


# Claims


def _recipient_state(
    session: Session, facts: MessageFacts, recipient_id: int
) -> tuple[bool, bool]:
    """Return (is a member now, message is unread for them), locking their read position."""
    # The shared lock makes a concurrent removal of the member wait for this
    # claim, or this claim wait for the removal and then find no member, so
    # a removal's badge recount never misses an increment.
    joined_at = session.execute(
        sa.select(_members.c.joined_at)
        .where(
            _members.c.conversation_id == facts.conversation_id,
            _members.c.user_id == recipient_id,
        )
        .with_for_update(read=True)
    ).scalar_one_or_none()
    if joined_at is None:
        return False, False
    # The row lock orders this claim against mark_read of the same (user, conversation).
    insert_ignore(
        session,
        _positions,
        {
            "conversation_id": facts.conversation_id,
            "user_id": recipient_id,
            "last_read_seq": 0,
            "updated_at": facts.created_at,
        },
        ["conversation_id", "user_id"],
    )
    position = session.execute(
        sa.select(_positions.c.last_read_seq)
        .where(
            _positions.c.conversation_id == facts.conversation_id,
            _positions.c.user_id == recipient_id,
        )
        .with_for_update()
    ).scalar_one()
    unread = (
        facts.sender_id != recipient_id
        and facts.seq > position
        and facts.created_at >= joined_at
    )
    return True, unread


def _load_claim(session: Session, message_id: int, recipient_id: int) -> Claim:
    row = session.execute(
        sa.select(
            _deliveries.c.id, _deliveries.c.state, _deliveries.c.badge, _deliveries.c.badge_bucket
        ).where(
            _deliveries.c.message_id == message_id, _deliveries.c.recipient_id == recipient_id
        )
    ).one()
    return Claim(
        delivery_id=row.id,
        state=DeliveryState(row.state),
        badge=row.badge,
        badge_bucket=row.badge_bucket,
        created=False,
    )


def claim_window_closed(
    facts: MessageFacts, *, now: datetime.datetime, window: datetime.timedelta
) -> bool:
    """Tell whether claims for this message are no longer accepted at ``now``."""
    return now >= facts.created_at + window


def claim_delivery(
    session: Session,
    facts: MessageFacts,
    recipient_id: int,
    *,
    now: datetime.datetime,
    window: datetime.timedelta | None = None,
    checkpoint: Checkpoint | None = None,
) -> Claim | None:
    """Claim the push of one message to one recipient and count it in their badge; commit.

    Returns the existing record unchanged when the pair was claimed before,
    and None when the claim window of the message has closed (the message
    is then counted by ``refresh_user_badges`` if still unread). A new
    record is ``pending`` with the absolute badge number when the message
    is unread for the recipient, else ``skipped``. The record expires one
    window from ``now``, and writing it arms the cleanup timer.
    """
    window = window or default_window()
    if claim_window_closed(facts, now=now, window=window):
        logger.warning(
            "not claiming push of message %s to user %s: its claim window of %s has closed",
            facts.message_id,
            recipient_id,
            window,
        )
        return None
    expires_at = now + window
    try:
        is_member, unread = _recipient_state(session, facts, recipient_id)
        created = insert_ignore(
            session,
            _deliveries,
            {
                "message_id": facts.message_id,
                "recipient_id": recipient_id,
                "state": DeliveryState.PENDING.value,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "expires_at": expires_at,
            },
            ["message_id", "recipient_id"],
        )
        if not created:
            claim = _load_claim(session, facts.message_id, recipient_id)
            session.commit()
            return claim
        if checkpoint is not None:
            checkpoint(DispatchStep.AFTER_CLAIM, facts.message_id, recipient_id)

        bucket: str | None = None
        badge: int | None = None
        state = DeliveryState.SKIPPED
        if is_member and unread:
            bucket = bucket_for_conversation(facts.instance_id, facts.conversation_id)
            _increment_bucket(session, recipient_id, bucket, now)
            badge = device_badge(session, recipient_id)
            state = DeliveryState.PENDING
        session.execute(
            sa.update(_deliveries)
            .where(
                _deliveries.c.message_id == facts.message_id,
                _deliveries.c.recipient_id == recipient_id,
            )
            .values(state=state.value, badge=badge, badge_bucket=bucket)
        )
        arm_cleanup(session, expires_at, now)
        claim = _load_claim(session, facts.message_id, recipient_id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if checkpoint is not None:
        checkpoint(DispatchStep.AFTER_INCREMENT, facts.message_id, recipient_id)
    return dataclasses.replace(claim, created=True)


def message_is_unread(session: Session, facts: MessageFacts, recipient_id: int) -> bool:
    """Tell whether ``facts`` is unread for ``recipient_id`` now."""
    joined_at = session.execute(
        sa.select(_members.c.joined_at).where(
            _members.c.conversation_id == facts.conversation_id,
            _members.c.user_id == recipient_id,
        )
    ).scalar_one_or_none()
    if joined_at is None or facts.sender_id == recipient_id or facts.created_at < joined_at:
        return False
    return facts.seq > read_state.read_position(session, facts.conversation_id, recipient_id)


def note_send_attempt(session: Session, delivery_id: int, now: datetime.datetime) -> None:
    """Count one send attempt on a pending record; commit."""
    try:
        session.execute(
            sa.update(_deliveries)
            .where(_deliveries.c.id == delivery_id)
            .values(attempts=_deliveries.c.attempts + 1, updated_at=now)
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise


def finish_delivery(
    session: Session,
    claim: Claim,
    state: DeliveryState,
    *,
    message_id: int,
    recipient_id: int,
    now: datetime.datetime,
    checkpoint: Checkpoint | None = None,
) -> bool:
    """Move a pending record to ``delivered`` or ``skipped``; commit; tell if it moved.

    A record already finished, or deleted by the cleanup, is left alone.
    """
    try:
        result = session.execute(
            sa.update(_deliveries)
            .where(
                _deliveries.c.id == claim.delivery_id,
                _deliveries.c.state == DeliveryState.PENDING.value,
            )
            .values(state=state.value, updated_at=now)
        )
        if checkpoint is not None and state is DeliveryState.DELIVERED:
            checkpoint(DispatchStep.BEFORE_DELIVERED, message_id, recipient_id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return result.rowcount == 1
