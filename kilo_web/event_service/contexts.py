"""Builders and validation for event-service context paths.

A context is a slash-separated path such as ``/kiloclaw/s1/c1``. Presence
contexts are built by prefixing ``/presence`` onto a chat context, so the
segment shape of each tier is defined once, here.
"""

from __future__ import annotations

import re

MAX_CONTEXT_LENGTH = 256
"""Longest context string the event service accepts, in characters."""

PRESENCE_PREFIX = "/presence"
PLATFORM_PRESENCE_CONTEXT = f"{PRESENCE_PREFIX}/platform"

_SEGMENT = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_CONTEXT = re.compile(r"(?:/[A-Za-z0-9_.:@-]{1,64}){1,8}")


class InvalidContextError(ValueError):
    """Raised when a context path or one of its segments is malformed."""


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise InvalidContextError(
            f"invalid {name} {value!r}: use 1 to 64 letters, digits or _ . : @ -"
        )
    return value


def validate_context(context: object) -> str:
    """Return ``context`` if it is a well-formed path, else raise InvalidContextError."""
    if not isinstance(context, str):
        raise InvalidContextError(f"context must be a string, got {type(context).__name__}")
    if len(context) > MAX_CONTEXT_LENGTH:
        raise InvalidContextError(
            f"context {context[:40]!r}... is {len(context)} characters long; "
            f"the maximum is {MAX_CONTEXT_LENGTH}"
        )
    if not _CONTEXT.fullmatch(context):
        raise InvalidContextError(
            f"invalid context {context!r}: use /segment/... with 1 to 8 segments of "
            "letters, digits or _ . : @ -"
        )
    return context


def kiloclaw_instance_context(sandbox_id: str) -> str:
    """Return the context of a kiloclaw instance, ``/kiloclaw/{sandbox_id}``."""
    return f"/kiloclaw/{_segment('sandbox id', sandbox_id)}"


def kiloclaw_conversation_context(sandbox_id: str, conversation_id: str) -> str:
    """Return the context of a conversation, ``/kiloclaw/{sandbox_id}/{conversation_id}``."""
    instance = kiloclaw_instance_context(sandbox_id)
    return f"{instance}/{_segment('conversation id', conversation_id)}"


def user_context(user_id: str | int) -> str:
    """Return a user's private context, ``/users/{user_id}``: unread counts and badges."""
    return f"/users/{_segment('user id', str(user_id))}"


def presence_context(context: str) -> str:
    """Return the presence context that mirrors a chat context."""
    return PRESENCE_PREFIX + validate_context(context)


def kiloclaw_instance_presence_context(sandbox_id: str) -> str:
    """Return the presence context of an instance, ``/presence/kiloclaw/{sandbox_id}``."""
    return presence_context(kiloclaw_instance_context(sandbox_id))


def kiloclaw_conversation_presence_context(sandbox_id: str, conversation_id: str) -> str:
    """Return the presence context of a conversation."""
    return presence_context(kiloclaw_conversation_context(sandbox_id, conversation_id))


def platform_presence_context() -> str:
    """Return the platform-wide presence context held by the app shell."""
    return PLATFORM_PRESENCE_CONTEXT


def is_presence_context(context: str) -> bool:
    """Tell whether ``context`` is a presence context of any tier."""
    return context == PRESENCE_PREFIX or context.startswith(PRESENCE_PREFIX + "/")
