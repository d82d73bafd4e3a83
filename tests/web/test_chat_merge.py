"""merge_messages: the message list after live events, replays and reloads."""

from kilo_web.web.chat_state import MessageItem, keep_newest, keep_oldest, merge_messages


def item(message_id: int, seq: int, text: str = "") -> MessageItem:
    return MessageItem(id=message_id, seq=seq, sender_id=1, sender_name="A",
                       sender_is_bot=False, text=text or f"m{message_id}", created_at="")


def test_merge_orders_by_seq():
    merged = merge_messages([item(1, 1), item(3, 3)], [item(2, 2)])
    assert [m["seq"] for m in merged] == [1, 2, 3]


def test_merge_drops_duplicates_by_id():
    merged = merge_messages([item(1, 1), item(2, 2)], [item(2, 2), item(2, 2), item(1, 1)])
    assert [m["id"] for m in merged] == [1, 2]


def test_merge_replay_out_of_order():
    merged = merge_messages([item(5, 5)], [item(7, 7), item(6, 6), item(5, 5)])
    assert [m["seq"] for m in merged] == [5, 6, 7]


def test_merge_newer_copy_wins():
    merged = merge_messages([item(1, 1, "old")], [item(1, 1, "new")])
    assert merged[0]["text"] == "new"


def test_keep_newest_drops_oldest_over_limit():
    kept, dropped = keep_newest([item(n, n) for n in range(1, 6)], 3)
    assert [m["seq"] for m in kept] == [3, 4, 5]
    assert dropped is True


def test_keep_oldest_drops_newest_over_limit():
    kept, dropped = keep_oldest([item(n, n) for n in range(1, 6)], 3)
    assert [m["seq"] for m in kept] == [1, 2, 3]
    assert dropped is True


def test_keep_within_limit_drops_nothing():
    messages = [item(1, 1), item(2, 2)]
    assert keep_newest(messages, 2) == (messages, False)
    assert keep_oldest(messages, 2) == (messages, False)
