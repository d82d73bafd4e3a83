"""The HTTP API under ``/api``, served by the Reflex backend.

Callers authenticate with ``Authorization: Bearer <session token>``: the
session token the web app keeps after a login (reflex-local-auth's
``LocalAuthSession.session_id``). Every error has one JSON shape::

    {"error": {"code": "unauthorized", "message": "..."}}
"""

from __future__ import annotations

import datetime as dt
import logging

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
from kilo_web.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by a handler to answer with an error status and code."""

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


def create_api(settings: Settings | None = None) -> Starlette:
    """Build the Starlette app that Reflex mounts its own routes under."""
    api = Starlette(routes=[Route("/api/token", create_token, methods=["POST"])])
    api.state.settings = settings or get_settings()
    return api
