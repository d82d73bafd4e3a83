"""Login and registration pages bound to this project's account states.

The layout is reflex-local-auth's stock pages; only the states differ, so
the input rules of ``kilo_web.accounts.users`` apply. Register them with::

    app.add_page(login_page, route=reflex_local_auth.routes.LOGIN_ROUTE, title="Log in")
    app.add_page(register_page, route=reflex_local_auth.routes.REGISTER_ROUTE, title="Register")
"""

from __future__ import annotations

import reflex as rx
import reflex_local_auth
from reflex_local_auth.pages.components import MIN_WIDTH, PADDING_TOP, input_100w

from kilo_web.accounts.state import LoginState, RegistrationState


def _error_callout(message: rx.Var) -> rx.Component:
    return rx.cond(
        message != "",
        rx.callout(message, icon="triangle_alert", color_scheme="red", role="alert", width="100%"),
    )


def login_page() -> rx.Component:
    """Render the login form."""
    form = rx.form(
        rx.vstack(
            rx.heading("Log in to your account", size="7"),
            _error_callout(LoginState.error_message),
            rx.text("Username"),
            input_100w("username"),
            rx.text("Password"),
            input_100w("password", type="password"),
            rx.button("Sign in", width="100%"),
            rx.center(
                rx.link("Register", href=reflex_local_auth.routes.REGISTER_ROUTE),
                width="100%",
            ),
            min_width=MIN_WIDTH,
        ),
        on_submit=LoginState.on_submit,
    )
    return rx.center(
        rx.cond(LoginState.is_hydrated, rx.card(form)),
        padding_top=PADDING_TOP,
    )


def register_page() -> rx.Component:
    """Render the registration form, or a confirmation once the account exists."""
    form = rx.form(
        rx.vstack(
            rx.heading("Create an account", size="7"),
            _error_callout(RegistrationState.error_message),
            rx.text("Username"),
            input_100w("username"),
            rx.text("Password"),
            input_100w("password", type="password"),
            rx.text("Confirm password"),
            input_100w("confirm_password", type="password"),
            rx.button("Sign up", width="100%"),
            rx.center(
                rx.link("Log in", href=reflex_local_auth.routes.LOGIN_ROUTE),
                width="100%",
            ),
            min_width=MIN_WIDTH,
        ),
        on_submit=RegistrationState.handle_registration,
    )
    success = rx.vstack(
        rx.text("Registration successful!"),
        rx.spinner(),
        align="center",
    )
    return rx.center(
        rx.cond(
            RegistrationState.is_hydrated,
            rx.card(rx.cond(RegistrationState.success, success, form)),
        ),
        padding_top=PADDING_TOP,
    )
