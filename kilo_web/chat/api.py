"""The HTTP API under ``/api``, served by the Reflex backend.

Callers authenticate with ``Authorization: Bearer <session token>``: the
session token the web app keeps after a login (reflex-local-auth's
``LocalAuthSession.session_id``).

=========================  ===============================================
``POST /api/token``        an event-service token and its ``expiresAt``
``GET /api/devices``       the caller's active push devices
``POST /api/devices``      register an Expo token or a Web Push subscription
``DELETE /api/devices/ID`` remove one of the caller's devices
``GET .../messages``       a page of a conversation's messages (``before``,
                           ``after``, ``limit``)
``POST .../messages``      post a message; ``clientMessageId`` makes it
                           idempotent
``GET /api/instances``     the caller's instances
``GET /api/conversations`` the caller's conversations with unread counts
``POST .../read``          mark read up to ``upToSeq`` (default: newest)
``GET .../members``        the conversation's members
``POST .../members``       add a member by ``username``
=========================  ===============================================

(``...`` is ``/api/conversations/{conversation id}``.)

Every error has one JSON shape::

    {"error": {"code": "unauthorized", "message": "..."}}
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from reflex_local_auth.auth_session import LocalAuthSession
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kilo_web.accounts.users import ensure_profile
from kilo_web.chat.database import shared_engine
from kilo_web.chat import read_state, service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.errors import ChatError, NotAMemberError, NotFoundError
from kilo_web.chat.service import MessageView
from kilo_web.event_service.embedded import get_backplane
from kilo_web.chat.tokens import issue_user_token
from kilo_web.notifications.devices import (
    DeviceView,
    list_devices,
    register_expo_device,
    register_webpush_device,
    remove_device,
)
from kilo_web.notifications.models import DeviceKind
from kilo_web.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by a handler to return an error status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        """Return the error as a JSON response."""
        headers = {"WWW-Authenticate": 'Bearer realm="kilo_web"'} if self.status == 401 else None
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}},
            status_code=self.status,
            headers=headers,
        )


def _session_token(request: Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(
            401, "unauthorized", "missing credentials: send 'Authorization: Bearer <session token>'"
        )
    return value.strip()


def authenticate(session: Session, request: Request) -> int:
    """Return the profile id of the caller's live login session; raise ApiError 401."""
    token = _session_token(request)
    row = session.exec(select(LocalAuthSession).where(LocalAuthSession.session_id == token)).first()
    if row is None:
        raise ApiError(401, "unauthorized", "unknown session token; log in again")
    expiration = row.expiration
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=dt.UTC)
    if expiration <= dt.datetime.now(dt.UTC):
        raise ApiError(401, "session_expired", "the login session has expired; log in again")
    profile = ensure_profile(session, row.user_id)
    if profile.id is None:
        raise ApiError(401, "unauthorized", "the account has no profile; log in again")
    return profile.id


def _session(request: Request) -> Session:
    """Open a database session on the API's configured database."""
    settings: Settings = request.app.state.settings
    return Session(shared_engine(settings.database_url))


Endpoint = Callable[[Request], Awaitable[JSONResponse]]


def _endpoint(handler: Endpoint) -> Endpoint:
    """Turn ApiError and ChatError from ``handler`` into logged JSON error responses."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            error = exc
        except ChatError as exc:
            error = _chat_error(exc)
        logger.info("%s %s rejected with %d %s: %s", request.method, request.url.path,
                    error.status, error.code, error.message)
        return error.response()

    return endpoint


async def create_token(request: Request) -> JSONResponse:
    """``POST /api/token``: an event-service token for the caller and its expiry."""
    settings: Settings = request.app.state.settings
    with _session(request) as session:
        user_id = authenticate(session, request)
        try:
            token, expires_at = issue_user_token(session, user_id, settings=settings)
        except ChatError as exc:
            raise ApiError(401, "unauthorized", f"{exc}; log in again") from exc
    logger.info("issued an event-service token for user %s", user_id)
    return JSONResponse({"token": token, "expiresAt": expires_at.isoformat()})


def _device_json(device: DeviceView) -> dict[str, Any]:
    # Addresses are credentials of a sort: only a Web Push endpoint's origin is shown.
    body: dict[str, Any] = {"id": device.id, "kind": device.kind.value, "active": device.active}
    if device.kind is DeviceKind.WEBPUSH:
        parts = urllib.parse.urlsplit(device.address)
        body["origin"] = f"{parts.scheme}://{parts.netloc}"
    return body


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    return body


async def list_user_devices(request: Request) -> JSONResponse:
    """``GET /api/devices``: the caller's active push devices."""
    with _session(request) as session:
        user_id = authenticate(session, request)
        devices = list_devices(session, user_id)
    return JSONResponse({"devices": [_device_json(device) for device in devices]})


async def register_device(request: Request) -> JSONResponse:
    """``POST /api/devices``: register an Expo push token or a Web Push subscription.

    Bodies: ``{"kind": "expo", "token": "ExponentPushToken[...]"}`` or
    ``{"kind": "webpush", "endpoint": "...", "keys": {"p256dh": "...", "auth": "..."}}``
    (the JSON of a browser's ``PushSubscription``). Registering the same
    address again returns the existing device.
    """
    settings: Settings = request.app.state.settings
    try:
        body = await _json_object(request)
        with _session(request) as session:
            user_id = authenticate(session, request)
            kind = body.get("kind")
            if kind == "expo":
                device = register_expo_device(session, user_id=user_id, token=body.get("token"))
            elif kind == "webpush":
                keys = body.get("keys") if isinstance(body.get("keys"), dict) else {}
                device = register_webpush_device(
                    session,
                    user_id=user_id,
                    endpoint=body.get("endpoint"),
                    p256dh=keys.get("p256dh"),
                    auth=keys.get("auth"),
                    allowed_origins=settings.webpush_endpoint_origins,
                )
            else:
                raise ApiError(400, "invalid_device",
                               f"unknown device kind {kind!r}; use \"expo\" or \"webpush\"")
    except ChatError as exc:
        raise ApiError(400, "invalid_device", str(exc)) from exc
    logger.info("user %s registered %s", user_id, device.redacted())
    return JSONResponse({"device": _device_json(device)}, status_code=201)


async def delete_device(request: Request) -> JSONResponse:
    """``DELETE /api/devices/{id}``: stop pushing to one of the caller's devices."""
    device_id = request.path_params["device_id"]
    with _session(request) as session:
        user_id = authenticate(session, request)
        removed = remove_device(session, user_id=user_id, device_id=device_id)
    if not removed:
        raise ApiError(404, "not_found", f"device {device_id} not found among yours")
    logger.info("user %s removed device %s", user_id, device_id)
    return JSONResponse({"removed": device_id})


def _message_json(view: MessageView) -> dict[str, Any]:
    return {"id": view.id, **view.to_event_data()}


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter",
                       f"query parameter {name}={raw!r} is not an integer") from None


async def list_conversation_messages(request: Request) -> JSONResponse:
    """``GET /api/conversations/{id}/messages``: a page of messages in ``seq`` order.

    ``before=SEQ`` pages back through history, ``after=SEQ`` catches up from
    a known message, ``limit`` is the page size. The response's ``before``
    cursor is the seq to pass for the previous page, or null at the start.
    """
    conversation_id = request.path_params["conversation_id"]
    before, after = _query_int(request, "before"), _query_int(request, "after")
    limit = _query_int(request, "limit")
    if limit is None:
        limit = service.DEFAULT_PAGE_SIZE
    with _session(request) as session:
        user_id = authenticate(session, request)
        views = service.list_messages(session, conversation_id, limit=limit,
                                      before_seq=before, after_seq=after, viewer_id=user_id)
    cursor = views[0].seq if views and views[0].seq > 1 else None
    return JSONResponse({"messages": [_message_json(v) for v in views], "before": cursor})


async def post_conversation_message(request: Request) -> JSONResponse:
    """``POST /api/conversations/{id}/messages``: post ``{"text": ...}`` or ``{"blocks": [...]}``.

    ``clientMessageId`` makes the post idempotent: a repeat from the same
    sender returns the first message (status 200 instead of 201) and fans
    out nothing new.
    """
    conversation_id = request.path_params["conversation_id"]
    body = await _json_object(request)
    blocks = body.get("blocks")
    if blocks is None and isinstance(body.get("text"), str):
        blocks = text_blocks(body["text"])
    if blocks is None:
        raise ApiError(400, "invalid_body", "send a string 'text' or a list 'blocks'")
    client_message_id = body.get("clientMessageId")
    with _session(request) as session:
        user_id = authenticate(session, request)
        repeat = client_message_id is not None and service.find_client_message(
            session, sender_id=user_id, client_message_id=str(client_message_id)
        ) is not None
        view = await service.post_message(
            session,
            conversation_id=conversation_id,
            sender_id=user_id,
            blocks=blocks,
            publisher=get_backplane(),
            after_publish=request.app.state.after_publish,
            client_message_id=client_message_id,
        )
    return JSONResponse({"message": _message_json(view)}, status_code=200 if repeat else 201)


async def list_user_instances(request: Request) -> JSONResponse:
    """``GET /api/instances``: the instances the caller belongs to."""
    with _session(request) as session:
        user_id = authenticate(session, request)
        instances = service.list_instances_for_user(session, user_id)
        body = [{"id": i.id, "label": i.label} for i in instances]
    return JSONResponse({"instances": body})


async def list_user_conversations(request: Request) -> JSONResponse:
    """``GET /api/conversations``: the caller's conversations with unread counts.

    ``instanceId`` limits the list to one instance.
    """
    with _session(request) as session:
        user_id = authenticate(session, request)
        conversations = service.list_conversations_for_user(
            session, user_id, instance_id=request.query_params.get("instanceId") or None
        )
        counts = read_state.unread_counts(session, user_id)
        body = [
            {"id": c.id, "title": c.title, "instanceId": c.instance_id,
             "unread": counts.get(c.id, 0)}
            for c in conversations
        ]
    return JSONResponse({"conversations": body})


async def mark_conversation_read(request: Request) -> JSONResponse:
    """``POST /api/conversations/{id}/read``: move the read position, ``{"upToSeq": n}`` or newest."""
    conversation_id = request.path_params["conversation_id"]
    body = await _json_object(request) if await request.body() else {}
    up_to = body.get("upToSeq")
    if up_to is not None and (not isinstance(up_to, int) or isinstance(up_to, bool)):
        raise ApiError(400, "invalid_body", f"'upToSeq' must be an integer, got {up_to!r}")
    with _session(request) as session:
        user_id = authenticate(session, request)
        await read_state.mark_read(
            session, conversation_id, user_id, up_to, publisher=get_backplane(),
            on_change=request.app.state.on_unread_changed,
        )
        summary = read_state.unread_summary(session, user_id)
    return JSONResponse(summary.to_event_data())


def _member_json(profile: Any) -> dict[str, Any]:
    return {"id": profile.id, "displayName": profile.display_name, "isBot": profile.is_bot}


async def list_conversation_members(request: Request) -> JSONResponse:
    """``GET /api/conversations/{id}/members``: the members, for members only."""
    conversation_id = request.path_params["conversation_id"]
    with _session(request) as session:
        user_id = authenticate(session, request)
        service.require_conversation_member(session, conversation_id, user_id)
        members = [_member_json(m) for m in service.list_members(session, conversation_id)]
    return JSONResponse({"members": members})


async def add_conversation_member(request: Request) -> JSONResponse:
    """``POST /api/conversations/{id}/members``: add ``{"username": ...}``; members only."""
    conversation_id = request.path_params["conversation_id"]
    body = await _json_object(request)
    username = body.get("username")
    if not isinstance(username, str) or not username.strip():
        raise ApiError(400, "invalid_body", "send the new member's 'username' as a string")
    with _session(request) as session:
        user_id = authenticate(session, request)
        service.require_conversation_member(session, conversation_id, user_id)
        profile = service.find_user_by_username(session, username.strip())
        if profile is None or profile.id is None:
            raise ApiError(404, "not_found", f"no user is named {username!r}")
        added = service.add_conversation_member(
            session, conversation_id=conversation_id, user_id=profile.id
        )
        member = _member_json(profile)
    return JSONResponse({"member": member, "added": added}, status_code=201 if added else 200)


def _chat_error(exc: ChatError) -> ApiError:
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, NotAMemberError):
        return ApiError(403, "forbidden", str(exc))
    return ApiError(400, "invalid_input", str(exc))


def create_api(
    settings: Settings | None = None,
    *,
    after_publish: Callable[[MessageView], None] | None = None,
    on_unread_changed: Callable[[Any], Awaitable[None]] | None = None,
) -> Starlette:
    """Build the Starlette app that Reflex mounts its own routes under."""
    api = Starlette(routes=[
        Route("/api/token", _endpoint(create_token), methods=["POST"]),
        Route("/api/devices", _endpoint(list_user_devices), methods=["GET"]),
        Route("/api/devices", _endpoint(register_device), methods=["POST"]),
        Route("/api/devices/{device_id:int}", _endpoint(delete_device), methods=["DELETE"]),
        Route("/api/conversations/{conversation_id}/messages", _endpoint(list_conversation_messages),
              methods=["GET"]),
        Route("/api/conversations/{conversation_id}/messages", _endpoint(post_conversation_message),
              methods=["POST"]),
        Route("/api/instances", _endpoint(list_user_instances), methods=["GET"]),
        Route("/api/conversations", _endpoint(list_user_conversations), methods=["GET"]),
        Route("/api/conversations/{conversation_id}/read", _endpoint(mark_conversation_read),
              methods=["POST"]),
        Route("/api/conversations/{conversation_id}/members", _endpoint(list_conversation_members),
              methods=["GET"]),
        Route("/api/conversations/{conversation_id}/members", _endpoint(add_conversation_member),
              methods=["POST"]),
    ])
    api.state.after_publish = after_publish
    api.state.on_unread_changed = on_unread_changed
    api.state.settings = settings or get_settings()
    return api
