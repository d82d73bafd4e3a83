"""The rows of a conversation's message list: day separators, sender groups, unread divider.

``build_timeline`` is pure: messages, the current time and the reader's time
zone in, display rows out. The page renders the rows as they are, so the
rules below are tested without a browser:

- a row starts a new day when its local date differs from the previous
  row's; the first row always does. The day is labelled "Today",
  "Yesterday", or the date ("Monday 30 November 2026");
- a row starts a sender group, which shows the name and avatar, unless the
  previous row has the same sender, the same day, and was sent at most
  ``group_window`` earlier;
- the first message after the reader's read position, sent by someone
  else, carries the "new messages" divider, and starts a group.

Pending and failed messages (sent from this page, not yet stored) come after
the stored ones, in the order they were sent.
"""

from __future__ import annotations

import datetime
import logging
import zoneinfo
from collections.abc import Sequence
from typing import TypedDict

logger = logging.getLogger(__name__)

GROUP_WINDOW = datetime.timedelta(minutes=5)
"""Maximum gap between two messages of one sender that share a name and avatar."""

SENT = "sent"
PENDING = "pending"
FAILED = "failed"


class MessageItem(TypedDict):
    """A message as the page keeps it in its state."""

    id: int
    """The stored message id; 0 for a message that is not stored yet."""
    seq: int
    sender_id: int
    sender_name: str
    sender_is_bot: bool
    text: str
    markdown: bool
    """True when the message has a Markdown block."""
    created_at: str
    """ISO 8601 with a UTC offset."""
    status: str
    """``sent``, ``pending`` or ``failed``."""
    client_id: str
    """The client message id it was posted with, or empty."""
    edited: bool
    """True when the sender edited the message after sending it."""
    deleted: bool
    """True when the sender deleted the message; its text is then empty."""


class TimelineRow(TypedDict):
    """A message with what the page shows around it."""

    key: str
    """Unique among the rows: the message id, or ``pending-`` and the client id."""
    message: MessageItem
    day_label: str
    """The day separator shown above the row, or empty."""
    group_start: bool
    """True when the row shows the sender's name and avatar."""
    first_unread: bool
    """True when the "new messages" divider is shown above the row."""
    exact_time: str
    """The local send time in full, for the hover title."""
    mine: bool


def resolve_time_zone(name: str) -> datetime.tzinfo:
    """Return the IANA time zone ``name``, or UTC when it is empty or unknown."""
    if not name:
        return datetime.timezone.utc
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        logger.info("unknown time zone %r from the browser; showing times in UTC", name)
        return datetime.timezone.utc


def parse_timestamp(value: str) -> datetime.datetime:
    """Parse an ISO 8601 timestamp; a value without an offset is taken as UTC."""
    parsed = datetime.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def day_label(day: datetime.date, today: datetime.date) -> str:
    """Return "Today", "Yesterday" or the full date of ``day``."""
    if day == today:
        return "Today"
    if day == today - datetime.timedelta(days=1):
        return "Yesterday"
    return f"{day:%A} {day.day} {day:%B %Y}"


def exact_time(moment: datetime.datetime) -> str:
    """Return a local time in full, as in "Saturday 5 December 2026, 14:03:09"."""
    return f"{moment:%A} {moment.day} {moment:%B %Y, %H:%M:%S}"


def build_timeline(
    messages: Sequence[MessageItem],
    *,
    now: datetime.datetime,
    time_zone: datetime.tzinfo,
    viewer_id: int,
    read_seq: int | None = None,
    group_window: datetime.timedelta = GROUP_WINDOW,
) -> list[TimelineRow]:
    """Return the display rows of ``messages``, stored ones first in ``seq`` order.

    ``read_seq`` is the reader's read position when the conversation was
    opened; None shows no unread divider. ``now`` must be timezone-aware.
    """
    stored = sorted((m for m in messages if m["status"] == SENT), key=lambda m: m["seq"])
    local = [m for m in messages if m["status"] != SENT]
    today = now.astimezone(time_zone).date()

    rows: list[TimelineRow] = []
    previous: MessageItem | None = None
    previous_time: datetime.datetime | None = None
    unread_marked = False
    for message in [*stored, *local]:
        sent_at = parse_timestamp(message["created_at"]).astimezone(time_zone)
        new_day = previous_time is None or sent_at.date() != previous_time.date()
        first_unread = (
            read_seq is not None
            and not unread_marked
            and message["status"] == SENT
            and message["seq"] > read_seq
            and message["sender_id"] != viewer_id
        )
        unread_marked = unread_marked or first_unread
        same_group = (
            previous is not None
            and previous_time is not None
            and not new_day
            and not first_unread
            and previous["sender_id"] == message["sender_id"]
            and sent_at - previous_time <= group_window
        )
        rows.append(TimelineRow(
            key=str(message["id"]) if message["status"] == SENT else f"pending-{message['client_id']}",
            message=message,
            day_label=day_label(sent_at.date(), today) if new_day else "",
            group_start=not same_group,
            first_unread=first_unread,
            exact_time=exact_time(sent_at),
            mine=message["sender_id"] == viewer_id,
        ))
        previous, previous_time = message, sent_at
    return rows
