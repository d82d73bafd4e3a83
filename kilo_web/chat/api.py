"""The HTTP API under ``/api``, served by the Reflex backend.

Callers authenticate with ``Authorization: Bearer <credential>``: a session
token from ``POST /api/login`` (the web app's own login session works too),
or a bot's API key (``kilo_bot_...``).
Bots may read and post in their own instance, edit and delete their own
messages and send typing events. Endpoints that manage devices, members,
instances, bots or keys are for people.

The OpenAPI document at ``/api/openapi.json`` (built by
``kilo_web.chat.openapi``) describes every endpoint; ``docs/api.md`` is
the guide. Every error has one JSON shape::

    {"error": {"code": "unauthorized", "message": "..."}}
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import math
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from reflex_local_auth.auth_session import LocalAuthSession
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from kilo_web.accounts.users import MAX_PASSWORD_BYTES, ensure_profile
from kilo_web.chat.models import LocalUser
from kilo_web.chat.openapi import openapi_document
from kilo_web.chat.database import DATABASE_UNAVAILABLE, shared_engine
from kilo_web.chat import bots, read_state, service
from kilo_web.chat.bots import ApiKeyView, BotCaller, BotView
from kilo_web.chat.content import text_blocks
from kilo_web.chat.errors import (
    AlreadyExistsError,
    ChatError,
    InvalidApiKeyError,
    MessageDeletedError,
    NotAllowedError,
    NotAMemberError,
    NotFoundError,
    RateLimitedError,
)
from kilo_web.chat.limits import SendLimiter, TypingLimiter
from kilo_web.event_service.control import announce_revocation
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

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        """Return the error as a JSON response."""
        headers = dict(self.headers)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="kilo_web"'
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}},
            status_code=self.status,
            headers=headers,
        )


def _bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if header and scheme.lower() != "bearer":
        raise ApiError(
            401, "unauthorized",
            f"the Authorization header uses the {scheme!r} scheme; send "
            "'Authorization: Bearer <session token or API key>'",
        )
    if not value.strip():
        raise ApiError(
            401, "unauthorized",
            "missing credentials: send 'Authorization: Bearer <session token or API key>'",
        )
    return value.strip()


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """The sender of a request: a person by session token, or a bot by API key."""

    user_id: int
    bot: BotCaller | None = None

    def require_person(self, action: str) -> None:
        """Raise ApiError 403 when a bot calls an endpoint meant for people."""
        if self.bot is not None:
            raise ApiError(403, "forbidden", f"bots may not {action}; use a person's session token")


def authenticate_caller(session: Session, request: Request) -> Caller:
    """Return the caller behind the request's bearer credential; raise ApiError 401."""
    credential = _bearer(request)
    if bots.looks_like_api_key(credential):
        try:
            bot = bots.authenticate_api_key(session, credential)
        except InvalidApiKeyError as exc:
            raise ApiError(401, "invalid_api_key", str(exc)) from None
        return Caller(user_id=bot.bot_id, bot=bot)
    # NOTE: a web login's session id is the tab's Reflex client token, which
    # also travels in the Socket.IO URL; only tokens from POST /api/login
    # stay out of URLs. Accepting both keeps the web app's own calls working.
    row = session.exec(
        select(LocalAuthSession).where(LocalAuthSession.session_id == credential)
    ).first()
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
    return Caller(user_id=profile.id)


def authenticate(session: Session, request: Request) -> int:
    """Return the profile id of the caller, a person or a bot; raise ApiError 401."""
    return authenticate_caller(session, request).user_id


def authenticate_person(session: Session, request: Request, action: str) -> int:
    """Return the profile id of a person calling; raise ApiError 401, or 403 for a bot."""
    caller = authenticate_caller(session, request)
    caller.require_person(action)
    return caller.user_id


def _session(request: Request) -> Session:
    """Open a database session on the API's configured database."""
    settings: Settings = request.app.state.settings
    return Session(shared_engine(settings.database_url))


Endpoint = Callable[[Request], Awaitable[Response]]

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def _endpoint(handler: Endpoint) -> Endpoint:
    """Turn ApiError and ChatError from ``handler`` into logged JSON error responses."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            _reject_nul_in_url(request)
            return await handler(request)
        except ApiError as exc:
            error = exc
        except ChatError as exc:
            error = _chat_error(exc)
        except DATABASE_UNAVAILABLE as exc:
            # The database is down or unreachable. Each write is one transaction,
            # so nothing half-written stays behind, and the caller may retry.
            logger.warning("%s %s failed, the database is unavailable: %s", request.method,
                           request.url.path, exc.__class__.__name__)
            return ApiError(503, "database_unavailable",
                            "the database is unavailable right now; nothing was changed, so "
                            "send the request again in a few seconds",
                            headers={"Retry-After": "5"}).response()
        logger.info("%s %s rejected with %d %s: %s", request.method, request.url.path,
                    error.status, error.code, error.message)
        return error.response()

    return endpoint


async def create_token(request: Request) -> JSONResponse:
    """``POST /api/token``: an event-service token for the caller and its expiry."""
    settings: Settings = request.app.state.settings
    with _session(request) as session:
        caller = authenticate_caller(session, request)
        source = "bot" if caller.bot is not None else "web"
        try:
            token, expires_at = issue_user_token(
                session, caller.user_id, settings=settings, token_source=source
            )
        except ChatError as exc:
            raise ApiError(401, "unauthorized", f"{exc}; log in again") from exc
    logger.info("issued an event-service token for %s %s", source, caller.user_id)
    return JSONResponse(
        {"token": token, "expiresAt": expires_at.isoformat(), "userId": caller.user_id}
    )


API_SESSION_DAYS = 30
"""Lifetime of a session token made by ``POST /api/login``."""


async def log_in(request: Request) -> JSONResponse:
    """``POST /api/login``: trade a username and password for a session token.

    The token is random and belongs to no browser tab, so unlike the web
    app's own session it never travels in a URL. No credentials are needed
    to call this, and a wrong username and a wrong password get the same
    response.
    """
    body = await _json_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "invalid_body", "send 'username' and 'password' as strings")
    refused = ApiError(401, "invalid_credentials",
                       "the username or the password is wrong, or the account is disabled")
    if not password or len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise refused
    with _session(request) as session:
        user = session.exec(select(LocalUser).where(LocalUser.username == username)).first()
        # bcrypt takes a quarter of a second; run it off the event loop.
        if user is None or not user.enabled or not await asyncio.to_thread(user.verify, password):
            logger.info("API login rejected for username %r", username[:64])
            raise refused
        profile = ensure_profile(session, user.id)
        token = secrets.token_urlsafe(32)
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=API_SESSION_DAYS)
        session.add(LocalAuthSession(user_id=user.id, session_id=token, expiration=expires_at))
        session.commit()
        profile_id = profile.id
    logger.info("user %s logged in through the API", profile_id)
    return JSONResponse({"token": token, "expiresAt": expires_at.isoformat(),
                         "userId": profile_id}, status_code=201)


async def log_out(request: Request) -> JSONResponse:
    """``DELETE /api/login``: end the session whose token authenticated this request."""
    with _session(request) as session:
        authenticate_person(session, request, "log out")
        credential = _bearer(request)
        row = session.exec(
            select(LocalAuthSession).where(LocalAuthSession.session_id == credential)
        ).first()
        if row is not None:
            session.delete(row)
            session.commit()
    return JSONResponse({"loggedOut": True})


async def who_am_i(request: Request) -> JSONResponse:
    """``GET /api/me``: the caller's account; for a bot, also its instance."""
    with _session(request) as session:
        caller = authenticate_caller(session, request)
        profile = service.get_user(session, caller.user_id)
        local_user = session.get(LocalUser, profile.local_user_id)
        body = {
            "id": caller.user_id,
            "username": local_user.username if local_user is not None else "",
            "displayName": profile.display_name,
            "isBot": profile.is_bot,
            "instanceId": caller.bot.instance_id if caller.bot is not None else None,
        }
    return JSONResponse(body)


def _device_json(device: DeviceView) -> dict[str, Any]:
    # Addresses are credentials of a sort: only a Web Push endpoint's origin is shown.
    body: dict[str, Any] = {"id": device.id, "kind": device.kind.value, "active": device.active}
    if device.kind is DeviceKind.WEBPUSH:
        parts = urllib.parse.urlsplit(device.address)
        body["origin"] = f"{parts.scheme}://{parts.netloc}"
    return body


def _reject_nul_in_url(request: Request) -> None:
    """Reject a NUL character in the path or query, which no stored value holds."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if isinstance(value, str) and "\x00" in value:
            raise ApiError(400, "invalid_parameter",
                           f"parameter {name} contains a NUL character; remove it")


def _find_nul(value: Any, path: str) -> str | None:
    """Return the path of the first string in ``value`` that contains a NUL character."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", item) for i, item in enumerate(value))
    else:
        return None
    for key, item in items:
        if "\x00" in str(key):
            return f"{path} key {key!r}"
        found = _find_nul(item, f"{path}.{key}" if isinstance(value, dict) else path + key)
        if found is not None:
            return found
    return None


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    # Neither PostgreSQL's text nor its JSON can store NUL, on any field.
    found = _find_nul(body, "body")
    if found is not None:
        raise ApiError(400, "invalid_body", f"{found} contains a NUL character; remove it")
    return body


async def list_user_devices(request: Request) -> JSONResponse:
    """``GET /api/devices``: the caller's active push devices."""
    with _session(request) as session:
        user_id = authenticate_person(session, request, "have push devices")
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
            user_id = authenticate_person(session, request, "register push devices")
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
    device_id = _path_int(request, "device_id")
    with _session(request) as session:
        user_id = authenticate_person(session, request, "remove push devices")
        removed = remove_device(session, user_id=user_id, device_id=device_id)
    if not removed:
        raise ApiError(404, "not_found", f"device {device_id} not found among yours")
    logger.info("user %s removed device %s", user_id, device_id)
    return JSONResponse({"removed": device_id})


def _message_json(view: MessageView) -> dict[str, Any]:
    return {"id": view.id, **view.to_event_data()}


MAX_INT = 2**31 - 1
"""Largest id, seq or limit the API takes: the range of a PostgreSQL ``integer``."""


def _bounded(name: str, value: int, raw: object) -> int:
    if not 0 <= value <= MAX_INT:
        raise ApiError(400, "invalid_parameter",
                       f"{name} {raw!r} is out of range; use 0 to {MAX_INT}")
    return value


def _path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} {raw!r} is not an integer") from None
    return _bounded(name, value, raw)


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter",
                       f"query parameter {name}={raw!r} is not an integer") from None
    return _bounded(f"query parameter {name}", value, raw)


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
    if blocks is not None and "text" in body:
        raise ApiError(400, "invalid_body", "send either 'text' or 'blocks', not both")
    if blocks is None and isinstance(body.get("text"), str):
        blocks = text_blocks(body["text"])
    if blocks is None:
        raise ApiError(400, "invalid_body", "send a string 'text' or a list 'blocks'")
    client_message_id = body.get("clientMessageId")
    if client_message_id is not None and not isinstance(client_message_id, str):
        raise ApiError(400, "invalid_body",
                       f"'clientMessageId' must be a string, got {client_message_id!r}")
    with _session(request) as session:
        user_id = authenticate(session, request)
        request.app.state.send_limiter.check(user_id)
        view = await service.post_message(
            session,
            conversation_id=conversation_id,
            sender_id=user_id,
            blocks=blocks,
            publisher=get_backplane(),
            after_publish=request.app.state.after_publish,
            client_message_id=client_message_id,
        )
    return JSONResponse({"message": _message_json(view)}, status_code=200 if view.repeated else 201)


async def edit_conversation_message(request: Request) -> JSONResponse:
    """``PATCH /api/conversations/{id}/messages/{message id}``: replace the content; sender only.

    Body: ``{"content": "new text"}`` or ``{"content": [blocks]}``. An edit
    counts against the same rate limit as a new message, because it fans
    out a whole message too. Editing a deleted message gets 410.
    """
    conversation_id = request.path_params["conversation_id"]
    message_id = _path_int(request, "message_id")
    body = await _json_object(request)
    content = body.get("content")
    if not isinstance(content, (str, list)):
        raise ApiError(400, "invalid_body",
                       "send 'content' as a string or a list of blocks, got "
                       f"{type(content).__name__}")
    with _session(request) as session:
        user_id = authenticate(session, request)
        request.app.state.send_limiter.check(user_id)
        view = await service.edit_message(
            session,
            conversation_id=conversation_id,
            message_id=message_id,
            user_id=user_id,
            content=content,
            publisher=get_backplane(),
        )
    return JSONResponse({"message": _message_json(view)})


async def delete_conversation_message(request: Request) -> JSONResponse:
    """``DELETE /api/conversations/{id}/messages/{message id}``: soft-delete; sender only.

    Returns the message as deleted: no blocks, ``deletedAt`` set. Deleting
    it again returns the same and publishes nothing.
    """
    conversation_id = request.path_params["conversation_id"]
    message_id = _path_int(request, "message_id")
    with _session(request) as session:
        user_id = authenticate(session, request)
        view = await service.delete_message(
            session,
            conversation_id=conversation_id,
            message_id=message_id,
            user_id=user_id,
            publisher=get_backplane(),
        )
    return JSONResponse({"message": _message_json(view)})


async def post_typing(request: Request) -> Response:
    """``POST /api/conversations/{id}/typing``: tell the members the caller is typing.

    Always 204 for a member. Calls closer together than the typing interval
    for the same caller and conversation publish nothing.
    """
    conversation_id = request.path_params["conversation_id"]
    with _session(request) as session:
        user_id = authenticate(session, request)
        await service.publish_typing(
            session,
            conversation_id=conversation_id,
            user_id=user_id,
            publisher=get_backplane(),
            limiter=request.app.state.typing_limiter,
        )
    return Response(status_code=204)


async def list_user_instances(request: Request) -> JSONResponse:
    """``GET /api/instances``: the instances the caller belongs to."""
    with _session(request) as session:
        user_id = authenticate(session, request)
        instances = service.list_instances_for_user(session, user_id)
        body = [_instance_json(i) for i in instances]
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
        body = [_conversation_json(c, counts.get(c.id, 0)) for c in conversations]
    return JSONResponse({"conversations": body})


async def mark_conversation_read(request: Request) -> JSONResponse:
    """``POST /api/conversations/{id}/read``: move the read position, ``{"upToSeq": n}`` or newest."""
    conversation_id = request.path_params["conversation_id"]
    body = await _json_object(request) if await request.body() else {}
    up_to = body.get("upToSeq")
    if up_to is not None and (not isinstance(up_to, int) or isinstance(up_to, bool)):
        raise ApiError(400, "invalid_body", f"'upToSeq' must be an integer, got {up_to!r}")
    if up_to is not None:
        _bounded("'upToSeq'", up_to, up_to)
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
        user_id = authenticate_person(session, request, "add members")
        service.require_conversation_member(session, conversation_id, user_id)
        profile = service.find_user_by_username(session, username.strip())
        if profile is None or profile.id is None:
            raise ApiError(404, "not_found", f"no user is named {username!r}")
        if profile.is_bot:
            raise ApiError(403, "forbidden",
                           f"{username!r} is a bot; bots take part in the conversations "
                           "of their own instance only")
        added = service.add_conversation_member(
            session, conversation_id=conversation_id, user_id=profile.id
        )
        member = _member_json(profile)
        conversation = service.get_conversation(session, conversation_id)
    if added:
        await service.announce_conversation(get_backplane(), conversation, [profile.id])
    return JSONResponse({"member": member, "added": added}, status_code=201 if added else 200)


async def remove_conversation_member(request: Request) -> Response:
    """``DELETE /api/conversations/{id}/members/{user id}``: leave, or remove someone.

    Every member may remove themselves; only the instance's owner may
    remove others, and no one may remove a bot of the instance. Returns 204
    whether or not the user was a member, so a repeat is not an error. The
    members learn of a removal from ``member.removed``.
    """
    conversation_id = request.path_params["conversation_id"]
    member_id = _path_int(request, "user_id")
    with _session(request) as session:
        user_id = authenticate_person(session, request, "remove members")
        await service.remove_conversation_member(
            session,
            conversation_id=conversation_id,
            user_id=member_id,
            removed_by=user_id,
            publisher=get_backplane(),
            on_unread_change=request.app.state.on_unread_changed,
        )
    return Response(status_code=204)


def _instance_json(instance: Any) -> dict[str, Any]:
    return {"id": instance.id, "label": instance.label, "ownerId": instance.owner_id}


def _conversation_json(conversation: Any, unread: int = 0) -> dict[str, Any]:
    return {"id": conversation.id, "title": conversation.title,
            "instanceId": conversation.instance_id, "unread": unread}


async def create_instance(request: Request) -> JSONResponse:
    """``POST /api/instances``: create an instance ``{"label": ...}``, owned by the caller."""
    body = await _json_object(request)
    with _session(request) as session:
        user_id = authenticate_person(session, request, "create instances")
        instance = service.create_instance(session, owner_id=user_id, label=body.get("label"))
        result = _instance_json(instance)
    return JSONResponse({"instance": result}, status_code=201)


async def create_conversation(request: Request) -> JSONResponse:
    """``POST /api/conversations``: ``{"instanceId": ..., "title": ...}``; instance members only.

    The instance's bots join the conversation, and every member hears of
    it through ``conversation.added`` on their user context.
    """
    body = await _json_object(request)
    instance_id = body.get("instanceId")
    if not isinstance(instance_id, str):
        raise ApiError(400, "invalid_body", f"'instanceId' must be a string, got {instance_id!r}")
    with _session(request) as session:
        user_id = authenticate_person(session, request, "create conversations")
        conversation = service.create_conversation(
            session, instance_id=instance_id, title=body.get("title"), creator_id=user_id
        )
        members = service.conversation_member_ids(session, conversation.id)
        result = _conversation_json(conversation)
    await service.announce_conversation(get_backplane(), conversation, members)
    return JSONResponse({"conversation": result}, status_code=201)


def _bot_json(bot: BotView) -> dict[str, Any]:
    return {"id": bot.id, "username": bot.username, "displayName": bot.display_name,
            "instanceId": bot.instance_id, "createdAt": bot.created_at.isoformat()}


def _key_json(key: ApiKeyView, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": key.id, "botId": key.bot_id, "label": key.label,
        "createdAt": key.created_at.isoformat(),
        "lastUsedAt": key.last_used_at.isoformat() if key.last_used_at else None,
        "revokedAt": key.revoked_at.isoformat() if key.revoked_at else None,
    }
    if secret is not None:
        body["key"] = secret
    return body


async def list_instance_bots(request: Request) -> JSONResponse:
    """``GET /api/instances/{id}/bots``: the instance's bots; members only."""
    instance_id = request.path_params["instance_id"]
    with _session(request) as session:
        user_id = authenticate(session, request)
        service.get_instance(session, instance_id)
        if not service.is_instance_member(session, instance_id, user_id):
            raise NotAMemberError(f"you are not a member of instance {instance_id!r}")
        result = [_bot_json(bot) for bot in bots.list_bots(session, instance_id)]
    return JSONResponse({"bots": result})


async def create_instance_bot(request: Request) -> JSONResponse:
    """``POST /api/instances/{id}/bots``: create a bot and its first API key; owner only.

    Body: ``{"username": ..., "displayName": ..., "keyLabel": ...}``
    (``displayName`` defaults to the username). The response holds the key;
    it is shown this once.
    """
    instance_id = request.path_params["instance_id"]
    body = await _json_object(request)
    username, display_name = body.get("username"), body.get("displayName", body.get("username"))
    label = body.get("keyLabel", "")
    if not isinstance(label, str):
        raise ApiError(400, "invalid_body", f"'keyLabel' must be a string, got {label!r}")
    with _session(request) as session:
        user_id = authenticate_person(session, request, "create bots")
        bot = bots.create_bot(session, instance_id=instance_id, username=username,
                              display_name=display_name, created_by=user_id)
        key, secret = bots.create_api_key(session, bot_id=bot.id, created_by=user_id, label=label)
        result = {"bot": _bot_json(bot), "apiKey": _key_json(key, secret)}
    logger.info("user %s created bot %s in instance %s", user_id, bot.id, instance_id)
    return JSONResponse(result, status_code=201)


async def list_bot_keys(request: Request) -> JSONResponse:
    """``GET /api/bots/{id}/keys``: a bot's keys, revoked ones included; owner only."""
    bot_id = _path_int(request, "bot_id")
    with _session(request) as session:
        user_id = authenticate_person(session, request, "manage API keys")
        keys = bots.list_api_keys(session, bot_id=bot_id, user_id=user_id)
    return JSONResponse({"apiKeys": [_key_json(key) for key in keys]})


async def create_bot_key(request: Request) -> JSONResponse:
    """``POST /api/bots/{id}/keys``: a new API key ``{"label": ...}``, shown once; owner only."""
    bot_id = _path_int(request, "bot_id")
    body = await _json_object(request) if await request.body() else {}
    label = body.get("label", "")
    if not isinstance(label, str):
        raise ApiError(400, "invalid_body", f"'label' must be a string, got {label!r}")
    with _session(request) as session:
        user_id = authenticate_person(session, request, "manage API keys")
        key, secret = bots.create_api_key(session, bot_id=bot_id, created_by=user_id, label=label)
    return JSONResponse({"apiKey": _key_json(key, secret)}, status_code=201)


async def revoke_bot_key(request: Request) -> JSONResponse:
    """``DELETE /api/bots/{id}/keys/{key id}``: revoke a key at once; owner only.

    The bot's open event-service connections close with 4003, and every
    token issued to it before is rejected. Clients with another valid key
    fetch a new token and reconnect.
    """
    bot_id, key_id = _path_int(request, "bot_id"), request.path_params["key_id"]
    with _session(request) as session:
        user_id = authenticate_person(session, request, "manage API keys")
        key, version = bots.revoke_api_key(session, bot_id=bot_id, key_id=key_id, user_id=user_id)
    try:
        await announce_revocation(get_backplane(), bot_id, version)
    except Exception:
        # The key is revoked and the new version refuses old tokens at the
        # handshake; only the closing of open connections is missed.
        logger.exception("failed to announce the revocation of key %s of bot %s", key_id, bot_id)
    logger.info("user %s revoked API key %s of bot %s", user_id, key_id, bot_id)
    return JSONResponse({"apiKey": _key_json(key)})


def _chat_error(exc: ChatError) -> ApiError:
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, (NotAMemberError, NotAllowedError)):
        return ApiError(403, "forbidden", str(exc))
    if isinstance(exc, AlreadyExistsError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, MessageDeletedError):
        return ApiError(410, "message_deleted", str(exc))
    if isinstance(exc, RateLimitedError):
        return ApiError(429, "rate_limited", str(exc),
                        headers={"Retry-After": str(math.ceil(exc.retry_after))})
    return ApiError(400, "invalid_input", str(exc))


async def openapi_json(request: Request) -> JSONResponse:
    """``GET /api/openapi.json``: the OpenAPI document; no credentials needed."""
    return JSONResponse(openapi_document())


async def no_such_endpoint(request: Request) -> JSONResponse:
    """Respond to a request that no route takes: 405 when the path exists, else 404."""
    allowed: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.endpoint is not no_such_endpoint:
            match, _ = route.matches({**request.scope, "method": "GET", "type": "http"})
            if match is not Match.NONE and route.methods:
                allowed |= route.methods
    if allowed:
        error = ApiError(405, "method_not_allowed",
                         f"{request.method} is not allowed on {request.url.path}; "
                         f"use {', '.join(sorted(allowed))}")
        response = error.response()
        response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
    return ApiError(404, "not_found", f"no endpoint at {request.url.path}; "
                    "see /api/openapi.json").response()


def create_api(
    settings: Settings | None = None,
    *,
    after_publish: Callable[[MessageView], None] | None = None,
    on_unread_changed: Callable[[Any], Awaitable[None]] | None = None,
    send_limiter: SendLimiter | None = None,
    typing_limiter: TypingLimiter | None = None,
) -> Starlette:
    """Build the Starlette app that Reflex mounts its own routes under.

    Pass the process's ``send_limiter`` and ``typing_limiter`` to share them
    with the web UI; each defaults to a new limiter of this app alone.
    """
    api = Starlette(routes=[
        Route("/api/openapi.json", openapi_json, methods=["GET"]),
        Route("/api/login", _endpoint(log_in), methods=["POST"]),
        Route("/api/login", _endpoint(log_out), methods=["DELETE"]),
        Route("/api/token", _endpoint(create_token), methods=["POST"]),
        Route("/api/devices", _endpoint(list_user_devices), methods=["GET"]),
        Route("/api/devices", _endpoint(register_device), methods=["POST"]),
        Route("/api/devices/{device_id}", _endpoint(delete_device), methods=["DELETE"]),
        Route("/api/conversations/{conversation_id}/messages", _endpoint(list_conversation_messages),
              methods=["GET"]),
        Route("/api/conversations/{conversation_id}/messages", _endpoint(post_conversation_message),
              methods=["POST"]),
        Route("/api/conversations/{conversation_id}/messages/{message_id}",
              _endpoint(edit_conversation_message), methods=["PATCH"]),
        Route("/api/conversations/{conversation_id}/messages/{message_id}",
              _endpoint(delete_conversation_message), methods=["DELETE"]),
        Route("/api/conversations/{conversation_id}/typing", _endpoint(post_typing),
              methods=["POST"]),
        Route("/api/me", _endpoint(who_am_i), methods=["GET"]),
        Route("/api/instances", _endpoint(list_user_instances), methods=["GET"]),
        Route("/api/instances", _endpoint(create_instance), methods=["POST"]),
        Route("/api/instances/{instance_id}/bots", _endpoint(list_instance_bots), methods=["GET"]),
        Route("/api/instances/{instance_id}/bots", _endpoint(create_instance_bot),
              methods=["POST"]),
        Route("/api/bots/{bot_id}/keys", _endpoint(list_bot_keys), methods=["GET"]),
        Route("/api/bots/{bot_id}/keys", _endpoint(create_bot_key), methods=["POST"]),
        Route("/api/bots/{bot_id}/keys/{key_id}", _endpoint(revoke_bot_key),
              methods=["DELETE"]),
        Route("/api/conversations", _endpoint(list_user_conversations), methods=["GET"]),
        Route("/api/conversations", _endpoint(create_conversation), methods=["POST"]),
        Route("/api/conversations/{conversation_id}/read", _endpoint(mark_conversation_read),
              methods=["POST"]),
        Route("/api/conversations/{conversation_id}/members", _endpoint(list_conversation_members),
              methods=["GET"]),
        Route("/api/conversations/{conversation_id}/members", _endpoint(add_conversation_member),
              methods=["POST"]),
        Route("/api/conversations/{conversation_id}/members/{user_id}",
              _endpoint(remove_conversation_member), methods=["DELETE"]),
        # Last: anything else under /api gets a JSON 404 or 405, not the web app's page.
        Route("/api/{rest:path}", no_such_endpoint, methods=_ALL_METHODS),
    ])
    api.state.after_publish = after_publish
    api.state.on_unread_changed = on_unread_changed
    api.state.settings = settings or get_settings()
    api.state.send_limiter = send_limiter or SendLimiter.from_settings(api.state.settings)
    api.state.typing_limiter = typing_limiter or TypingLimiter()
    return api
