"""The interface through which the chat service fans out realtime events.

The chat service never talks to sockets itself: after a write commits it
hands the event to a ``Publisher``, which delivers it to every subscriber of
the context (the in-memory or Redis backplane of the event service).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

MESSAGE_CREATED_EVENT = "message.created"
"""Event name published to a conversation's context after a message is committed."""

MESSAGE_UPDATED_EVENT = "message.updated"
"""Event name published to a conversation's context after the sender edited a message."""

MESSAGE_DELETED_EVENT = "message.deleted"
"""Event name published to a conversation's context after the sender deleted a message."""

TYPING_EVENT = "typing"
"""Event name published to a conversation's context while a member types; nothing is stored."""

CONVERSATION_ADDED_EVENT = "conversation.added"
"""Event name published to a user's context when they join a conversation."""

CONVERSATION_REMOVED_EVENT = "conversation.removed"
"""Event name published to a user's context when they leave or are removed from a conversation."""

MEMBER_REMOVED_EVENT = "member.removed"
"""Event name published to a conversation's context after a member left or was removed."""


@runtime_checkable
class Publisher(Protocol):
    """Anything that delivers an event to the subscribers of a context."""

    async def publish(self, context: str, event: str, data: dict[str, Any]) -> None:
        """Deliver ``event`` with JSON-serialisable ``data`` to subscribers of ``context``.

        An exception means the event was not delivered. The chat service logs
        it and keeps the committed write, so implementations need not retry.
        """
        ...
