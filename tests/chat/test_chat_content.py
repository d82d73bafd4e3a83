"""Validation of message content blocks."""

from __future__ import annotations

import pytest

from kilo_web.chat.content import (
    MAX_BLOCKS,
    MAX_MESSAGE_CHARS,
    blocks_text,
    text_blocks,
    validate_blocks,
)
from kilo_web.chat.errors import EmptyMessageError, InvalidContentError, MessageTooLongError


def test_text_blocks_wraps_plain_text():
    assert text_blocks("hi") == [{"type": "text", "text": "hi"}]


def test_validate_returns_clean_copy():
    original = [{"type": "text", "text": "one"}, {"type": "text", "text": " two "}]

    cleaned = validate_blocks(original)

    assert cleaned == original
    assert cleaned is not original
    assert cleaned[0] is not original[0]


def test_validate_accepts_tuple_of_blocks():
    assert validate_blocks(({"type": "text", "text": "hi"},)) == [{"type": "text", "text": "hi"}]


def test_validate_accepts_exact_maximum_length():
    blocks = [{"type": "text", "text": "a" * (MAX_MESSAGE_CHARS - 1)}, {"type": "text", "text": "b"}]

    assert validate_blocks(blocks) == blocks


def test_validate_counts_characters_not_bytes():
    # Each euro sign is 3 bytes in UTF-8 but one character.
    blocks = text_blocks("€" * MAX_MESSAGE_CHARS)

    assert validate_blocks(blocks) == blocks


@pytest.mark.parametrize(
    "blocks",
    [
        [],
        (),
        [{"type": "text", "text": ""}],
        [{"type": "text", "text": "   \n\t "}],
        [{"type": "text", "text": " "}, {"type": "text", "text": "\u3000"}],
    ],
    ids=["empty-list", "empty-tuple", "empty-text", "whitespace", "whitespace-blocks"],
)
def test_validate_rejects_empty_message(blocks):
    with pytest.raises(EmptyMessageError):
        validate_blocks(blocks)


@pytest.mark.parametrize(
    "blocks",
    [
        text_blocks("a" * (MAX_MESSAGE_CHARS + 1)),
        [{"type": "text", "text": "a" * MAX_MESSAGE_CHARS}, {"type": "text", "text": "b"}],
    ],
    ids=["one-block", "split-over-blocks"],
)
def test_validate_rejects_over_long_message(blocks):
    with pytest.raises(MessageTooLongError) as caught:
        validate_blocks(blocks)

    assert str(MAX_MESSAGE_CHARS) in str(caught.value)
    assert str(MAX_MESSAGE_CHARS + 1) in str(caught.value)


@pytest.mark.parametrize(
    ("blocks", "expected_fragment"),
    [
        ("hello", "list of blocks"),
        (b"hello", "list of blocks"),
        ({"type": "text", "text": "hi"}, "list of blocks"),
        (None, "list of blocks"),
        (["hello"], "must be an object"),
        ([{"text": "hi"}], "unsupported type None"),
        ([{"type": "image", "url": "x"}], "unsupported type 'image'"),
        ([{"type": "text"}], "needs a string 'text'"),
        ([{"type": "text", "text": 5}], "needs a string 'text'"),
        ([{"type": "text", "text": "hi", "bold": True}], "unknown keys ['bold']"),
        ([{"type": "text", "text": "a\x00b"}], "NUL"),
        ([{"type": "text", "text": "x"}] * (MAX_BLOCKS + 1), f"maximum is {MAX_BLOCKS}"),
    ],
    ids=[
        "string",
        "bytes",
        "single-dict",
        "none",
        "string-block",
        "missing-type",
        "unknown-type",
        "missing-text",
        "non-string-text",
        "extra-key",
        "nul-character",
        "too-many-blocks",
    ],
)
def test_validate_rejects_malformed_content(blocks, expected_fragment):
    with pytest.raises(InvalidContentError) as caught:
        validate_blocks(blocks)

    assert expected_fragment in str(caught.value)


def test_malformed_content_is_not_empty_or_too_long():
    with pytest.raises(InvalidContentError) as caught:
        validate_blocks([{"type": "image"}])

    assert not isinstance(caught.value, (EmptyMessageError, MessageTooLongError))


def test_blocks_text_joins_text_blocks():
    blocks = [{"type": "text", "text": "one"}, {"type": "other"}, {"type": "text", "text": "two"}]

    assert blocks_text(blocks) == "one\ntwo"
