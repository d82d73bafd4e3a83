"""build_timeline: day separators, sender groups and the unread divider."""

from __future__ import annotations

import datetime
import zoneinfo

from kilo_web.web.timeline import (
    FAILED,
    PENDING,
    SENT,
    MessageItem,
    build_timeline,
    day_label,
    resolve_time_zone,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def message(seq: int, sender: int, at: datetime.datetime, *, status: str = SENT) -> MessageItem:
    return MessageItem(
        id=seq if status == SENT else 0, seq=seq if status == SENT else 0, sender_id=sender,
        sender_name=f"user {sender}", sender_is_bot=False, text=f"m{seq}", markdown=False,
        created_at=at.isoformat(), status=status, client_id="" if status == SENT else f"c{seq}",
        edited=False, deleted=False,
    )


def minutes_ago(minutes: float) -> datetime.datetime:
    return NOW - datetime.timedelta(minutes=minutes)


def timeline(messages, **kwargs):
    return build_timeline(messages, now=NOW, time_zone=kwargs.pop("time_zone", UTC),
                          viewer_id=kwargs.pop("viewer_id", 1), **kwargs)


def test_timeline_groups_one_sender_within_window():
    rows = timeline([message(1, 2, minutes_ago(10)), message(2, 2, minutes_ago(8)),
                     message(3, 2, minutes_ago(4))])
    assert [row["group_start"] for row in rows] == [True, False, False]


def test_timeline_splits_group_after_window():
    rows = timeline([message(1, 2, minutes_ago(20)), message(2, 2, minutes_ago(14))])
    assert [row["group_start"] for row in rows] == [True, True]


def test_timeline_splits_group_on_other_sender():
    rows = timeline([message(1, 2, minutes_ago(3)), message(2, 3, minutes_ago(2)),
                     message(3, 2, minutes_ago(1))])
    assert [row["group_start"] for row in rows] == [True, True, True]


def test_timeline_day_separators_today_yesterday_date():
    rows = timeline([
        message(1, 2, datetime.datetime(2026, 11, 30, 9, 0, tzinfo=UTC)),
        message(2, 2, datetime.datetime(2026, 11, 30, 9, 1, tzinfo=UTC)),
        message(3, 2, datetime.datetime(2026, 12, 4, 23, 59, tzinfo=UTC)),
        message(4, 2, datetime.datetime(2026, 12, 5, 0, 1, tzinfo=UTC)),
    ])
    assert [row["day_label"] for row in rows] == ["Monday 30 November 2026", "", "Yesterday",
                                                  "Today"]
    # Two minutes apart, but across midnight: a new day starts a new group.
    assert rows[3]["group_start"] is True


def test_timeline_days_follow_reader_time_zone():
    # 23:30 UTC on 4 December is already 5 December in Tokyo.
    at = datetime.datetime(2026, 12, 4, 23, 30, tzinfo=UTC)
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    assert timeline([message(1, 2, at)])[0]["day_label"] == "Yesterday"
    assert timeline([message(1, 2, at)], time_zone=tokyo)[0]["day_label"] == "Today"
    assert timeline([message(1, 2, at)], time_zone=tokyo)[0]["exact_time"] == (
        "Saturday 5 December 2026, 08:30:00")


def test_timeline_unread_divider_at_first_message_of_others():
    rows = timeline([message(1, 2, minutes_ago(4)), message(2, 1, minutes_ago(3)),
                     message(3, 2, minutes_ago(2)), message(4, 2, minutes_ago(1))],
                    read_seq=1)
    # Seq 2 is the reader's own message, so the divider goes above seq 3.
    assert [row["first_unread"] for row in rows] == [False, False, True, False]
    assert rows[2]["group_start"] is True


def test_timeline_no_divider_without_read_position():
    rows = timeline([message(1, 2, minutes_ago(2))], read_seq=None)
    assert rows[0]["first_unread"] is False


def test_timeline_local_messages_after_stored():
    rows = timeline([message(7, 1, minutes_ago(1), status=PENDING), message(5, 2, minutes_ago(3)),
                     message(8, 1, minutes_ago(1), status=FAILED), message(4, 2, minutes_ago(4))])
    assert [row["key"] for row in rows] == ["4", "5", "pending-c7", "pending-c8"]
    assert [row["mine"] for row in rows] == [False, False, True, True]
    assert [row["group_start"] for row in rows] == [True, False, True, False]


def test_day_label_older_date():
    assert day_label(datetime.date(2026, 1, 2), datetime.date(2026, 12, 5)) == "Friday 2 January 2026"


def test_resolve_time_zone_unknown_falls_back_to_utc():
    assert resolve_time_zone("Not/AZone") is UTC
    assert resolve_time_zone("") is UTC
    assert resolve_time_zone("Europe/Paris") == zoneinfo.ZoneInfo("Europe/Paris")
