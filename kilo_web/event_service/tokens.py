"""Event-service tokens: HS256 JWTs that name a user.

Claims: ``kiloUserId`` (string), ``tokenSource`` (``web``, ``mobile``,
``bot``, ...), ``version`` (a per-user number; raising it revokes older
tokens) and ``exp``. PyJWT checks the signature, the algorithm and the
expiry; this module checks that every claim is present and well typed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import jwt

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("kiloUserId", "tokenSource", "version", "exp")


class InvalidToken(ValueError):
    """Raised when a token is malformed, forged, expired or lacks a claim."""


@dataclasses.dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of a token."""

    user_id: str
    token_source: str
    version: int
    expires_at: dt.datetime


def issue_token(
    secret: str,
    user_id: str,
    *,
    token_source: str = "web",
    version: int = 0,
    ttl_seconds: int = 3600,
    now: dt.datetime | None = None,
) -> tuple[str, dt.datetime]:
    """Sign a token for ``user_id``; return it with its expiry (UTC)."""
    issued_at = now or dt.datetime.now(dt.UTC)
    expires_at = (issued_at + dt.timedelta(seconds=ttl_seconds)).replace(microsecond=0)
    claims = {
        "kiloUserId": str(user_id),
        "tokenSource": token_source,
        "version": version,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires_at


def mint_token(
    secret: str,
    user_id: str,
    *,
    token_source: str = "web",
    version: int = 0,
    ttl_seconds: int = 3600,
) -> str:
    """Sign a token for ``user_id``; see issue_token for one that returns its expiry."""
    token, _ = issue_token(
        secret, user_id, token_source=token_source, version=version, ttl_seconds=ttl_seconds
    )
    return token


def decode_token(secret: str, token: str, *, leeway_seconds: float = 0) -> TokenClaims:
    """Verify ``token`` and return its claims; raise InvalidToken on any fault."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": list(REQUIRED_CLAIMS)},
            leeway=leeway_seconds,
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token has expired; fetch a new one") from None
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken(f"token is invalid: {exc}") from None
    except jwt.DecodeError:
        # Session tokens and API keys are no JWTs, and PyJWT's own text would not say so.
        raise InvalidToken(
            "token is invalid: it is not an event-service token (a JWT); exchange a "
            "session token or API key for one with POST /api/token"
        ) from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"token is invalid: {exc}") from None

    user_id, source, version = claims["kiloUserId"], claims["tokenSource"], claims["version"]
    if not isinstance(user_id, str) or not user_id:
        raise InvalidToken("claim 'kiloUserId' must be a non-empty string")
    if not isinstance(source, str) or not source:
        raise InvalidToken("claim 'tokenSource' must be a non-empty string")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidToken("claim 'version' must be a non-negative integer")
    return TokenClaims(
        user_id=user_id,
        token_source=source,
        version=version,
        expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
    )
