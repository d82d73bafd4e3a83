"""Badge bucket keys (kilo_web.notifications.badges)."""

from __future__ import annotations

import pytest

from kilo_web.notifications.badges import (
    BadgeBucket,
    InvalidBucketError,
    bucket_for_conversation,
    conversation_bucket,
    instance_bucket,
    parse_bucket,
)
from kilo_web.notifications.models import BADGE_BUCKET_MAX_LENGTH


def test_instance_bucket_key():
    assert instance_bucket("sandbox-1") == "instance:sandbox-1"


def test_conversation_bucket_key():
    assert conversation_bucket("sandbox-1", "general") == "conversation:sandbox-1:general"


def test_namespaces_never_collide():
    ids = ["a", "b", "a-b", "instance", "conversation", "x" * 64]
    instance_keys = {instance_bucket(i) for i in ids}
    conversation_keys = {conversation_bucket(i, c) for i in ids for c in ids}

    assert instance_keys.isdisjoint(conversation_keys)
    assert len(conversation_keys) == len(ids) ** 2


def test_keys_round_trip():
    assert parse_bucket(instance_bucket("s1")) == BadgeBucket("instance", "s1")
    assert parse_bucket(conversation_bucket("s1", "c1")) == BadgeBucket("conversation", "s1", "c1")


def test_longest_key_fits_column():
    assert len(conversation_bucket("i" * 64, "c" * 64)) <= BADGE_BUCKET_MAX_LENGTH


@pytest.mark.parametrize("bad_id", ["", "a:b", "a/b", "x" * 65, None, "é"])
def test_invalid_ids_rejected(bad_id):
    with pytest.raises(InvalidBucketError):
        instance_bucket(bad_id)
    with pytest.raises(InvalidBucketError):
        conversation_bucket("s1", bad_id)


@pytest.mark.parametrize("key", ["instance", "instance:", "instance:a:b", "conversation:a", "other:a", ""])
def test_malformed_keys_rejected(key):
    with pytest.raises(InvalidBucketError):
        parse_bucket(key)


def test_conversations_map_to_instance_bucket_today():
    assert bucket_for_conversation("s1", "c1") == bucket_for_conversation("s1", "c2")
    assert bucket_for_conversation("s1", "c1") == instance_bucket("s1")
