"""The HTTP API under ``/api``, served by the Reflex backend.

Callers authenticate with ``Authorization: Bearer <session token>``: the
session token the web app keeps after a login (reflex-local-auth's
``LocalAuthSession.session_id``).

=========================  ===============================================
``POST /api/token``        an event-service token and its ``expiresAt``
``GET /api/devices``       the caller's active push devices
``POST /api/devices``      register an Expo token or a Web Push subscription
``DELETE /api/devices/ID`` remove one of the caller's devices
=========================  ===============================================

Every error has one JSON shape::

    {"error": {"code": "unauthorized", "message": "..."}}
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
from typing import Any

from reflex_local_auth.auth_session import LocalAuthSession
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kilo_web.accounts.users import ensure_profile
from kilo_web.chat.database import shared_engine
from kilo_web.chat.errors import ChatError
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


async def create_token(request: Request) -> JSONResponse:
    """``POST /api/token``: an event-service token for the caller and its expiry."""
    settings: Settings = request.app.state.settings
    try:
        with Session(shared_engine(settings.database_url)) as session:
            user_id = authenticate(session, request)
            token, expires_at = issue_user_token(session, user_id, settings=settings)
    except ApiError as exc:
        logger.info("token request rejected: %s", exc.code)
        return exc.response()
    except ChatError as exc:
        logger.info("token request rejected: %s", exc)
        return ApiError(401, "unauthorized", f"{exc}; log in again").response()
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
    settings: Settings = request.app.state.settings
    try:
        with Session(shared_engine(settings.database_url)) as session:
            user_id = authenticate(session, request)
            devices = list_devices(session, user_id)
    except ApiError as exc:
        return exc.response()
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
        with Session(shared_engine(settings.database_url)) as session:
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
    except ApiError as exc:
        return exc.response()
    except ChatError as exc:
        return ApiError(400, "invalid_device", str(exc)).response()
    logger.info("user %s registered %s", user_id, device.redacted())
    return JSONResponse({"device": _device_json(device)}, status_code=201)


async def delete_device(request: Request) -> JSONResponse:
    """``DELETE /api/devices/{id}``: stop pushing to one of the caller's devices."""
    settings: Settings = request.app.state.settings
    device_id = request.path_params["device_id"]
    try:
        with Session(shared_engine(settings.database_url)) as session:
            user_id = authenticate(session, request)
            removed = remove_device(session, user_id=user_id, device_id=device_id)
    except ApiError as exc:
        return exc.response()
    if not removed:
        return ApiError(404, "not_found", f"device {device_id} not found among yours").response()
    logger.info("user %s removed device %s", user_id, device_id)
    return JSONResponse({"removed": device_id})


def create_api(settings: Settings | None = None) -> Starlette:
    """Build the Starlette app that Reflex mounts its own routes under."""
    api = Starlette(routes=[
        Route("/api/token", create_token, methods=["POST"]),
        Route("/api/devices", list_user_devices, methods=["GET"]),
        Route("/api/devices", register_device, methods=["POST"]),
        Route("/api/devices/{device_id:int}", delete_device, methods=["DELETE"]),
    ])
    api.state.settings = settings or get_settings()
    return api
