"""The cleanup timer that deletes expired ``push_delivery`` records.

The timer's next run time lives in the ``scheduled_job`` row named
``CLEANUP_JOB``, so it survives a restart. Its rules:

- Writing a pending record arms the timer for that record's expiry only
  when no run is armed or the armed run is later (``arm_cleanup``). Later
  writes never move an armed run later, so a busy conversation cannot
  postpone the cleanup for ever.
- A run deletes every record whose ``expires_at`` has passed, then re-arms
  the timer for the earliest remaining expiry, or disarms it when none is
  left (``run_cleanup``).
- ``CleanupTimer`` is the asyncio task that sleeps until the armed time and
  runs the cleanup. On start it reads the persisted time, so a run that fell
  due while the process was down happens at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.notifications.clock import Clock, SystemClock
from kilo_web.notifications.models import PushDelivery, ScheduledJob
from kilo_web.notifications.sql import insert_ignore

logger = logging.getLogger(__name__)

CLEANUP_JOB = "push_delivery_cleanup"
"""Name of the ``scheduled_job`` row that stores the cleanup timer."""

_jobs = ScheduledJob.__table__
_deliveries = PushDelivery.__table__


@dataclasses.dataclass(frozen=True)
class CleanupRun:
    """Outcome of one ``run_cleanup`` call."""

    ran: bool
    """False when the timer was not due (or not armed) at ``now``."""
    deleted: int
    next_run_at: datetime.datetime | None


def _lock_job_row(session: Session, now: datetime.datetime) -> datetime.datetime | None:
    """Create the timer row if missing, lock it, and return its ``next_run_at``."""
    insert_ignore(
        session, _jobs, {"name": CLEANUP_JOB, "next_run_at": None, "updated_at": now}, ["name"]
    )
    return session.execute(
        sa.select(_jobs.c.next_run_at).where(_jobs.c.name == CLEANUP_JOB).with_for_update()
    ).scalar_one()


def arm_cleanup(
    session: Session, expires_at: datetime.datetime, now: datetime.datetime
) -> datetime.datetime:
    """Arm the timer for ``expires_at`` unless an earlier run is armed; return the armed time.

    Runs inside the caller's transaction and does not commit.
    """
    armed = _lock_job_row(session, now)
    if armed is not None and armed <= expires_at:
        return armed
    session.execute(
        sa.update(_jobs)
        .where(_jobs.c.name == CLEANUP_JOB)
        .values(next_run_at=expires_at, updated_at=expires_at)
    )
    return expires_at


def next_cleanup_at(session: Session) -> datetime.datetime | None:
    """Return the armed run time, or None when the timer is not armed."""
    return session.execute(
        sa.select(_jobs.c.next_run_at).where(_jobs.c.name == CLEANUP_JOB)
    ).scalar_one_or_none()


def run_cleanup(session: Session, now: datetime.datetime) -> CleanupRun:
    """Delete expired records and re-arm the timer, if the timer is due at ``now``; commit.

    The timer row is locked first, so a record written concurrently either
    is seen by the re-arm query or arms the timer itself after this commit.
    """
    try:
        armed = _lock_job_row(session, now)
        if armed is None or armed > now:
            session.commit()
            return CleanupRun(ran=False, deleted=0, next_run_at=armed)
        deleted = session.execute(
            sa.delete(_deliveries).where(_deliveries.c.expires_at <= now)
        ).rowcount
        next_run_at = session.execute(sa.select(sa.func.min(_deliveries.c.expires_at))).scalar()
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.name == CLEANUP_JOB)
            .values(next_run_at=next_run_at, updated_at=now)
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    # min() over a UTCDateTime column comes back without the column's type on SQLite.
    if next_run_at is not None and not isinstance(next_run_at, datetime.datetime):
        next_run_at = datetime.datetime.fromisoformat(str(next_run_at))
    if next_run_at is not None and next_run_at.tzinfo is None:
        next_run_at = next_run_at.replace(tzinfo=datetime.timezone.utc)
    logger.info(
        "push delivery cleanup deleted %d expired records; next run at %s",
        deleted,
        next_run_at.isoformat() if next_run_at else "none (disarmed)",
    )
    return CleanupRun(ran=True, deleted=deleted, next_run_at=next_run_at)


class CleanupTimer:
    """The asyncio task that runs ``run_cleanup`` when the persisted timer falls due.

    ``notify_armed`` wakes the task when this process armed the timer.
    Other processes that share the database arm it too, so the task also
    re-reads the row every ``poll_seconds``.
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        clock: Clock | None = None,
        poll_seconds: float = 60.0,
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock or SystemClock()
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        """Number of cleanup runs this timer has performed."""

    def notify_armed(self) -> None:
        """Wake the task so that it reads the newly armed time."""
        self._wake.set()

    def start(self) -> None:
        """Start the task in the running event loop; a second call does nothing."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="push-delivery-cleanup")

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        logger.info("push delivery cleanup timer started")
        try:
            while True:
                try:
                    await self._step()
                except Exception:
                    # A database outage must not end the timer; the armed time is
                    # still persisted, so the next step tries the same run again.
                    logger.exception("push delivery cleanup failed; retrying after the poll interval")
                    await self._sleep_or_wake(self._poll_seconds)
        finally:
            logger.info("push delivery cleanup timer stopped")

    async def _step(self) -> None:
        # Cleared before the read, so an arm that happens after it still wakes the sleep.
        self._wake.clear()
        with self._session_factory() as session:
            armed = next_cleanup_at(session)
        now = self._clock.now()
        if armed is not None and armed <= now:
            with self._session_factory() as session:
                run_cleanup(session, now)
            self.runs += 1
            return
        delay = self._poll_seconds
        if armed is not None:
            delay = min(delay, (armed - now).total_seconds())
        await self._sleep_or_wake(delay)

    async def _sleep_or_wake(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (sleeper, waker):
                future.cancel()
