"""Wire protocol v1 of the event service: typed frames and their JSON form.

Every frame is one JSON object in a WebSocket text frame, with a ``type``
field. Frames are parsed into the dataclasses below at the edge, so nothing
past this module handles raw dicts. Parsing is pure: it takes text and
returns a frame or raises ``ProtocolError`` carrying the error code that the
server sends back. ``docs/protocol.md`` documents the same tables.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from kilo_web.event_service.contexts import InvalidContextError, validate_context

PROTOCOL_VERSION = 1

MAX_CONTEXTS_PER_FRAME = 100
"""Most contexts one subscribe or unsubscribe frame may name."""


class ErrorCode(str, enum.Enum):
    """Codes of the ``error`` frames the server sends for a rejected frame."""

    INVALID_JSON = "invalid_json"
    BINARY_FRAME = "binary_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FRAME = "invalid_frame"
    INVALID_CONTEXT = "invalid_context"
    TOO_MANY_CONTEXTS = "too_many_contexts"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the event service uses, beside RFC 6455's own."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012


class ProtocolError(ValueError):
    """Raised when a client frame is malformed; ``code`` names the fault."""

    def __init__(self, code: ErrorCode, message: str, *, frame_type: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_type = frame_type


# Client to server ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribe:
    """``context.subscribe``: start receiving events of each context."""

    contexts: tuple[str, ...]
    type: str = dataclasses.field(default="context.subscribe", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``context.unsubscribe``: stop receiving events of each context."""

    contexts: tuple[str, ...]
    type: str = dataclasses.field(default="context.unsubscribe", init=False)


ClientFrame = Subscribe | Unsubscribe

_CLIENT_FRAMES: dict[str, type[Subscribe] | type[Unsubscribe]] = {
    "context.subscribe": Subscribe,
    "context.unsubscribe": Unsubscribe,
}


def _load_object(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        raise ProtocolError(
            ErrorCode.BINARY_FRAME, "binary frames are not supported; send JSON as a text frame"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            ErrorCode.INVALID_FRAME,
            f"frame must be a JSON object, got {type(value).__name__}",
        )
    return value


def _context_list(frame: dict[str, Any], frame_type: str) -> tuple[str, ...]:
    if "contexts" not in frame:
        raise ProtocolError(
            ErrorCode.INVALID_FRAME,
            f"{frame_type} frame is missing the field 'contexts'",
            frame_type=frame_type,
        )
    contexts = frame["contexts"]
    if not isinstance(contexts, list):
        raise ProtocolError(
            ErrorCode.INVALID_FRAME,
            f"'contexts' must be a list of strings, got {type(contexts).__name__}",
            frame_type=frame_type,
        )
    if len(contexts) > MAX_CONTEXTS_PER_FRAME:
        raise ProtocolError(
            ErrorCode.TOO_MANY_CONTEXTS,
            f"{frame_type} names {len(contexts)} contexts; the maximum per frame is "
            f"{MAX_CONTEXTS_PER_FRAME}, so split it into several frames",
            frame_type=frame_type,
        )
    result: list[str] = []
    for context in contexts:
        try:
            result.append(validate_context(context))
        except InvalidContextError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_CONTEXT, str(exc), frame_type=frame_type
            ) from None
    # A context named twice in one frame counts once.
    return tuple(dict.fromkeys(result))


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse one client frame; raise ProtocolError naming what is wrong."""
    frame = _load_object(text)
    frame_type = frame.get("type")
    if not isinstance(frame_type, str):
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, "frame is missing the string field 'type'"
        )
    frame_class = _CLIENT_FRAMES.get(frame_type)
    if frame_class is None:
        known = ", ".join(sorted(_CLIENT_FRAMES))
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown frame type {frame_type[:64]!r}; expected one of {known}",
            frame_type=frame_type[:64],
        )
    return frame_class(contexts=_context_list(frame, frame_type))


# Server to client ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """``event``: something published to a context."""

    context: str
    event: str
    data: dict[str, Any]
    type: str = dataclasses.field(default="event", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribed:
    """``context.subscribed``: the server now delivers events of these contexts."""

    contexts: tuple[str, ...]
    type: str = dataclasses.field(default="context.subscribed", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribed:
    """``context.unsubscribed``: the server no longer delivers these contexts."""

    contexts: tuple[str, ...]
    type: str = dataclasses.field(default="context.unsubscribed", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Error:
    """``error``: the server rejected a frame; the socket stays open."""

    code: str
    message: str
    frame_type: str | None = None
    type: str = dataclasses.field(default="error", init=False)


ServerFrame = Event | Subscribed | Unsubscribed | Error


def encode(frame: ClientFrame | ServerFrame) -> str:
    """Serialise a frame to its JSON text, dropping fields that are None."""
    fields = {
        field.name: getattr(frame, field.name)
        for field in dataclasses.fields(frame)
        if getattr(frame, field.name) is not None
    }
    for name in ("contexts",):
        if name in fields:
            fields[name] = list(fields[name])
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def error_frame(error: ProtocolError) -> Error:
    """Build the ``error`` frame that answers a rejected client frame."""
    return Error(code=error.code.value, message=error.message, frame_type=error.frame_type)


def parse_server_frame(text: str | bytes) -> ServerFrame:
    """Parse one server frame; raise ProtocolError if it is malformed."""
    frame = _load_object(text)
    frame_type = frame.get("type")
    if frame_type == "event":
        context, event, data = frame.get("context"), frame.get("event"), frame.get("data", {})
        if not isinstance(context, str) or not isinstance(event, str) or not isinstance(data, dict):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME,
                "event frame needs string 'context' and 'event' and an object 'data'",
                frame_type="event",
            )
        return Event(context=context, event=event, data=data)
    if frame_type in ("context.subscribed", "context.unsubscribed"):
        contexts = frame.get("contexts")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME,
                f"{frame_type} frame needs a list of strings 'contexts'",
                frame_type=frame_type,
            )
        frame_class = Subscribed if frame_type == "context.subscribed" else Unsubscribed
        return frame_class(contexts=tuple(contexts))
    if frame_type == "error":
        code, message = frame.get("code"), frame.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME,
                "error frame needs string 'code' and 'message'",
                frame_type="error",
            )
        frame_type_field = frame.get("frame_type")
        return Error(
            code=code,
            message=message,
            frame_type=frame_type_field if isinstance(frame_type_field, str) else None,
        )
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE, f"unknown server frame type {frame_type!r}"
    )
