"""The app shell: one event-service connection per browser tab.

``EventServiceState`` is the Reflex state that hook components talk to (see
``kilo_web.web.hooks``). Its sink forwards each tab's subscriptions to that
tab's ``TabConnection`` in a per-process ``TabConnectionRegistry``, which
opens the connection lazily, for the signed-in user, on the tab's first
subscribe. Incoming events are applied to the tab's states in batches with
``app.modify_state``, through handlers registered with ``add_event_handler``.

Installing it::

    app = rx.App()
    install_app_shell(app, resolve_user_id=current_user_id)

``resolve_user_id(state)`` receives the tab's ``EventServiceState`` and
returns the signed-in user's id, or None; it typically reads another state
with ``await state.get_state(SomeAuthState)``. After a sign-in or sign-out,
chain ``EventServiceState.resubscribe`` so the mounted components subscribe
again for the new user.

In pages: wrap signed-in content in ``app_shell(...)``, which holds the
platform presence context, and hold other contexts with
``use_event_subscription(context, active)``.

A tab's connection is closed ``tab_grace_seconds`` after its Reflex socket
disconnected, unless the same client token connects again first. Reflex
0.10.1 offers no disconnect hook, so a lifespan task wraps the socket
namespace's ``on_connect`` and ``on_disconnect``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import reflex as rx

from kilo_web.event_service.contexts import platform_presence_context, validate_context
from kilo_web.event_service.protocol import Event
from kilo_web.settings import Settings, get_settings
from kilo_web.web.event_handlers import (
    EventBatchHandler,
    add_event_handler,
    plan_delivery,
    run_handlers,
)
from kilo_web.web.hooks import (
    SubscriptionEpochMiddleware,
    SubscriptionHook,
    SubscriptionState,
    use_subscription,
)
from kilo_web.web.tab_connections import (
    ConnectionStatus,
    DeliveryItem,
    StatusChange,
    TabConnectionRegistry,
    short_tab_id,
)

__all__ = [
    "EventBatchHandler",
    "EventServiceState",
    "UserIdResolver",
    "add_event_handler",
    "app_shell",
    "get_registry",
    "install_app_shell",
    "use_event_subscription",
]

logger = logging.getLogger(__name__)

TokenIssuer = Callable[[str], Awaitable[str]]
"""Return a fresh event-service token for a user id."""

UserIdResolver = Callable[[Any], Awaitable[Any] | Any]
"""Return the signed-in user's id (or None) for a tab, given its ``EventServiceState``."""


class _AppShell:
    """An installed app shell: the app, its tab connection registry and the user lookup."""

    def __init__(
        self,
        app: rx.App,
        settings: Settings,
        resolve_user_id: UserIdResolver,
        issue_token: TokenIssuer | None = None,
    ) -> None:
        self.app = app
        self.resolve_user_id = resolve_user_id
        self.registry = TabConnectionRegistry(
            url=settings.event_service_urls,
            jwt_secret=settings.jwt_secret,
            deliver=self.deliver,
            grace_seconds=settings.tab_grace_seconds,
            release_delay_seconds=settings.release_delay_seconds,
            token_ttl_seconds=settings.token_ttl_seconds,
            reconnect_min_seconds=settings.reconnect_min_seconds,
            reconnect_max_seconds=settings.reconnect_max_seconds,
            issue_token=issue_token,
        )

    async def user_id_of(self, state: SubscriptionState) -> str | None:
        """Return the tab's user id as a string, or None if no user is signed in or the lookup failed."""
        try:
            user_id = self.resolve_user_id(state)
            if inspect.isawaitable(user_id):
                user_id = await user_id
        except Exception:
            # Without a user the tab subscribes nothing; the page keeps working.
            logger.exception("resolving the signed-in user failed")
            return None
        return None if user_id is None or user_id == "" else str(user_id)

    async def deliver(self, token: str, batch: list[DeliveryItem]) -> None:
        """Apply one batch of a tab's items to its states, one ``modify_state`` per state class."""
        statuses = [item.status for item in batch if isinstance(item, StatusChange)]
        plan = plan_delivery(item for item in batch if isinstance(item, Event))
        if statuses:
            plan.setdefault(EventServiceState, [])
        for state_cls, handlers in plan.items():
            async with self.app.modify_state(rx.BaseStateToken(ident=token, cls=state_cls)) as root:
                state = await root.get_state(state_cls)
                if state_cls is EventServiceState and statuses:
                    state.connection_status = statuses[-1].value
                await run_handlers(state, handlers, tab=short_tab_id(token))


_shell: _AppShell | None = None


def _require_shell() -> _AppShell:
    if _shell is None:
        raise RuntimeError("the app shell is not installed; call install_app_shell(app) at startup")
    return _shell


def get_registry() -> TabConnectionRegistry:
    """Return the tab connection registry of this process (for status pages and tests)."""
    return _require_shell().registry


def _client_token(state: SubscriptionState) -> str:
    token = state.router.session.client_token
    if not token:
        # Reflex sets the token from every event's router data; an event without one is a bug.
        raise RuntimeError(f"{type(state).__name__} has no client token; it cannot own a connection")
    return token


class _EventServiceSink:
    """Forward one tab's 0 -> 1 and 1 -> 0 transitions to its ``TabConnection``."""

    def validate_context(self, context: str) -> str:
        return validate_context(context)

    async def subscribe(self, state: SubscriptionState, context: str) -> None:
        shell = _require_shell()
        user_id = await shell.user_id_of(state)
        if user_id is None:
            logger.debug("ignored subscribe to %s: no user is signed in", context)
            return
        shell.registry.subscribe(_client_token(state), user_id, context)

    async def unsubscribe(self, state: SubscriptionState, context: str) -> None:
        _require_shell().registry.unsubscribe(_client_token(state), context)

    async def reset(self, state: SubscriptionState, held: list[str]) -> None:
        shell = _require_shell()
        token = _client_token(state)
        shell.registry.carry_over(token, await shell.user_id_of(state))
        if shell.registry.get(token) is None:
            state.connection_status = ConnectionStatus.IDLE.value  # type: ignore[attr-defined]


class EventServiceState(SubscriptionState, rx.State):
    """The tab's event-service subscriptions and connection status."""

    subscription_sink: ClassVar[_EventServiceSink] = _EventServiceSink()

    connection_status: str = ConnectionStatus.IDLE.value
    """One of ``idle``, ``connecting``, ``connected`` and ``reconnecting``."""

    @rx.var
    def event_service_reconnecting(self) -> bool:
        """True while the tab's event-service socket is lost and the client reconnects."""
        return self.connection_status == ConnectionStatus.RECONNECTING.value


def use_event_subscription(
    context: rx.Var[str] | str | None, active: rx.Var[bool] | bool = True
) -> SubscriptionHook:
    """Return a component that holds ``context`` on the tab's event-service connection.

    The context is held while the component is mounted and ``active`` is
    true. Inside ``rx.cond``, pass the condition as ``active``; inside
    ``rx.foreach``, wrap the call in an ``@rx.memo`` component that takes the
    context as a prop (see ``kilo_web.web.hooks``).
    """
    return use_subscription(context, active, state=EventServiceState)


def use_presence_subscription(
    context: rx.Var[str] | str | None, active: rx.Var[bool] | bool = True
) -> SubscriptionHook:
    """Return a component that holds a presence context on the tab's connection.

    The same contract as ``use_event_subscription``: held while mounted and
    ``active`` is true; None or an empty context holds nothing. Tie ``active``
    to page visibility for the conversation tier, so a hidden tab leaves.
    """
    return use_event_subscription(context, active)


def app_shell(*children: rx.Component, **props: Any) -> rx.Component:
    """Wrap a signed-in page: hold the platform presence context while it is shown."""
    return rx.fragment(use_presence_subscription(platform_presence_context()), *children, **props)


def _token_from_environ(environ: dict[str, Any]) -> str | None:
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    values = query.get("token")
    return values[0] if values else None


def _watch_tab_sockets(app: rx.App, registry: TabConnectionRegistry) -> Callable[[], None]:
    """Wrap the Reflex socket namespace's connect and disconnect; return an undo function."""
    namespace = app.event_namespace
    if namespace is None:
        raise RuntimeError("the Reflex app has no socket namespace; enable state before installing the shell")
    original_connect = namespace.on_connect
    original_disconnect = namespace.on_disconnect

    async def on_connect(sid: str, environ: dict, auth: Any = None) -> Any:
        token = _token_from_environ(environ)
        if token:
            registry.cancel_close(token)
        return await original_connect(sid, environ, auth)

    def on_disconnect(sid: str, reason: Any = None) -> Any:
        # The original drops the sid -> token link, so read it first.
        token = namespace.sid_to_token.get(sid)
        result = original_disconnect(sid)
        if token:
            registry.tab_disconnected(token)
        return result

    def tab_connected(token: str) -> bool:
        return token in namespace.token_to_sid

    # python-socketio looks the handlers up by attribute name on each call,
    # so instance attributes take precedence over the methods.
    namespace.on_connect = on_connect  # type: ignore[method-assign]
    namespace.on_disconnect = on_disconnect  # type: ignore[method-assign]
    registry.is_tab_connected = tab_connected

    def undo() -> None:
        namespace.__dict__.pop("on_connect", None)
        namespace.__dict__.pop("on_disconnect", None)

    return undo


def install_app_shell(
    app: rx.App,
    *,
    resolve_user_id: UserIdResolver,
    settings: Settings | None = None,
    issue_token: TokenIssuer | None = None,
) -> TabConnectionRegistry:
    """Set up the app shell on ``app``: middleware, lifespan task and registry.

    Call it once, where the app is created. ``issue_token(user_id)`` returns
    a token for each (re)connect of a tab; without it the shell signs one
    with token version 0. ``settings`` defaults to
    ``get_settings()``; the shell reads the event-service URL, the JWT
    secret and lifetime, the reconnect backoff, ``tab_grace_seconds`` and
    ``release_delay_seconds``. Returns the registry of tab connections.
    """
    global _shell
    if any(isinstance(middleware, SubscriptionEpochMiddleware) for middleware in app._middlewares):
        raise RuntimeError("install_app_shell() was already called for this app")
    settings = settings or get_settings()
    shell = _AppShell(app, settings, resolve_user_id, issue_token)
    registry = shell.registry
    _shell = shell

    @contextlib.asynccontextmanager
    async def app_shell_lifespan() -> AsyncIterator[None]:
        undo = _watch_tab_sockets(app, registry)
        logger.info("app shell started; event service at %s", settings.event_service_url)
        try:
            yield
        finally:
            undo()
            await registry.close_all()
            logger.info("app shell stopped")

    app.register_lifespan_task(app_shell_lifespan)
    app.add_middleware(SubscriptionEpochMiddleware(EventServiceState))
    return registry
