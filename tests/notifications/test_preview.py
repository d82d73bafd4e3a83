"""Notification title and grapheme-safe body preview (C11)."""

from __future__ import annotations

import pytest
import regex

from kilo_web.chat.content import text_blocks
from kilo_web.notifications.preview import (
    ELLIPSIS,
    PREVIEW_MAX_CHARS,
    message_preview,
    notification_title,
    truncate_graphemes,
)

FAMILY = "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # man, woman, girl, boy
FLAG_FR = "\U0001F1EB\U0001F1F7"
THUMBS_UP_MEDIUM = "\U0001F44D\U0001F3FD"
E_ACUTE_CIRCUMFLEX = "e\u0301\u0302"
RAINBOW_FLAG = "\U0001F3F3\uFE0F\u200D\U0001F308"
KEYCAP_ONE = "1\uFE0F\u20E3"
HANGUL_SYLLABLE = "\u1100\u1161\u11A8"  # conjoining jamo forming one syllable
DEVANAGARI_KSSA = "\u0915\u094D\u0937\u093F"  # conjunct with a vowel sign
CRLF = "\r\n"

CLUSTERS = [FAMILY, FLAG_FR, THUMBS_UP_MEDIUM, E_ACUTE_CIRCUMFLEX, RAINBOW_FLAG, KEYCAP_ONE,
            HANGUL_SYLLABLE, DEVANAGARI_KSSA, CRLF]


def _graphemes(text: str) -> list[str]:
    return regex.findall(r"\X", text)


def _is_grapheme_prefix(prefix: str, text: str) -> bool:
    clusters = _graphemes(text)
    joined = ""
    for cluster in clusters:
        if joined == prefix:
            return True
        joined += cluster
    return joined == prefix


def test_title_joins_instance_and_conversation():
    assert notification_title("Sandbox", "General") == "Sandbox · General"


@pytest.mark.parametrize("cluster", CLUSTERS, ids=["family", "flag", "skin-tone", "accents",
                                                    "rainbow", "keycap", "hangul", "devanagari", "crlf"])
def test_cluster_after_199_ascii_is_dropped_whole(cluster):
    text = "a" * 199 + cluster + " and more"

    preview = message_preview(text_blocks(text))

    assert preview == "a" * 199 + ELLIPSIS


@pytest.mark.parametrize("cluster", CLUSTERS, ids=["family", "flag", "skin-tone", "accents",
                                                    "rainbow", "keycap", "hangul", "devanagari", "crlf"])
def test_cluster_that_fits_is_kept_whole(cluster):
    prefix = "a" * (PREVIEW_MAX_CHARS - len(cluster))
    text = prefix + cluster + "tail"

    preview = message_preview(text_blocks(text))

    body = preview.removesuffix(ELLIPSIS)
    assert preview.endswith(ELLIPSIS)
    if cluster == CRLF:
        # A trailing line break is dropped before the ellipsis.
        assert body == prefix
    else:
        assert body == prefix + cluster


@pytest.mark.parametrize("length", [0, 1, 199, 200])
def test_short_text_gets_no_ellipsis(length):
    text = "b" * length

    assert truncate_graphemes(text) == text


def test_exactly_200_with_emoji_is_unchanged():
    text = "a" * (200 - len(FAMILY)) + FAMILY

    assert message_preview(text_blocks(text)) == text


def test_201_characters_are_shortened():
    preview = truncate_graphemes("c" * 201)

    assert preview == "c" * 200 + ELLIPSIS


def test_flags_are_never_split_into_regional_indicators():
    text = "a" * 198 + FLAG_FR * 3

    preview = truncate_graphemes(text)

    assert preview == "a" * 198 + FLAG_FR + ELLIPSIS


def test_trailing_whitespace_dropped_before_ellipsis():
    text = "word " * 50

    preview = truncate_graphemes(text)

    assert preview.endswith("word" + ELLIPSIS)
    assert len(preview) <= PREVIEW_MAX_CHARS + 1


def test_text_blocks_are_joined_with_newlines():
    blocks = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]

    assert message_preview(blocks) == "first\nsecond"


def test_single_oversized_cluster_becomes_ellipsis():
    text = "e" + "\u0301" * 250

    assert truncate_graphemes(text) == ELLIPSIS


def test_negative_limit_is_rejected():
    with pytest.raises(ValueError):
        truncate_graphemes("x", -1)


def test_mixed_text_always_cut_on_boundary():
    # Every cut position of a text dense with multi-code-point clusters.
    pieces = [FAMILY, "x", FLAG_FR, E_ACUTE_CIRCUMFLEX, THUMBS_UP_MEDIUM, "y ", DEVANAGARI_KSSA]
    text = "".join(pieces) * 30
    for limit in range(0, 120):
        preview = truncate_graphemes(text, limit)
        body = preview.removesuffix(ELLIPSIS)
        assert len(body) <= limit
        assert _is_grapheme_prefix(body, text)
        assert not body.endswith(" ")
