"""A bot's client for kilo_web's HTTP API, authenticated with an API key.

Every call retries what may pass on a second try (a refused or dropped
connection, a timeout, HTTP 429 and 5xx) with exponential backoff and full
jitter, and raises ApiError at once for the other 4xx responses. The key is
sent in the ``Authorization`` header and never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import httpx

from kilo_web.event_service.client import backoff_delay

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
"""Tries of one call before it raises ApiUnavailableError, unless the caller sets ``attempts``."""

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    """Raised when the API rejects a call with a 4xx status that a retry would not change."""

    def __init__(self, method: str, path: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{method} {path} failed with HTTP {status} {code}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = message


class ApiUnavailableError(Exception):
    """Raised when a call still failed after its last retry."""


@dataclasses.dataclass(frozen=True, slots=True)
class BotIdentity:
    """The account an API key belongs to, from ``GET /api/me``."""

    id: int
    username: str
    display_name: str
    is_bot: bool
    instance_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class PostedMessage:
    """The response to ``POST .../messages``: the message and whether this call created it."""

    message: dict[str, Any]
    created: bool


class ChatApiClient:
    """Call kilo_web's ``/api`` endpoints as a bot.

    ``attempts`` of each method is the number of tries before
    ApiUnavailableError; None retries until the call succeeds or is
    cancelled, which suits start-up against a backend that is still starting.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_seconds: float = 10.0,
        retry_min_seconds: float = 0.5,
        retry_max_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty; pass the bot's API key")
        self.base_url = base_url.rstrip("/")
        self._retry_min = retry_min_seconds
        self._retry_max = retry_max_seconds
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_seconds,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> ChatApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        attempts: int | None = DEFAULT_ATTEMPTS,
    ) -> tuple[int, Any]:
        """Send one call, retrying as the module docstring describes; return status and JSON body.

        Raises ApiError for a rejected call or a body that is not JSON, and
        ApiUnavailableError after ``attempts`` failed tries.
        """
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in RETRYABLE_STATUSES:
                    return response.status_code, self._decode(method, path, response)
                failure = f"HTTP {response.status_code}"
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise ApiUnavailableError(
                    f"{method} {path} failed {attempt} times, last with {failure}; "
                    f"check that the API at {self.base_url} is up"
                )
            delay = backoff_delay(attempt - 1, minimum=self._retry_min, maximum=self._retry_max)
            # The first failures are expected while the backend starts, so they log at INFO.
            level = logging.INFO if attempt <= 3 else logging.WARNING
            logger.log(level, "%s %s failed with %s; retry %d in %.2f s",
                       method, path, failure, attempt, delay)
            await asyncio.sleep(delay)

    @staticmethod
    def _decode(method: str, path: str, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            raise ApiError(method, path, response.status_code, "invalid_response",
                           "the response is not JSON; check that the URL points at kilo_web's API") from None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            error = error if isinstance(error, dict) else {}
            raise ApiError(method, path, response.status_code,
                           str(error.get("code", "unknown")), str(error.get("message", "")))
        return body

    # Endpoints ----------------------------------------------------------------

    async def me(self, *, attempts: int | None = DEFAULT_ATTEMPTS) -> BotIdentity:
        """``GET /api/me``: the account the key belongs to."""
        _, body = await self.request("GET", "/api/me", attempts=attempts)
        return BotIdentity(
            id=int(body["id"]),
            username=str(body["username"]),
            display_name=str(body["displayName"]),
            is_bot=bool(body["isBot"]),
            instance_id=body.get("instanceId"),
        )

    async def token(self, *, attempts: int | None = DEFAULT_ATTEMPTS) -> str:
        """``POST /api/token``: a fresh event-service token."""
        _, body = await self.request("POST", "/api/token", attempts=attempts)
        return str(body["token"])

    async def conversations(self, *, attempts: int | None = DEFAULT_ATTEMPTS) -> list[dict[str, Any]]:
        """``GET /api/conversations``: the bot's conversations."""
        _, body = await self.request("GET", "/api/conversations", attempts=attempts)
        return list(body["conversations"])

    async def messages(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        attempts: int | None = DEFAULT_ATTEMPTS,
    ) -> list[dict[str, Any]]:
        """``GET .../messages``: a page of messages in ascending ``seq`` order.

        Without bounds it is the newest page; ``after`` returns the oldest
        messages after that seq.
        """
        params = {name: value for name, value in
                  (("after", after), ("before", before), ("limit", limit)) if value is not None}
        _, body = await self.request("GET", f"/api/conversations/{conversation_id}/messages",
                                     params=params, attempts=attempts)
        return list(body["messages"])

    async def post_message(
        self,
        conversation_id: str,
        blocks: list[dict[str, Any]],
        *,
        client_message_id: str,
        attempts: int | None = DEFAULT_ATTEMPTS,
    ) -> PostedMessage:
        """``POST .../messages``; a repeat of ``client_message_id`` returns the first message."""
        status, body = await self.request(
            "POST", f"/api/conversations/{conversation_id}/messages",
            json={"blocks": blocks, "clientMessageId": client_message_id}, attempts=attempts,
        )
        return PostedMessage(message=body["message"], created=status == 201)

    async def mark_read(
        self, conversation_id: str, up_to_seq: int, *, attempts: int | None = DEFAULT_ATTEMPTS
    ) -> None:
        """``POST .../read``: move the bot's read position to ``up_to_seq``."""
        await self.request("POST", f"/api/conversations/{conversation_id}/read",
                           json={"upToSeq": up_to_seq}, attempts=attempts)

    async def members(
        self, conversation_id: str, *, attempts: int | None = DEFAULT_ATTEMPTS
    ) -> list[dict[str, Any]]:
        """``GET .../members``: the conversation's members."""
        _, body = await self.request("GET", f"/api/conversations/{conversation_id}/members",
                                     attempts=attempts)
        return list(body["members"])
