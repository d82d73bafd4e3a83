"""The kilo_web Reflex app: pages, the app shell and the embedded event service."""

from __future__ import annotations

import logging

import reflex as rx
import reflex_local_auth
from reflex.app import default_backend_exception_handler
from reflex.event import EventSpec

from kilo_web.accounts.pages import login_page, register_page
from kilo_web.accounts.state import current_profile_id
from kilo_web.bots.embedded import embedded_demo_bot
from kilo_web.chat.api import create_api
from kilo_web.chat.database import DATABASE_UNAVAILABLE
from kilo_web.chat.tokens import token_for
from kilo_web.event_service.embedded import embedded_event_service
from kilo_web.runtime import (
    notification_service,
    notifications_lifespan,
    send_limiter,
    typing_limiter,
)
from kilo_web.settings import get_settings
from kilo_web.web.chat_state import ChatState
from kilo_web.web.layout import kilo_chat_layout
from kilo_web.web.shell import app_shell, install_app_shell

logger = logging.getLogger(__name__)


def _configure_logging() -> None:
    """Send the kilo_web loggers to stderr; Reflex configures no handler for them."""
    package_logger = logging.getLogger("kilo_web")
    package_logger.setLevel(get_settings().log_level)
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
        ))
        package_logger.addHandler(handler)


_configure_logging()


def _backend_exception_handler(exception: Exception) -> EventSpec:
    """Say plainly when an event failed because the database is unreachable."""
    if isinstance(exception, DATABASE_UNAVAILABLE):
        logger.warning("an event failed, the database is unavailable: %s",
                       exception.__class__.__name__)
        return rx.toast.error(
            "The database is unavailable right now, so that did not happen. "
            "Try again in a few seconds.",
            id="database-unavailable",
        )
    return default_backend_exception_handler(exception)


def index() -> rx.Component:
    """Render the chat page; the route requires a signed-in user."""
    return app_shell(kilo_chat_layout())


app = rx.App(
    backend_exception_handler=_backend_exception_handler,
    api_transformer=create_api(
        after_publish=lambda view: notification_service().after_publish(view),
        on_unread_changed=lambda summary: notification_service().on_unread_changed(summary),
        send_limiter=send_limiter(),
        typing_limiter=typing_limiter(),
    )
)
# The event service starts before the shell's tabs connect to it.
app.register_lifespan_task(embedded_event_service)
app.register_lifespan_task(notifications_lifespan)
# Registered after the event service, so it stops before the service closes.
app.register_lifespan_task(embedded_demo_bot)
install_app_shell(
    app,
    resolve_user_id=current_profile_id,
    issue_token=lambda user_id: token_for(user_id, get_settings()),
)

app.add_page(
    reflex_local_auth.require_login(index),
    route="/",
    title="kilo_web",
    on_load=ChatState.load,
)
app.add_page(login_page, route=reflex_local_auth.routes.LOGIN_ROUTE, title="Log in · kilo_web")
app.add_page(
    register_page, route=reflex_local_auth.routes.REGISTER_ROUTE, title="Sign up · kilo_web"
)
