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

EPHEMERAL_EVENTS = frozenset({"typing"})
"""Events that are sent without a ``seq`` and kept in no stream, so never replayed.

They matter only at the moment they happen (someone is typing), and a
client that missed one has lost nothing.
"""


ACCESS_REVOKED_EVENT = "access.revoked"
"""Event the server sends on ``/users/{id}`` after it dropped the user's subscriptions.

Its data is ``{"contexts": [...]}``: the contexts the user may no longer
hold. The client forgets them, so it never subscribes them again by itself.
"""


class ErrorCode(str, enum.Enum):
    """Codes of the ``error`` frames the server sends for a rejected frame."""

    INVALID_JSON = "invalid_json"
    BINARY_FRAME = "binary_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FRAME = "invalid_frame"
    INVALID_CONTEXT = "invalid_context"
    TOO_MANY_CONTEXTS = "too_many_contexts"
    FORBIDDEN = "forbidden"
    INVALID_TOKEN = "invalid_token"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the event service uses, beside RFC 6455's own."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TOKEN_EXPIRED = 4001
    TOKEN_REVOKED = 4003
    TOO_SLOW = 4008


class ProtocolError(ValueError):
    """Raised when a client frame is malformed; ``code`` names the fault."""

    def __init__(self, code: ErrorCode, message: str, *, frame_type: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_type = frame_type


# Client to server ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPosition:
    """The last event a client saw on a context: its stream id and number."""

    stream: str
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribe:
    """``context.subscribe``: start receiving events of each context.

    ``since`` maps a context to the last position the client saw; the
    server replays the events after it, if it still holds them.
    """

    contexts: tuple[str, ...]
    since: dict[str, StreamPosition] | None = None
    type: str = dataclasses.field(default="context.subscribe", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``context.unsubscribe``: stop receiving events of each context."""

    contexts: tuple[str, ...]
    type: str = dataclasses.field(default="context.unsubscribe", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class AuthRefresh:
    """``auth.refresh``: replace the connection's token before it expires."""

    token: str
    type: str = dataclasses.field(default="auth.refresh", init=False)


ClientFrame = Subscribe | Unsubscribe | AuthRefresh

_CLIENT_FRAME_TYPES = ("auth.refresh", "context.subscribe", "context.unsubscribe")
MAX_TOKEN_LENGTH = 4096


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
    if frame_type == "context.subscribe":
        contexts = _context_list(frame, frame_type)
        return Subscribe(contexts=contexts, since=_since(frame, contexts))
    if frame_type == "context.unsubscribe":
        return Unsubscribe(contexts=_context_list(frame, frame_type))
    if frame_type == "auth.refresh":
        token = frame.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise ProtocolError(
                ErrorCode.INVALID_FRAME,
                f"auth.refresh needs a string 'token' of 1 to {MAX_TOKEN_LENGTH} characters",
                frame_type=frame_type,
            )
        return AuthRefresh(token=token)
    known = ", ".join(_CLIENT_FRAME_TYPES)
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"unknown frame type {frame_type[:64]!r}; expected one of {known}",
        frame_type=frame_type[:64],
    )


def _since(frame: dict[str, Any], contexts: tuple[str, ...]) -> dict[str, StreamPosition] | None:
    since = frame.get("since")
    if since is None:
        return None
    problem = "'since' must map subscribed contexts to {\"stream\": string, \"seq\": integer >= 0}"
    if not isinstance(since, dict):
        raise ProtocolError(ErrorCode.INVALID_FRAME, problem, frame_type="context.subscribe")
    positions: dict[str, StreamPosition] = {}
    for context, position in since.items():
        if context not in contexts or not isinstance(position, dict):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME, f"{problem}; bad entry {context[:64]!r}",
                frame_type="context.subscribe",
            )
        stream, seq = position.get("stream"), position.get("seq")
        if (
            not isinstance(stream, str)
            or len(stream) > 64
            or not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 0
        ):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME, f"{problem}; bad entry {context[:64]!r}",
                frame_type="context.subscribe",
            )
        positions[context] = StreamPosition(stream=stream, seq=seq)
    return positions


# Server to client ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """``event``: something published to a context, numbered by its stream."""

    context: str
    event: str
    data: dict[str, Any]
    seq: int | None = None
    type: str = dataclasses.field(default="event", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribed:
    """``context.subscribed``: the server now delivers events of these contexts.

    ``streams`` gives each context's stream position at the moment of the
    subscribe; ``recovery_failed`` lists the contexts of ``since`` whose
    missed events could not be replayed, so the client must reload them.
    """

    contexts: tuple[str, ...]
    streams: dict[str, StreamPosition] | None = None
    recovery_failed: tuple[str, ...] | None = None
    type: str = dataclasses.field(default="context.subscribed", init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class AuthRefreshed:
    """``auth.refreshed``: the connection now runs on the new token."""

    expires_at: str
    type: str = dataclasses.field(default="auth.refreshed", init=False)


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
    contexts: tuple[str, ...] | None = None
    """For ``forbidden``, the contexts of the frame that the user may not subscribe to."""
    type: str = dataclasses.field(default="error", init=False)


ServerFrame = Event | Subscribed | Unsubscribed | Error | AuthRefreshed

_WIRE_NAMES = {"expires_at": "expiresAt"}


def _wire_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {key: _wire_value(item) for key, item in value.items()}
    if isinstance(value, StreamPosition):
        return {"stream": value.stream, "seq": value.seq}
    return value


# One encoder for every frame: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(frame: ClientFrame | ServerFrame) -> str:
    """Serialise a frame to its JSON text, dropping fields that are None."""
    fields = {
        _WIRE_NAMES.get(field.name, field.name): _wire_value(getattr(frame, field.name))
        for field in dataclasses.fields(frame)
        if getattr(frame, field.name) is not None
    }
    return _ENCODER.encode(fields)


def encode_event(context: str, event: str, data: dict[str, Any], seq: int) -> str:
    """Serialise an event frame; the fast path of fan-out, same output as ``encode``."""
    return _ENCODER.encode(
        {"type": "event", "context": context, "event": event, "data": data, "seq": seq}
    )


def encode_ephemeral(context: str, event: str, data: dict[str, Any]) -> str:
    """Serialise an event frame without ``seq``, for ``EPHEMERAL_EVENTS``."""
    return _ENCODER.encode({"type": "event", "context": context, "event": event, "data": data})


def error_frame(error: ProtocolError) -> Error:
    """Build the ``error`` frame sent back for a rejected client frame."""
    return Error(code=error.code.value, message=error.message, frame_type=error.frame_type)


def _server_streams(value: object) -> dict[str, StreamPosition]:
    streams: dict[str, StreamPosition] = {}
    if not isinstance(value, dict):
        return streams
    for context, position in value.items():
        if isinstance(position, dict):
            stream, seq = position.get("stream"), position.get("seq")
            if isinstance(stream, str) and isinstance(seq, int):
                streams[context] = StreamPosition(stream=stream, seq=seq)
    return streams


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
        seq = frame.get("seq")
        return Event(
            context=context, event=event, data=data, seq=seq if isinstance(seq, int) else None
        )
    if frame_type in ("context.subscribed", "context.unsubscribed"):
        contexts = frame.get("contexts")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME,
                f"{frame_type} frame needs a list of strings 'contexts'",
                frame_type=frame_type,
            )
        if frame_type == "context.unsubscribed":
            return Unsubscribed(contexts=tuple(contexts))
        return Subscribed(
            contexts=tuple(contexts),
            streams=_server_streams(frame.get("streams")),
            recovery_failed=tuple(
                c for c in frame.get("recovery_failed") or () if isinstance(c, str)
            ),
        )
    if frame_type == "auth.refreshed":
        expires_at = frame.get("expiresAt")
        if not isinstance(expires_at, str):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME, "auth.refreshed needs a string 'expiresAt'",
                frame_type=frame_type,
            )
        return AuthRefreshed(expires_at=expires_at)
    if frame_type == "error":
        code, message = frame.get("code"), frame.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise ProtocolError(
                ErrorCode.INVALID_FRAME,
                "error frame needs string 'code' and 'message'",
                frame_type="error",
            )
        frame_type_field = frame.get("frame_type")
        contexts = frame.get("contexts")
        return Error(
            code=code,
            message=message,
            frame_type=frame_type_field if isinstance(frame_type_field, str) else None,
            contexts=(
                tuple(contexts)
                if isinstance(contexts, list) and all(isinstance(c, str) for c in contexts)
                else None
            ),
        )
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE, f"unknown server frame type {frame_type!r}"
    )
