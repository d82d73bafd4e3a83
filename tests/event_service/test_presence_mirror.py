"""PresenceMirror: ordering by stream numbers, buffering before the state."""

from kilo_web.event_service.presence_mirror import PresenceMirror


def join(user: str) -> dict:
    return {"userId": user}


def test_mirror_buffers_diffs_before_state():
    mirror = PresenceMirror()
    assert mirror.apply("presence.join", join("b"), 4) is False
    assert mirror.apply("presence.join", join("c"), 6) is False
    assert mirror.users == []
    changed = mirror.apply("presence.state", {"users": [join("a"), join("b")]}, 5)
    assert changed
    assert mirror.users == ["a", "b", "c"]
    assert mirror.seq == 6
    assert mirror.pending == []


def test_mirror_drops_diffs_covered_by_state():
    mirror = PresenceMirror()
    mirror.apply("presence.state", {"users": [join("a")]}, 10)
    assert mirror.apply("presence.leave", join("a"), 9) is False
    assert mirror.apply("presence.join", join("z"), 10) is False
    assert mirror.users == ["a"]


def test_mirror_applies_newer_diffs_in_order():
    mirror = PresenceMirror()
    mirror.apply("presence.state", {"users": []}, 0)
    assert mirror.apply("presence.join", join("a"), 1)
    assert mirror.apply("presence.join", join("b"), 2)
    assert mirror.apply("presence.leave", join("a"), 3)
    assert mirror.users == ["b"]
    assert mirror.apply("presence.leave", join("a"), 4) is False


def test_mirror_reset_waits_for_new_state():
    mirror = PresenceMirror()
    mirror.apply("presence.state", {"users": [join("a")]}, 3)
    mirror.reset()
    mirror.apply("presence.join", join("b"), 1)
    assert mirror.users == ["a"]
    mirror.apply("presence.state", {"users": [join("a"), join("b")]}, 1)
    assert mirror.users == ["a", "b"]
    assert mirror.seq == 1


def test_mirror_round_trips_plain_dict():
    mirror = PresenceMirror()
    mirror.apply("presence.join", join("b"), 2)
    copy = PresenceMirror.from_dict(mirror.to_dict())
    assert copy == mirror
    assert PresenceMirror.from_dict(None) == PresenceMirror()


def test_mirror_ignores_unknown_events():
    mirror = PresenceMirror()
    mirror.apply("presence.state", {"users": []}, 0)
    assert mirror.apply("message.created", {"userId": "x"}, 1) is False
    assert mirror.apply("presence.join", {}, 2) is False
    assert mirror.users == []
