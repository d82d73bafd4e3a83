"""Badge bucket keys: the one place that builds and parses ``badge_counts.badge_bucket``.

A bucket key is ``<namespace>:<segment>[:<segment>]``. Instance and
conversation ids contain only letters, digits and ``-``, so ``:`` cannot
appear inside a segment, and a key of one namespace can never equal a key
of another:

- ``instance:{instance_id}``: the unread messages of a user in one instance
  (the granularity in use today);
- ``conversation:{instance_id}:{conversation_id}``: the unread messages of a
  user in one conversation (ready for per-conversation badges).

How buckets add up to the badge a device shows: ``bucket_for_conversation``
maps each conversation to exactly one bucket, so a user's buckets partition
their counted unread messages, and the device badge is the sum of all the
user's bucket counts. Changing the granularity means changing
``bucket_for_conversation`` and then rebuilding each user's rows with
``kilo_web.notifications.accounting.refresh_user_badges``, which also clears
the rows of keys no longer in use.
"""

from __future__ import annotations

import dataclasses
import re

from kilo_web.chat.models import ID_MAX_LENGTH
from kilo_web.notifications.models import BADGE_BUCKET_MAX_LENGTH

INSTANCE_NAMESPACE = "instance"
CONVERSATION_NAMESPACE = "conversation"
NAMESPACES = frozenset({INSTANCE_NAMESPACE, CONVERSATION_NAMESPACE})

_SEGMENT = re.compile(rf"[A-Za-z0-9-]{{1,{ID_MAX_LENGTH}}}")

# The longest key, a conversation bucket of two maximum-length ids, must fit the column.
assert len(CONVERSATION_NAMESPACE) + 2 * (ID_MAX_LENGTH + 1) <= BADGE_BUCKET_MAX_LENGTH


class InvalidBucketError(ValueError):
    """Raised when a bucket key or one of its ids is malformed."""


@dataclasses.dataclass(frozen=True)
class BadgeBucket:
    """A parsed bucket key; ``conversation_id`` is None for an instance bucket."""

    namespace: str
    instance_id: str
    conversation_id: str | None = None


def _segment(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise InvalidBucketError(
            f"invalid {kind} id {value!r} in a badge bucket: use 1 to {ID_MAX_LENGTH} "
            "letters, digits or '-'"
        )
    return value


def instance_bucket(instance_id: str) -> str:
    """Return the bucket key of a user's unread messages in one instance."""
    return f"{INSTANCE_NAMESPACE}:{_segment('instance', instance_id)}"


def conversation_bucket(instance_id: str, conversation_id: str) -> str:
    """Return the bucket key of a user's unread messages in one conversation."""
    return (
        f"{CONVERSATION_NAMESPACE}:{_segment('instance', instance_id)}"
        f":{_segment('conversation', conversation_id)}"
    )


def bucket_for_conversation(instance_id: str, conversation_id: str) -> str:
    """Return the bucket that counts a conversation's unread messages: per instance today."""
    del conversation_id  # Per-conversation badges would return conversation_bucket(...).
    return instance_bucket(instance_id)


def parse_bucket(key: str) -> BadgeBucket:
    """Split a bucket key into its namespace and ids, or raise InvalidBucketError."""
    namespace, _, rest = key.partition(":")
    parts = rest.split(":") if rest else []
    if namespace == INSTANCE_NAMESPACE and len(parts) == 1:
        return BadgeBucket(namespace, _segment("instance", parts[0]))
    if namespace == CONVERSATION_NAMESPACE and len(parts) == 2:
        return BadgeBucket(
            namespace, _segment("instance", parts[0]), _segment("conversation", parts[1])
        )
    raise InvalidBucketError(
        f"invalid badge bucket {key!r}: expected 'instance:<id>' or "
        "'conversation:<instance id>:<conversation id>'"
    )
