"""Validation of message content blocks.

A message body is a JSON list of blocks. A block is plain text or Markdown::

    [{"type": "text", "text": "Hello"}, {"type": "markdown", "text": "**Hi**"}]

Markdown is rendered by the client without raw HTML, so its source is
stored as sent and a client that cannot render it shows the text.

Blocks are validated before they are stored, so everything read back from
the ``message.content`` column has this shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kilo_web.chat.errors import EmptyMessageError, InvalidContentError, MessageTooLongError

MAX_MESSAGE_CHARS = 8000
"""Maximum number of characters in a message, summed over all its text blocks."""

MAX_BLOCKS = 50
"""Maximum number of content blocks in one message."""

BLOCK_TYPES = frozenset({"text", "markdown"})
"""Block types the service accepts."""


def text_blocks(text: str) -> list[dict[str, str]]:
    """Wrap plain text in the one-block list that ``post_message`` expects."""
    return [{"type": "text", "text": text}]


def blocks_text(blocks: Sequence[dict[str, Any]]) -> str:
    """Join the text of every block, one block per line."""
    return "\n".join(block["text"] for block in blocks if block.get("type") in BLOCK_TYPES)


def _validate_text_block(index: int, block: dict[str, Any]) -> dict[str, str]:
    unknown_keys = set(block) - {"type", "text"}
    if unknown_keys:
        raise InvalidContentError(
            f"content block {index} has unknown keys {sorted(unknown_keys)}; "
            f"a {block['type']} block has only 'type' and 'text'"
        )
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidContentError(
            f"content block {index} needs a string 'text', got {type(text).__name__}"
        )
    # PostgreSQL cannot store NUL in text or JSON strings, so reject it on every backend.
    if "\x00" in text:
        raise InvalidContentError(f"content block {index} contains a NUL character; remove it")
    return {"type": block["type"], "text": text}


def validate_blocks(blocks: object) -> list[dict[str, str]]:
    """Return a clean copy of ``blocks`` or raise an ``InvalidContentError`` subclass.

    Raises EmptyMessageError when there are no blocks or all text is
    whitespace, MessageTooLongError when the text exceeds MAX_MESSAGE_CHARS
    characters, and InvalidContentError for any other malformed block.
    """
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        raise InvalidContentError(
            f"content must be a list of blocks, got {type(blocks).__name__}; "
            "wrap plain text with text_blocks()"
        )
    if not blocks:
        raise EmptyMessageError("message is empty: send at least one text block")
    if len(blocks) > MAX_BLOCKS:
        raise InvalidContentError(
            f"message has {len(blocks)} content blocks; the maximum is {MAX_BLOCKS}"
        )

    cleaned: list[dict[str, str]] = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise InvalidContentError(
                f"content block {index} must be an object, got {type(block).__name__}"
            )
        block_type = block.get("type")
        if not isinstance(block_type, str) or block_type not in BLOCK_TYPES:
            raise InvalidContentError(
                f"content block {index} has unsupported type {block_type!r}; "
                f"use one of {sorted(BLOCK_TYPES)}"
            )
        cleaned.append(_validate_text_block(index, block))

    total_chars = sum(len(block["text"]) for block in cleaned)
    if total_chars > MAX_MESSAGE_CHARS:
        raise MessageTooLongError(
            f"message text is {total_chars} characters long; the maximum is {MAX_MESSAGE_CHARS}"
        )
    if not any(block["text"].strip() for block in cleaned):
        raise EmptyMessageError("message is empty: its text blocks contain only whitespace")
    return cleaned
