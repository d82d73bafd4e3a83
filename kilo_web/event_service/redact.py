"""Keep credentials out of log records.

The ``websockets`` package logs every handshake header at DEBUG level,
``Authorization: Bearer <token>`` included. ``install()`` wraps the
process's log record factory, so every record, whichever logger made it,
has bearer credentials, JWTs and bot API keys replaced in its message
before any filter or handler receives it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

REDACTED = "[redacted]"

_CREDENTIALS = re.compile(
    r"(?i:bearer)\s+\S+"  # an Authorization header's value
    r"|eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"  # a JWT, even without the header
    r"|kilo_bot_[\w-]+"  # a bot's API key
)

def redact(text: str) -> str:
    """Return ``text`` with every credential replaced."""
    return _CREDENTIALS.sub(REDACTED, text)


def _redacting(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record  # Logging reports the bad format string itself.
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    make_record.redacts = True  # type: ignore[attr-defined]
    return make_record


def install() -> None:
    """Make every log record of the process redact its credentials; idempotent."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacts", False):
        logging.setLogRecordFactory(_redacting(factory))
