"""Configuration of kilo_web, read from the environment.

Every setting is an environment variable with a default that suits the
embedded single-process deployment (SQLite file, event service started by
the Reflex backend). ``get_settings()`` reads the environment once per
process; tests build ``Settings`` objects directly or call
``get_settings.cache_clear()`` after changing the environment.

=============================  ==============================================
Variable                       Meaning
=============================  ==============================================
KILO_DATA_DIR                  Folder for the SQLite file and the generated
                               JWT secret. Default: ``data`` in the project.
KILO_DATABASE_URL              SQLAlchemy URL of the database. Default: the
                               SQLite file ``kilo_web.db`` in KILO_DATA_DIR.
KILO_JWT_SECRET                HS256 secret that signs event-service tokens.
                               When unset, a random secret is generated once
                               and kept in ``KILO_DATA_DIR/jwt-secret``.
KILO_TOKEN_TTL_SECONDS         Lifetime of an event-service token. Default
                               3600.
KILO_EVENT_SERVICE_HOST        Interface the event service listens on.
                               Default ``127.0.0.1``.
KILO_EVENT_SERVICE_PORT        TCP port of the event service. Default 8765.
KILO_EVENT_SERVICE_URL         URL the web backend connects to. Default
                               ``ws://{host}:{port}`` from the two above.
KILO_EMBED_EVENT_SERVICE       ``1`` starts the event service inside the
                               Reflex backend process (single worker only);
                               ``0`` expects it to run as its own process.
                               Default 1.
KILO_MAX_FRAME_BYTES           Largest WebSocket frame the event service
                               accepts. Default 65536.
KILO_RECONNECT_MIN_SECONDS     First reconnect delay of the SDK. Default 0.5.
KILO_RECONNECT_MAX_SECONDS     Cap of the SDK's exponential backoff.
                               Default 30.
KILO_TAB_GRACE_SECONDS         How long a browser tab's event-service socket
                               outlives the tab's Reflex socket, so that a
                               reload reuses it. Default 10.
KILO_RELEASE_DELAY_SECONDS     How long a tab's event-service socket keeps a
                               context after the page released it, so that a
                               component mounted again at once (React
                               StrictMode, a page change) claims it back with
                               no unsubscribe and subscribe. Default 1.
KILO_SEED_DEMO                 ``1`` seeds demo users, an instance and a
                               conversation into an empty database at set-up.
                               Default 1.
KILO_LOG_LEVEL                 Level of the ``kilo_web`` loggers. Default
                               INFO.
=============================  ==============================================
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """Raised when an environment variable contains a value that cannot be used."""


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer; set a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; set seconds as a decimal") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean; use 1 or 0")


def _read_or_create_secret(path: Path) -> str:
    """Return the secret stored in ``path``, creating it with mode 0600 if missing."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if secret:
        return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL makes a second process that races us read the first one's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """The resolved configuration; see the module docstring for each field."""

    data_dir: Path
    database_url: str
    jwt_secret: str
    token_ttl_seconds: int = 3600
    event_service_host: str = "127.0.0.1"
    event_service_port: int = 8765
    event_service_url: str = "ws://127.0.0.1:8765"
    embed_event_service: bool = True
    max_frame_bytes: int = 65536
    reconnect_min_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    tab_grace_seconds: float = 10.0
    release_delay_seconds: float = 1.0
    seed_demo: bool = True
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise SettingsError(
                f"KILO_RECONNECT_MIN_SECONDS={self.reconnect_min_seconds} is above "
                f"KILO_RECONNECT_MAX_SECONDS={self.reconnect_max_seconds}; lower the first"
            )
        if len(self.jwt_secret) < 32:
            raise SettingsError(
                "KILO_JWT_SECRET is shorter than 32 characters; use a longer random value"
            )

    @property
    def async_database_url(self) -> str:
        """The database URL with the asyncio driver of its dialect."""
        if self.database_url.startswith("sqlite:"):
            return "sqlite+aiosqlite:" + self.database_url.removeprefix("sqlite:")
        if self.database_url.startswith(("postgresql:", "postgresql+psycopg:")):
            return "postgresql+psycopg:" + self.database_url.split(":", 1)[1]
        return self.database_url

    @classmethod
    def from_env(cls) -> Settings:
        """Read every ``KILO_*`` variable; raise SettingsError on a bad value."""
        data_dir = Path(_env_str("KILO_DATA_DIR", str(PROJECT_DIR / "data"))).resolve()
        host = _env_str("KILO_EVENT_SERVICE_HOST", "127.0.0.1")
        port = _env_int("KILO_EVENT_SERVICE_PORT", 8765, minimum=0)
        secret = os.environ.get("KILO_JWT_SECRET", "").strip()
        if not secret:
            secret = _read_or_create_secret(data_dir / "jwt-secret")
        return cls(
            data_dir=data_dir,
            database_url=_env_str("KILO_DATABASE_URL", f"sqlite:///{data_dir / 'kilo_web.db'}"),
            jwt_secret=secret,
            token_ttl_seconds=_env_int("KILO_TOKEN_TTL_SECONDS", 3600, minimum=60),
            event_service_host=host,
            event_service_port=port,
            event_service_url=_env_str("KILO_EVENT_SERVICE_URL", f"ws://{host}:{port}"),
            embed_event_service=_env_bool("KILO_EMBED_EVENT_SERVICE", True),
            max_frame_bytes=_env_int("KILO_MAX_FRAME_BYTES", 65536, minimum=1024),
            reconnect_min_seconds=_env_float("KILO_RECONNECT_MIN_SECONDS", 0.5, minimum=0.01),
            reconnect_max_seconds=_env_float("KILO_RECONNECT_MAX_SECONDS", 30.0, minimum=0.01),
            tab_grace_seconds=_env_float("KILO_TAB_GRACE_SECONDS", 10.0),
            release_delay_seconds=_env_float("KILO_RELEASE_DELAY_SECONDS", 1.0),
            seed_demo=_env_bool("KILO_SEED_DEMO", True),
            log_level=_env_str("KILO_LOG_LEVEL", "INFO").upper(),
        )


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    return Settings.from_env()
