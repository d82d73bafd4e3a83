"""Per-tab subscription counts and epochs, without Reflex or sockets."""

from __future__ import annotations

import pytest

from kilo_web.web.subscription_ledger import Change, EpochClock, SubscriptionLedger

EPOCH = 1_000


def test_first_acquire_starts_context() -> None:
    ledger = SubscriptionLedger(EPOCH)

    assert ledger.acquire("/a", EPOCH) is Change.STARTED
    assert ledger.counts == {"/a": 1}


def test_second_holder_is_only_counted() -> None:
    ledger = SubscriptionLedger(EPOCH)
    ledger.acquire("/a", EPOCH)

    assert ledger.acquire("/a", EPOCH) is Change.COUNTED
    assert ledger.counts == {"/a": 2}


def test_last_release_stops_context() -> None:
    ledger = SubscriptionLedger(EPOCH)
    ledger.acquire("/a", EPOCH)
    ledger.acquire("/a", EPOCH)

    assert ledger.release("/a", EPOCH) is Change.COUNTED
    assert ledger.release("/a", EPOCH) is Change.STOPPED
    assert ledger.counts == {}


def test_strict_mode_double_mount_nets_one() -> None:
    ledger = SubscriptionLedger(EPOCH)

    changes = [
        ledger.acquire("/a", EPOCH),
        ledger.release("/a", EPOCH),
        ledger.acquire("/a", EPOCH),
    ]

    assert changes == [Change.STARTED, Change.STOPPED, Change.STARTED]
    assert ledger.counts == {"/a": 1}


@pytest.mark.parametrize(
    ("steps", "expected_counts"),
    [
        # Toggling `active` off, then on.
        ([("+", "/a"), ("-", "/a"), ("+", "/a")], {"/a": 1}),
        # Changing the context: cleanup of the old value, then setup of the new.
        ([("+", "/a"), ("-", "/a"), ("+", "/b")], {"/b": 1}),
        # Two components share a context; one unmounts.
        ([("+", "/a"), ("+", "/a"), ("-", "/a")], {"/a": 1}),
        # Unmounting everything.
        ([("+", "/a"), ("+", "/b"), ("-", "/b"), ("-", "/a")], {}),
    ],
)
def test_sequences_end_in_expected_counts(
    steps: list[tuple[str, str]], expected_counts: dict[str, int]
) -> None:
    ledger = SubscriptionLedger(EPOCH)

    for sign, context in steps:
        if sign == "+":
            ledger.acquire(context, EPOCH)
        else:
            ledger.release(context, EPOCH)

    assert ledger.counts == expected_counts


def test_release_at_zero_is_ignored() -> None:
    ledger = SubscriptionLedger(EPOCH)

    assert ledger.release("/never", EPOCH) is Change.NOT_HELD
    ledger.acquire("/a", EPOCH)
    ledger.release("/a", EPOCH)
    assert ledger.release("/a", EPOCH) is Change.NOT_HELD
    assert ledger.counts == {}


def test_stale_epoch_acquire_is_ignored() -> None:
    ledger = SubscriptionLedger(EPOCH)

    assert ledger.acquire("/a", EPOCH - 1) is Change.STALE_EPOCH
    assert ledger.acquire("/a", EPOCH + 1) is Change.STALE_EPOCH
    assert ledger.counts == {}


def test_stale_epoch_release_keeps_count() -> None:
    ledger = SubscriptionLedger(EPOCH)
    ledger.acquire("/a", EPOCH)

    assert ledger.release("/a", EPOCH - 1) is Change.STALE_EPOCH
    assert ledger.counts == {"/a": 1}


def test_reset_returns_held_and_forgets_counts() -> None:
    ledger = SubscriptionLedger(EPOCH)
    ledger.acquire("/a", EPOCH)
    ledger.acquire("/a", EPOCH)
    ledger.acquire("/b", EPOCH)

    held = ledger.reset(EPOCH + 5)

    assert held == ["/a", "/b"]
    assert ledger.counts == {}
    assert ledger.epoch == EPOCH + 5


def test_cleanup_of_old_epoch_after_reset_is_ignored() -> None:
    ledger = SubscriptionLedger(EPOCH)
    ledger.acquire("/a", EPOCH)
    ledger.reset(EPOCH + 1)
    ledger.acquire("/a", EPOCH + 1)

    # The effect of the old epoch cleans up after the new one subscribed.
    assert ledger.release("/a", EPOCH) is Change.STALE_EPOCH
    assert ledger.counts == {"/a": 1}


def test_reset_to_lower_or_same_epoch_raises() -> None:
    ledger = SubscriptionLedger(EPOCH)

    with pytest.raises(ValueError, match="must be above"):
        ledger.reset(EPOCH)
    with pytest.raises(ValueError, match="must be above"):
        ledger.reset(EPOCH - 1)


def test_limit_rejects_new_context_only() -> None:
    ledger = SubscriptionLedger(EPOCH, max_contexts=2)
    ledger.acquire("/a", EPOCH)
    ledger.acquire("/b", EPOCH)

    assert ledger.acquire("/c", EPOCH) is Change.LIMIT_REACHED
    assert ledger.acquire("/a", EPOCH) is Change.COUNTED
    assert ledger.counts == {"/a": 2, "/b": 1}


def test_constructor_drops_non_positive_counts() -> None:
    ledger = SubscriptionLedger(EPOCH, {"/a": 1, "/b": 0, "/c": -3})

    assert ledger.counts == {"/a": 1}


def test_constructor_rejects_zero_limit() -> None:
    with pytest.raises(ValueError, match="max_contexts=0"):
        SubscriptionLedger(EPOCH, max_contexts=0)


def test_counts_property_is_a_copy() -> None:
    ledger = SubscriptionLedger(EPOCH)
    ledger.acquire("/a", EPOCH)

    ledger.counts["/a"] = 99

    assert ledger.counts == {"/a": 1}


def test_epoch_is_wall_clock_milliseconds() -> None:
    clock = EpochClock(lambda: 1_700_000_000.25)

    assert clock.next_epoch() == 1_700_000_000_250


def test_epochs_increase_when_clock_stands_still() -> None:
    clock = EpochClock(lambda: 5.0)

    epochs = [clock.next_epoch() for _ in range(3)]

    assert epochs == [5000, 5001, 5002]


def test_epoch_increases_when_clock_goes_back() -> None:
    now = [10.0]
    clock = EpochClock(lambda: now[0])
    first = clock.next_epoch()

    now[0] = 9.0

    assert clock.next_epoch() == first + 1


def test_epoch_is_above_previous_of_tab() -> None:
    # A page kept an epoch from a backend whose clock was ahead of this one.
    clock = EpochClock(lambda: 1.0)

    assert clock.next_epoch(previous=50_000) == 50_001
