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
                               JWT secret. Default: ``.data`` in the project;
                               a hidden folder, because ``reflex run`` reloads
                               the backend on changes in other folders.
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
KILO_EVENT_SERVICE_URL         URL the web backend connects to, or several
                               nodes' URLs separated by commas (a client
                               moves to the next when one is gone). Default
                               ``ws://{host}:{port}`` from the two above.
KILO_EMBED_EVENT_SERVICE       ``1`` starts the event service inside the
                               Reflex backend process (single worker only);
                               ``0`` expects it to run as its own process.
                               Default 1.
KILO_REDIS_URL                 Redis URL (``redis://host:6379/0``) of the
                               backplane that carries events and presence
                               between event-service nodes and the processes
                               that publish. Default: empty, which keeps
                               fan-out in process (one node only).
KILO_REDIS_PREFIX              Start of every Redis key and channel name, so
                               several deployments can share one Redis.
                               Default ``kilo:``.
KILO_NODE_ID                   Name of this event-service node in Redis; it
                               must stay the same across restarts, so a node
                               can clear the presence entries it left
                               behind. Default ``{host}:{port}``.
KILO_PRESENCE_TTL_SECONDS      With Redis, how long a node's presence entries
                               outlive its last heartbeat; heartbeats come
                               every third of it. Default 15.
KILO_EVENT_SERVICE_COMPRESSION ``deflate`` offers permessage-deflate to
                               clients; ``none`` does not. Compression
                               keeps about 40 KiB of state per connection.
                               Default none.
KILO_MAX_FRAME_BYTES           Largest WebSocket frame the event service
                               accepts. Default 65536.
KILO_MAX_BUFFERED_BYTES        Bytes of events that may wait to be sent to one
                               connection; a client that falls further behind
                               is closed with code 4008. Default 1048576.
KILO_PRESENCE_GRACE_SECONDS    How long a user who lost their last connection
                               to a presence context stays listed, so a
                               reload shows no leave. Default 5.
KILO_PING_INTERVAL_SECONDS     How often the event service pings each
                               connection. Default 20.
KILO_PING_TIMEOUT_SECONDS      How long a ping may go unanswered before the
                               connection counts as dead. Default 20.
KILO_MAX_FRAMES_PER_SECOND     Client frames one connection may send per
                               second on average (bursts of 4 times more).
                               Default 50.
KILO_MESSAGES_PER_MINUTE       Messages one user may post a minute on average,
                               over HTTP and from the web UI (each worker
                               counts on its own). Default 60.
KILO_MESSAGE_BURST             Messages one user may post in a quick burst
                               before that average applies. Default 20.
KILO_USER_SUBSCRIBES_PER_SECOND
                               New contexts one user may subscribe to a
                               second, over all their connections to a node,
                               after a burst of 1000. Default 50.
KILO_HISTORY_SIZE              Events kept per context for clients that
                               reconnect and ask for what they missed.
                               Default 500.
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
KILO_PUSH_TRANSPORTS           Push transports to send through, comma
                               separated: ``expo``, ``webpush``, or empty for
                               none. Default ``expo,webpush``.
KILO_PUSH_TIMEOUT_SECONDS      Timeout of one request to a push service.
                               Default 10.
KILO_PUSH_MAX_ATTEMPTS         Sends of one push before the dispatcher gives
                               up until the next start. Default 3.
KILO_PUSH_RETRY_BASE_SECONDS   First delay between two sends of a push; it
                               doubles after each failure. Default 1.
KILO_PUSH_IDEMPOTENCY_TTL_SECONDS
                               How long a (message, recipient) push record is
                               kept, and how long after a message a push for
                               it is still sent. Default 86400.
KILO_PUSH_RECOVERY_SECONDS     At start, how far back to look for messages
                               whose push dispatch died before it began (a
                               crash right after the message was stored);
                               they are dispatched then. Default 900.
KILO_EXPO_API_URL              Base URL of Expo's push API. Default
                               ``https://exp.host/--/api/v2``.
KILO_EXPO_ACCESS_TOKEN         Expo access token, sent when the Expo project
                               requires one. Default: none.
KILO_EXPO_RECEIPT_DELAY_SECONDS
                               How long after a send Expo receipts are
                               fetched. Default 900.
KILO_VAPID_PRIVATE_KEY_FILE    PEM file of the VAPID key that signs Web
                               Push requests; ``python -m
                               kilo_web.notifications.vapid`` creates it.
                               Default ``vapid-private.pem`` in
                               KILO_DATA_DIR.
KILO_VAPID_SUBJECT             Contact URL sent to Web Push services
                               (``mailto:`` or ``https:``). Default
                               ``mailto:admin@localhost``; set a real one,
                               because some push services reject it.
KILO_WEBPUSH_ENDPOINT_ORIGINS  Origins a Web Push subscription endpoint may
                               point at, comma separated; ``*.`` at the
                               start of a host matches its subdomains.
                               Default: the push services of Chrome,
                               Firefox, Safari and Edge.
KILO_WEBPUSH_TTL_SECONDS       How long a Web Push service keeps a push for
                               an offline browser. Default 86400.
KILO_DEMO_BOT                  ``1`` runs the demo bot (``kilo_web.bots.demo``)
                               inside the Reflex backend process when it has
                               an API key; ``0`` does not. Default 1.
KILO_BOT_API_URL               Base URL where the demo bot finds ``/api``.
                               Default ``http://127.0.0.1:{port}``, with the
                               port from ``REFLEX_BACKEND_PORT`` (which
                               ``reflex run`` sets) or 8000, read when the
                               bot starts.
KILO_BOT_API_KEY_FILE          File that holds the demo bot's API key, mode
                               0600; the seed and ``python -m
                               kilo_web.bots.keys create`` write it. Default
                               ``demo-bot.key`` in KILO_DATA_DIR.
KILO_BOT_API_KEY               The demo bot's API key itself; when set, it is
                               used instead of KILO_BOT_API_KEY_FILE. Default:
                               none.
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


def _env_compression() -> str | None:
    value = _env_str("KILO_EVENT_SERVICE_COMPRESSION", "none").lower()
    if value not in ("none", "deflate"):
        raise SettingsError(
            f"KILO_EVENT_SERVICE_COMPRESSION={value!r} is not supported; use none or deflate"
        )
    return None if value == "none" else value


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer; set a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} is below the minimum {minimum}; set {minimum} or more")
    return value


def _env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; set a decimal number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} is below the minimum {minimum}; set {minimum} or more")
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


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


DEFAULT_WEBPUSH_ENDPOINT_ORIGINS = (
    "https://fcm.googleapis.com",
    "https://updates.push.services.mozilla.com",
    "https://web.push.apple.com",
    "https://*.notify.windows.com",
)
"""Push services of Chrome, Firefox, Safari and Edge; subscriptions elsewhere are rejected."""


DEFAULT_BACKEND_PORT = 8000
"""Port of the Reflex backend when ``REFLEX_BACKEND_PORT`` is unset (Reflex 0.10's default)."""


def local_backend_url() -> str:
    """Return the loopback URL of the Reflex backend, from ``REFLEX_BACKEND_PORT`` now.

    ``reflex run --backend-port N`` exports ``REFLEX_BACKEND_PORT=N`` only
    after it has read the settings, and Reflex 0.10 forks its backend workers
    with that cache, so the port is read at each call instead of once.
    """
    port = _env_int("REFLEX_BACKEND_PORT", DEFAULT_BACKEND_PORT, minimum=1)
    return f"http://127.0.0.1:{port}"


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
    redis_url: str = dataclasses.field(default="", repr=False)
    redis_prefix: str = "kilo:"
    node_id: str = ""
    presence_ttl_seconds: float = 15.0
    max_frame_bytes: int = 65536
    event_service_compression: str | None = None
    max_buffered_bytes: int = 1 << 20
    presence_grace_seconds: float = 5.0
    ping_interval_seconds: float = 20.0
    ping_timeout_seconds: float = 20.0
    max_frames_per_second: float = 50.0
    history_size: int = 500
    messages_per_minute: float = 60.0
    user_subscribes_per_second: float = 50.0
    message_burst: int = 20
    reconnect_min_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    tab_grace_seconds: float = 10.0
    release_delay_seconds: float = 1.0
    seed_demo: bool = True
    log_level: str = "INFO"
    push_transports: tuple[str, ...] = ("expo", "webpush")
    push_timeout_seconds: float = 10.0
    push_max_attempts: int = 3
    push_retry_base_seconds: float = 1.0
    push_idempotency_ttl_seconds: int = 86400
    push_recovery_seconds: int = 900
    expo_api_url: str = "https://exp.host/--/api/v2"
    expo_access_token: str = dataclasses.field(default="", repr=False)
    expo_receipt_delay_seconds: float = 900.0
    vapid_private_key_file: Path | None = None
    vapid_subject: str = "mailto:admin@localhost"
    webpush_endpoint_origins: tuple[str, ...] = DEFAULT_WEBPUSH_ENDPOINT_ORIGINS
    webpush_ttl_seconds: int = 86400
    demo_bot: bool = True
    bot_api_url: str | None = None
    bot_api_key_file: Path | None = None
    bot_api_key: str = dataclasses.field(default="", repr=False)

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
    def event_service_urls(self) -> list[str]:
        """The event-service nodes: KILO_EVENT_SERVICE_URL split at commas."""
        return [url.strip() for url in self.event_service_url.split(",") if url.strip()]

    @property
    def vapid_key_path(self) -> Path:
        """The VAPID private key file: KILO_VAPID_PRIVATE_KEY_FILE or one in the data folder."""
        return self.vapid_private_key_file or self.data_dir / "vapid-private.pem"

    @property
    def bot_api_base_url(self) -> str:
        """The demo bot's API URL: KILO_BOT_API_URL or, when unset, ``local_backend_url()``."""
        return self.bot_api_url or local_backend_url()

    @property
    def bot_api_key_path(self) -> Path:
        """The demo bot's key file: KILO_BOT_API_KEY_FILE or ``demo-bot.key`` in the data folder."""
        return self.bot_api_key_file or self.data_dir / "demo-bot.key"

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
        data_dir = Path(_env_str("KILO_DATA_DIR", str(PROJECT_DIR / ".data"))).resolve()
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
            redis_url=_env_str("KILO_REDIS_URL", ""),
            redis_prefix=_env_str("KILO_REDIS_PREFIX", "kilo:"),
            node_id=_env_str("KILO_NODE_ID", f"{host}:{port}"),
            presence_ttl_seconds=_env_float("KILO_PRESENCE_TTL_SECONDS", 15.0, minimum=1.0),
            max_frame_bytes=_env_int("KILO_MAX_FRAME_BYTES", 65536, minimum=1024),
            event_service_compression=_env_compression(),
            max_buffered_bytes=_env_int("KILO_MAX_BUFFERED_BYTES", 1 << 20, minimum=65536),
            presence_grace_seconds=_env_float("KILO_PRESENCE_GRACE_SECONDS", 5.0),
            ping_interval_seconds=_env_float("KILO_PING_INTERVAL_SECONDS", 20.0, minimum=0.1),
            ping_timeout_seconds=_env_float("KILO_PING_TIMEOUT_SECONDS", 20.0, minimum=0.1),
            max_frames_per_second=_env_float("KILO_MAX_FRAMES_PER_SECOND", 50.0, minimum=1.0),
            history_size=_env_int("KILO_HISTORY_SIZE", 500, minimum=0),
            messages_per_minute=_env_float("KILO_MESSAGES_PER_MINUTE", 60.0, minimum=0.1),
            user_subscribes_per_second=_env_float(
                "KILO_USER_SUBSCRIBES_PER_SECOND", 50.0, minimum=0.1
            ),
            message_burst=_env_int("KILO_MESSAGE_BURST", 20, minimum=1),
            reconnect_min_seconds=_env_float("KILO_RECONNECT_MIN_SECONDS", 0.5, minimum=0.01),
            reconnect_max_seconds=_env_float("KILO_RECONNECT_MAX_SECONDS", 30.0, minimum=0.01),
            tab_grace_seconds=_env_float("KILO_TAB_GRACE_SECONDS", 10.0),
            release_delay_seconds=_env_float("KILO_RELEASE_DELAY_SECONDS", 1.0),
            seed_demo=_env_bool("KILO_SEED_DEMO", True),
            log_level=_env_str("KILO_LOG_LEVEL", "INFO").upper(),
            push_transports=_env_list("KILO_PUSH_TRANSPORTS", ("expo", "webpush")),
            push_timeout_seconds=_env_float("KILO_PUSH_TIMEOUT_SECONDS", 10.0, minimum=0.01),
            push_max_attempts=_env_int("KILO_PUSH_MAX_ATTEMPTS", 3, minimum=1),
            push_retry_base_seconds=_env_float("KILO_PUSH_RETRY_BASE_SECONDS", 1.0),
            push_idempotency_ttl_seconds=_env_int(
                "KILO_PUSH_IDEMPOTENCY_TTL_SECONDS", 86400, minimum=60
            ),
            push_recovery_seconds=_env_int("KILO_PUSH_RECOVERY_SECONDS", 900, minimum=0),
            expo_api_url=_env_str("KILO_EXPO_API_URL", "https://exp.host/--/api/v2").rstrip("/"),
            expo_access_token=os.environ.get("KILO_EXPO_ACCESS_TOKEN", "").strip(),
            expo_receipt_delay_seconds=_env_float("KILO_EXPO_RECEIPT_DELAY_SECONDS", 900.0),
            vapid_private_key_file=Path(
                _env_str("KILO_VAPID_PRIVATE_KEY_FILE", str(data_dir / "vapid-private.pem"))
            ),
            vapid_subject=_env_str("KILO_VAPID_SUBJECT", "mailto:admin@localhost"),
            webpush_endpoint_origins=_env_list(
                "KILO_WEBPUSH_ENDPOINT_ORIGINS", DEFAULT_WEBPUSH_ENDPOINT_ORIGINS
            ),
            webpush_ttl_seconds=_env_int("KILO_WEBPUSH_TTL_SECONDS", 86400, minimum=0),
            demo_bot=_env_bool("KILO_DEMO_BOT", True),
            bot_api_url=_env_str("KILO_BOT_API_URL", "").rstrip("/") or None,
            bot_api_key_file=Path(
                _env_str("KILO_BOT_API_KEY_FILE", str(data_dir / "demo-bot.key"))
            ),
            bot_api_key=os.environ.get("KILO_BOT_API_KEY", "").strip(),
        )


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    return Settings.from_env()
