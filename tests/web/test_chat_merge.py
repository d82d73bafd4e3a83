"""merge_messages: the message list after live events, replays and reloads."""

from kilo_web.web.chat_state import MessageItem, merge_messages


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
