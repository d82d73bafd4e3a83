"""Read positions and unread counts.

Each conversation member has a read position: the ``seq`` of the newest
message they have read (``conversation_read_state.last_read_seq``). A
message is *unread* for a user when all of these hold:

- the user is a member of its conversation now;
- it was created at or after the user joined the conversation;
- someone else sent it;
- its ``seq`` is above the user's read position.

Positions never move backwards, and reading one conversation never changes
another. Every change recounts the user's badge buckets in the same
transaction (``kilo_web.notifications.accounting``) and then publishes
``unread.changed`` on the user's private context ``/users/{id}`` with the
unread counts, their total and the badge number.

The badge counts a message from the moment its push was claimed, a few
milliseconds after the message was committed. So ``badge`` can be below
``total`` while a push is in flight (see the accounting module).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat.errors import InvalidLimitError
from kilo_web.chat.models import (
    Conversation,
    ConversationMember,
    ConversationReadState,
    Message,
    utc_now,
)
from kilo_web.chat.publisher import Publisher
from kilo_web.chat.service import get_conversation, require_conversation_member
from kilo_web.event_service.contexts import user_context

# accounting imports this module too; both only use each other's functions at call time.
from kilo_web.notifications import accounting
from kilo_web.notifications.sql import insert_ignore

logger = logging.getLogger(__name__)

UNREAD_CHANGED_EVENT = "unread.changed"
"""Event published to ``/users/{id}`` after a user's unread counts or badge changed."""

_members = ConversationMember.__table__
_conversations = Conversation.__table__
_positions = ConversationReadState.__table__
_messages = Message.__table__


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnreadSummary:
    """A user's unread counts per conversation, their total and the badge number."""

    user_id: int
    counts: dict[str, int]
    """Unread messages per conversation id, for every conversation the user is a member of."""
    total: int
    badge: int
    """The absolute number the user's devices show: the sum of the user's badge buckets."""

    def to_event_data(self) -> dict[str, Any]:
        """Return the JSON payload of the ``unread.changed`` event."""
        return {
            "userId": self.user_id,
            "conversations": dict(self.counts),
            "total": self.total,
            "badge": self.badge,
        }


UnreadChangeHook = Callable[[UnreadSummary], Awaitable[None]]
"""Called after a read changed a user's counts; the notifications service sends badge pushes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReadResult:
    """Outcome of ``mark_read`` or ``mark_all_read``."""

    changed: bool
    """True when at least one read position moved forward."""
    summary: UnreadSummary
    badge_before: int


# Queries


def unread_messages_query(
    user_id: int, extra_conditions: Sequence[sa.ColumnElement[bool]] = ()
) -> sa.Select[Any]:
    """Build the query of unread counts per conversation of ``user_id``.

    Rows are ``(conversation_id, instance_id, count)``, one per conversation
    the user is a member of. ``extra_conditions`` further restrict which
    unread messages are counted; they may refer to the ``message`` and
    ``conversation_member`` tables.
    """
    message_is_unread = sa.and_(
        _messages.c.conversation_id == _members.c.conversation_id,
        _messages.c.seq > sa.func.coalesce(_positions.c.last_read_seq, 0),
        _messages.c.sender_id != _members.c.user_id,
        _messages.c.created_at >= _members.c.joined_at,
        *extra_conditions,
    )
    return (
        sa.select(
            _members.c.conversation_id,
            _conversations.c.instance_id,
            sa.func.count(_messages.c.id),
        )
        .select_from(
            _members.join(_conversations, _conversations.c.id == _members.c.conversation_id)
            .outerjoin(
                _positions,
                sa.and_(
                    _positions.c.conversation_id == _members.c.conversation_id,
                    _positions.c.user_id == _members.c.user_id,
                ),
            )
            .outerjoin(_messages, message_is_unread)
        )
        .where(_members.c.user_id == user_id)
        .group_by(_members.c.conversation_id, _conversations.c.instance_id)
    )


def unread_counts(session: Session, user_id: int) -> dict[str, int]:
    """Return the unread count of every conversation ``user_id`` is a member of."""
    rows = session.execute(unread_messages_query(user_id)).all()
    return {conversation_id: count for conversation_id, _, count in rows}


def unread_total(session: Session, user_id: int) -> int:
    """Return the number of unread messages of ``user_id`` over all conversations."""
    return sum(unread_counts(session, user_id).values())


def unread_summary(session: Session, user_id: int) -> UnreadSummary:
    """Return the unread counts, their total and the badge number of ``user_id``."""
    counts = unread_counts(session, user_id)
    return UnreadSummary(
        user_id=user_id,
        counts=counts,
        total=sum(counts.values()),
        badge=accounting.device_badge(session, user_id),
    )


def read_position(session: Session, conversation_id: str, user_id: int) -> int:
    """Return the ``seq`` of the newest message ``user_id`` has read (0 when none)."""
    position = session.execute(
        sa.select(_positions.c.last_read_seq).where(
            _positions.c.conversation_id == conversation_id, _positions.c.user_id == user_id
        )
    ).scalar_one_or_none()
    return position or 0


# Writes


def advance_read_position(
    session: Session,
    conversation_id: str,
    user_id: int,
    up_to_seq: int,
    *,
    now: datetime.datetime,
) -> bool:
    """Move the read position up to ``up_to_seq`` if that is forward; tell if it moved.

    Runs inside the caller's transaction and does not commit. The update
    keeps the larger value in one statement, so concurrent readers cannot
    move a position backwards.
    """
    created = insert_ignore(
        session,
        _positions,
        {
            "conversation_id": conversation_id,
            "user_id": user_id,
            "last_read_seq": up_to_seq,
            "updated_at": now,
        },
        ["conversation_id", "user_id"],
    )
    if created:
        return up_to_seq > 0
    result = session.execute(
        sa.update(_positions)
        .where(
            _positions.c.conversation_id == conversation_id,
            _positions.c.user_id == user_id,
            _positions.c.last_read_seq < up_to_seq,
        )
        .values(last_read_seq=up_to_seq, updated_at=now)
    )
    return result.rowcount == 1


def _check_up_to_seq(up_to_seq: int | None) -> int | None:
    if up_to_seq is None:
        return None
    if isinstance(up_to_seq, bool) or not isinstance(up_to_seq, int) or up_to_seq < 0:
        raise InvalidLimitError(f"up_to_seq must be a non-negative integer, got {up_to_seq!r}")
    return up_to_seq


def mark_read_in_transaction(
    session: Session,
    conversation_id: str,
    user_id: int,
    up_to_seq: int | None = None,
    *,
    now: datetime.datetime,
    dispatch_window: datetime.timedelta | None = None,
) -> bool:
    """Move a read position and recount the user's badge buckets, without committing.

    ``up_to_seq`` defaults to the conversation's newest message and is
    capped there. Raises InvalidLimitError, ConversationNotFoundError or
    NotAMemberError.
    """
    up_to_seq = _check_up_to_seq(up_to_seq)
    conversation = get_conversation(session, conversation_id)
    require_conversation_member(session, conversation_id, user_id)
    newest = conversation.last_message_seq
    target = newest if up_to_seq is None else min(up_to_seq, newest)
    moved = advance_read_position(session, conversation_id, user_id, target, now=now)
    if moved:
        accounting.refresh_user_badges(session, user_id, now=now, window=dispatch_window)
    return moved


async def publish_unread_changed(
    publisher: Publisher | None, summary: UnreadSummary
) -> None:
    """Publish ``unread.changed`` to the user's context; log and swallow a failure."""
    if publisher is None:
        return
    try:
        await publisher.publish(
            user_context(summary.user_id), UNREAD_CHANGED_EVENT, summary.to_event_data()
        )
    except Exception:
        # The positions are committed; the client catches up on its next load.
        logger.exception("failed to publish %s for user %s", UNREAD_CHANGED_EVENT, summary.user_id)


async def _after_change(
    summary: UnreadSummary,
    badge_before: int,
    publisher: Publisher | None,
    on_change: UnreadChangeHook | None,
) -> None:
    await publish_unread_changed(publisher, summary)
    if on_change is None or summary.badge == badge_before:
        return
    try:
        await on_change(summary)
    except Exception:
        logger.exception("unread change hook failed for user %s", summary.user_id)


async def mark_read(
    session: Session,
    conversation_id: str,
    user_id: int,
    up_to_seq: int | None = None,
    *,
    publisher: Publisher | None = None,
    on_change: UnreadChangeHook | None = None,
    now: datetime.datetime | None = None,
    dispatch_window: datetime.timedelta | None = None,
) -> ReadResult:
    """Mark a conversation read up to ``up_to_seq`` (default: its newest message); commit.

    The position never moves backwards and no other conversation changes.
    When it moved, publishes ``unread.changed`` through ``publisher`` and,
    if the badge number changed, calls ``on_change`` (the notifications
    service's badge push). ``dispatch_window`` is the push claim window
    (default: the push idempotency TTL from settings). Raises
    InvalidLimitError, ConversationNotFoundError or NotAMemberError.
    """
    now = now or utc_now()
    try:
        badge_before = accounting.device_badge(session, user_id)
        moved = mark_read_in_transaction(
            session, conversation_id, user_id, up_to_seq, now=now, dispatch_window=dispatch_window
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    summary = unread_summary(session, user_id)
    if moved:
        logger.debug("user %s read conversation %s", user_id, conversation_id)
        await _after_change(summary, badge_before, publisher, on_change)
    return ReadResult(changed=moved, summary=summary, badge_before=badge_before)


async def mark_all_read(
    session: Session,
    user_id: int,
    *,
    publisher: Publisher | None = None,
    on_change: UnreadChangeHook | None = None,
    now: datetime.datetime | None = None,
    dispatch_window: datetime.timedelta | None = None,
) -> ReadResult:
    """Mark every conversation of ``user_id`` read up to its newest message; commit.

    Publishes and calls ``on_change`` like ``mark_read``.
    """
    now = now or utc_now()
    try:
        badge_before = accounting.device_badge(session, user_id)
        rows = session.execute(
            sa.select(_conversations.c.id, _conversations.c.last_message_seq)
            .join(_members, _members.c.conversation_id == _conversations.c.id)
            .where(_members.c.user_id == user_id)
            .order_by(_conversations.c.id)
        ).all()
        moved = False
        for conversation_id, newest in rows:
            moved |= advance_read_position(session, conversation_id, user_id, newest, now=now)
        # Recounting even when no position moved repairs a badge that drifted.
        accounting.refresh_user_badges(session, user_id, now=now, window=dispatch_window)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    summary = unread_summary(session, user_id)
    if moved or summary.badge != badge_before:
        logger.info("user %s marked all %d conversations read", user_id, len(rows))
        await _after_change(summary, badge_before, publisher, on_change)
    return ReadResult(changed=moved, summary=summary, badge_before=badge_before)


async def refresh_unread(
    session: Session,
    user_id: int,
    *,
    publisher: Publisher | None = None,
    on_change: UnreadChangeHook | None = None,
    now: datetime.datetime | None = None,
    dispatch_window: datetime.timedelta | None = None,
) -> UnreadSummary:
    """Recount a user's badge buckets and publish the counts; commit.

    Call it after a change that affects unread counts without moving a read
    position, such as removing the user from a conversation.
    """
    now = now or utc_now()
    try:
        badge_before = accounting.device_badge(session, user_id)
        accounting.refresh_user_badges(session, user_id, now=now, window=dispatch_window)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    summary = unread_summary(session, user_id)
    await _after_change(summary, badge_before, publisher, on_change)
    return summary
