"""Reflex states for signing up and signing in, and the current user's profile.

The states extend reflex-local-auth's ``RegistrationState`` and
``LoginState`` with this project's username and password rules and create
the ``user_profile`` row. Bind forms to these subclasses (``pages.py`` does):
reflex-local-auth's own pages call the base classes, which skip the checks,
so a password over 72 bytes would reach bcrypt and raise.
"""

from __future__ import annotations

import logging
from typing import Any

import reflex as rx
import reflex_local_auth
from reflex_local_auth.user import LocalUser
from sqlmodel import select

from kilo_web.accounts.users import (
    MAX_PASSWORD_BYTES,
    create_local_user,
    ensure_profile,
    validate_password,
    validate_username,
)
from kilo_web.chat.errors import ChatError, InvalidPasswordError, InvalidUsernameError

logger = logging.getLogger(__name__)

LOGIN_FAILED_MESSAGE = "The username or password is wrong. Check both and try again, or sign up."
"""Shown for an unknown username and a wrong password alike, so neither is revealed."""


class RegistrationState(reflex_local_auth.RegistrationState):
    """Registration form state that validates the input and creates the profile."""

    def _validate_fields(self, username, password, confirm_password):
        problem = super()._validate_fields(username, password, confirm_password)
        if problem:
            return problem
        try:
            validate_username(username)
        except InvalidUsernameError as error:
            self.error_message = str(error)
            return rx.set_focus("username")
        try:
            validate_password(password)
        except InvalidPasswordError as error:
            self.error_message = str(error)
            return [
                rx.set_value("password", ""),
                rx.set_value("confirm_password", ""),
                rx.set_focus("password"),
            ]
        return None

    def _register_user(self, username, password) -> None:
        with rx.session() as session:
            profile = create_local_user(session, username=username, password=password)
            self.new_user_id = profile.local_user_id

    @rx.event
    def handle_registration(self, form_data: dict[str, Any]):
        """Validate the form, create the account and profile, then go to the login page."""
        username = form_data.get("username", "")
        password = form_data.get("password", "")
        problem = self._validate_fields(username, password, form_data.get("confirm_password", ""))
        if problem:
            self.new_user_id = -1
            return problem
        try:
            self._register_user(username, password)
        except ChatError as error:
            # A concurrent registration can take the username after validation.
            self.new_user_id = -1
            self.error_message = str(error)
            return rx.set_focus("username")
        return type(self).successful_registration


class LoginState(reflex_local_auth.LoginState):
    """Login form state that rejects over-long passwords before they reach bcrypt."""

    @rx.event
    def on_submit(self, form_data: dict[str, Any]):
        """Check the credentials, start a session, make sure a profile exists, redirect."""
        self.error_message = ""
        username = form_data.get("username", "")
        password = form_data.get("password", "")
        if not password or len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            # No stored password can be this long, because registration rejects it.
            self.error_message = LOGIN_FAILED_MESSAGE
            return rx.set_value("password", "")

        with rx.session() as session:
            user = session.exec(select(LocalUser).where(LocalUser.username == username)).first()
            if user is not None and not user.enabled:
                self.error_message = "This account is disabled."
                return rx.set_value("password", "")
            if user is None or user.id is None or not user.verify(password):
                self.error_message = LOGIN_FAILED_MESSAGE
                return rx.set_value("password", "")
            ensure_profile(session, user.id)
            user_id = user.id

        self._login(user_id)
        # Redirect here rather than through the base state's redir, which
        # compares the path with "/login" and so never leaves "/login/", the
        # path a production build serves the page under.
        return rx.redirect(self.redirect_to or "/")


async def current_profile_id(state: rx.State) -> int | None:
    """Return the signed-in user's ``UserProfile.id``, or None when no user is signed in.

    Works from any state of the app: it reads reflex-local-auth's
    ``LocalAuthState`` of the same browser tab, and creates the profile if
    the account has none yet.
    """
    if isinstance(state, reflex_local_auth.LocalAuthState):
        auth_state = state
    else:
        auth_state = await state.get_state(reflex_local_auth.LocalAuthState)
    local_user_id = auth_state.authenticated_user.id
    if local_user_id is None or local_user_id < 0:
        return None
    with rx.session() as session:
        return ensure_profile(session, local_user_id).id
