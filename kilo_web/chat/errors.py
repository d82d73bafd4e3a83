"""Exceptions raised by the chat service and the account helpers.

Every exception derives from ``ChatError`` so a caller (an HTTP handler, a
Reflex event) can catch the whole family in one place and show ``str(error)``
to the user: each message names the rejected value and what to do instead.
"""

from __future__ import annotations


class ChatError(Exception):
    """Raised when a chat or account operation is rejected; base of this module."""


# Invalid input


class InvalidInputError(ChatError, ValueError):
    """Raised when an argument has the wrong type, length or format."""


class InvalidIdError(InvalidInputError):
    """Raised when an instance or conversation id is not 1 to 64 letters, digits or ``-``."""


class InvalidNameError(InvalidInputError):
    """Raised when a label, title or display name is empty or too long."""


class InvalidUsernameError(InvalidInputError):
    """Raised when a username does not match the allowed characters or length."""


class InvalidPasswordError(InvalidInputError):
    """Raised when a password is too short or longer than bcrypt's 72-byte input limit."""


class InvalidContentError(InvalidInputError):
    """Raised when message content is not a list of well-formed content blocks."""


class EmptyMessageError(InvalidContentError):
    """Raised when a message has no blocks or only whitespace text."""


class MessageTooLongError(InvalidContentError):
    """Raised when the text of a message exceeds ``MAX_MESSAGE_CHARS``."""


class InvalidLimitError(InvalidInputError):
    """Raised when a page size or sequence bound passed to a listing is out of range."""


# Missing rows


class NotFoundError(ChatError, LookupError):
    """Raised when a referenced row does not exist."""


class UserNotFoundError(NotFoundError):
    """Raised when no user profile matches the given id or username."""


class InstanceNotFoundError(NotFoundError):
    """Raised when no instance matches the given id."""


class ConversationNotFoundError(NotFoundError):
    """Raised when no conversation matches the given id."""


class MessageNotFoundError(NotFoundError):
    """Raised when no message with the given id belongs to the given conversation."""


# Conflicts and permissions


class AlreadyExistsError(ChatError):
    """Raised when a row with the same unique key (id or username) already exists."""


class NotAMemberError(ChatError, PermissionError):
    """Raised when a user acts on an instance or conversation they are not a member of."""


class NotAllowedError(ChatError, PermissionError):
    """Raised when a member may not do this: manage an instance's bots, say, without owning it."""


class NotMessageSenderError(NotAllowedError):
    """Raised when a user edits or deletes a message that someone else sent."""


class MessageDeletedError(ChatError):
    """Raised when a user edits a message that was deleted."""


# Credentials


class InvalidApiKeyError(ChatError):
    """Raised when an API key is malformed, unknown or revoked."""


# Limits


class RateLimitedError(ChatError):
    """Raised when a user sends faster than the limit; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
