"""Title and body text of a message notification.

The body is a preview of at most ``PREVIEW_MAX_CHARS`` characters (Python
code points) of the message's text blocks joined by newlines. It is cut
only between extended grapheme clusters as Unicode Standard Annex #29
defines them, so an emoji ZWJ sequence, a flag, a skin-tone modifier or a
letter with combining accents is kept whole or dropped whole. The
clusters come from the ``regex`` package's ``\\X``, which follows a newer
Unicode version than the standard library's ``unicodedata`` and includes
the Indic conjunct rule. A shortened preview ends with "…".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import regex

from kilo_web.chat.content import blocks_text

PREVIEW_MAX_CHARS = 200
"""Maximum length of the preview text before the ellipsis, in code points."""

ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"
TITLE_SEPARATOR = " \N{MIDDLE DOT} "

_GRAPHEME = regex.compile(r"\X", flags=regex.VERSION1)


def notification_title(instance_label: str, conversation_title: str) -> str:
    """Return ``"<instance label> · <conversation title>"``."""
    return f"{instance_label}{TITLE_SEPARATOR}{conversation_title}"


def truncate_graphemes(text: str, max_chars: int = PREVIEW_MAX_CHARS) -> str:
    """Return ``text`` cut to at most ``max_chars`` code points at a grapheme boundary.

    When the text is longer, the result is its longest prefix of whole
    grapheme clusters that fits, with trailing whitespace clusters removed,
    followed by an ellipsis. A text that fits is returned unchanged.
    """
    if max_chars < 0:
        raise ValueError(f"max_chars must be zero or more, got {max_chars}")
    if len(text) <= max_chars:
        return text
    kept: list[str] = []
    length = 0
    for match in _GRAPHEME.finditer(text):
        cluster = match.group()
        if length + len(cluster) > max_chars:
            break
        kept.append(cluster)
        length += len(cluster)
    # Removing whole clusters keeps the cut on a boundary; str.rstrip could split
    # a cluster whose last code point is whitespace.
    while kept and kept[-1].isspace():
        kept.pop()
    return "".join(kept) + ELLIPSIS


def message_preview(blocks: Sequence[dict[str, Any]], max_chars: int = PREVIEW_MAX_CHARS) -> str:
    """Return the notification body of a message with these content blocks."""
    return truncate_graphemes(blocks_text(blocks), max_chars)
