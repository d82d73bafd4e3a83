"""SubscriptionCounts and SubscriptionTable without sockets."""

from kilo_web.event_service.refcount import SubscriptionCounts, SubscriptionTable


def test_counts_acquire_reports_first_holder_only():
    counts = SubscriptionCounts()
    assert counts.acquire(["/a", "/b"]) == ["/a", "/b"]
    assert counts.acquire(["/a"]) == []
    assert counts.snapshot() == {"/a": 2, "/b": 1}


def test_counts_acquire_same_context_twice_in_batch():
    counts = SubscriptionCounts()
    assert counts.acquire(["/a", "/a"]) == ["/a"]
    assert counts.snapshot() == {"/a": 2}


def test_counts_release_reports_last_holder_only():
    counts = SubscriptionCounts()
    counts.acquire(["/a", "/a", "/b"])
    assert counts.release(["/a", "/b"]) == ["/b"]
    assert counts.release(["/a"]) == ["/a"]
    assert counts.snapshot() == {}


def test_counts_release_unheld_is_noop():
    counts = SubscriptionCounts()
    assert counts.release(["/never"]) == []
    counts.acquire(["/a"])
    counts.release(["/a"])
    assert counts.release(["/a"]) == []
    assert counts.snapshot() == {}
    assert len(counts) == 0


def test_counts_active_after_mixed_history():
    counts = SubscriptionCounts()
    counts.acquire(["/x"])
    counts.release(["/x"])
    counts.acquire(["/y", "/x"])
    counts.acquire(["/z"])
    counts.release(["/z"])
    assert counts.active() == ["/y", "/x"]


def test_counts_strict_mode_sequence_nets_one():
    counts = SubscriptionCounts()
    wire = [counts.acquire(["/x"]), counts.release(["/x"]), counts.acquire(["/x"])]
    assert wire == [["/x"], ["/x"], ["/x"]]
    assert counts.snapshot() == {"/x": 1}


def test_table_node_transitions():
    table: SubscriptionTable[int] = SubscriptionTable()
    assert table.subscribe(1, ["/a", "/b"]) == ["/a", "/b"]
    assert table.subscribe(2, ["/a"]) == []
    assert table.subscribe(1, ["/a"]) == []
    assert table.unsubscribe(1, ["/a"]) == []
    assert table.unsubscribe(2, ["/a"]) == ["/a"]
    assert table.holders("/b") == {1}


def test_table_unsubscribe_unknown_is_noop():
    table: SubscriptionTable[int] = SubscriptionTable()
    assert table.unsubscribe(1, ["/a"]) == []
    table.subscribe(1, ["/a"])
    assert table.unsubscribe(1, ["/zzz"]) == []
    assert table.contexts_of(1) == {"/a"}


def test_table_drop_releases_everything():
    table: SubscriptionTable[int] = SubscriptionTable()
    table.subscribe(1, ["/a", "/b"])
    table.subscribe(2, ["/b"])
    assert sorted(table.drop(1)) == ["/a"]
    assert table.contexts() == ["/b"]
    assert table.drop(1) == []
    assert table.count_for(1) == 0
