"""The Reflex login and registration states, run against a migrated SQLite file.

The event handlers run as plain functions on state objects; no server or
browser is involved.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import reflex as rx
from reflex_base.config import reload_config
from reflex_local_auth.auth_session import LocalAuthSession
from reflex_local_auth.user import LocalUser
from sqlmodel import select

from kilo_web.accounts.state import (
    LOGIN_FAILED_MESSAGE,
    LoginState,
    RegistrationState,
    current_profile_id,
)
from kilo_web.accounts.users import create_bot_user
from kilo_web.chat.models import UserProfile
from kilo_web.settings import PROJECT_DIR


@pytest.fixture
def reflex_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point ``rx.session()`` at the test database, restoring the app's config afterwards."""
    monkeypatch.chdir(PROJECT_DIR)
    previous = os.environ.get("REFLEX_DB_URL")
    os.environ["REFLEX_DB_URL"] = database_url
    reload_config()
    try:
        yield database_url
    finally:
        if previous is None:
            del os.environ["REFLEX_DB_URL"]
        else:
            os.environ["REFLEX_DB_URL"] = previous
        reload_config()


@pytest.fixture
def root_state(reflex_database: str) -> rx.State:
    return rx.State(_reflex_internal_init=True)


def _substate(root: rx.State, state_class: type[rx.State]):
    return root.get_substate(state_class.get_full_name().split(".")[1:])


def _register(root, username, password, confirm=None):
    registration = _substate(root, RegistrationState)
    form = {
        "username": username,
        "password": password,
        "confirm_password": password if confirm is None else confirm,
    }
    return registration, RegistrationState.handle_registration.fn(registration, form)


def _login(root, username, password, token="browser-token"):
    login = _substate(root, LoginState)
    login.auth_token = token
    return login, LoginState.on_submit.fn(login, {"username": username, "password": password})


def _local_users():
    with rx.session() as session:
        return session.exec(select(LocalUser)).all()


def test_registration_creates_user_and_profile(root_state):
    registration, result = _register(root_state, "dave", "correct horse")

    assert result is RegistrationState.successful_registration
    with rx.session() as session:
        local_user = session.exec(select(LocalUser).where(LocalUser.username == "dave")).one()
        profile = session.exec(
            select(UserProfile).where(UserProfile.local_user_id == local_user.id)
        ).one()
    assert registration.new_user_id == local_user.id
    assert profile.display_name == "dave"


def test_registration_rejects_over_long_password(root_state):
    registration, result = _register(root_state, "dave", "p" * 73)

    assert result
    assert "73 bytes" in registration.error_message
    assert registration.new_user_id == -1
    assert _local_users() == []


def test_registration_rejects_short_password(root_state):
    registration, _ = _register(root_state, "dave", "short")

    assert "at least 8 characters" in registration.error_message
    assert _local_users() == []


def test_registration_rejects_bad_username(root_state):
    registration, _ = _register(root_state, "no spaces please", "correct horse")

    assert "invalid username" in registration.error_message
    assert _local_users() == []


def test_registration_rejects_mismatched_confirmation(root_state):
    registration, _ = _register(root_state, "dave", "correct horse", confirm="correct hose")

    assert registration.error_message == "Passwords do not match"
    assert _local_users() == []


def test_registration_rejects_bot_username(root_state):
    with rx.session() as session:
        create_bot_user(session, username="kilobot", display_name="Kilo Bot")

    registration, _ = _register(root_state, "kilobot", "correct horse")

    assert "already registered" in registration.error_message
    assert len(_local_users()) == 1


async def test_login_starts_session_and_profile(root_state):
    with rx.session() as session:
        # A user created by reflex-local-auth's stock form, without a profile.
        session.add(
            LocalUser(
                username="erin", password_hash=LocalUser.hash_password("secret-pw"), enabled=True
            )
        )
        session.commit()

    login, result = _login(root_state, "erin", "secret-pw", token="tab-1")

    assert login.error_message == ""
    assert result is not None
    with rx.session() as session:
        erin = session.exec(select(LocalUser).where(LocalUser.username == "erin")).one()
        auth_sessions = session.exec(select(LocalAuthSession)).all()
        profile = session.exec(
            select(UserProfile).where(UserProfile.local_user_id == erin.id)
        ).one()
    assert [(s.user_id, s.session_id) for s in auth_sessions] == [(erin.id, "tab-1")]
    assert await current_profile_id(login) == profile.id


@pytest.mark.parametrize(
    "password", ["wrong-password", "x" * 100, "€" * 30, ""], ids=["wrong", "100-bytes", "90-bytes", "empty"]
)
def test_login_rejects_bad_password_without_error(root_state, password):
    _register(root_state, "frank", "correct horse")

    login, _ = _login(root_state, "frank", password)

    assert login.error_message == LOGIN_FAILED_MESSAGE
    with rx.session() as session:
        assert session.exec(select(LocalAuthSession)).all() == []


def test_login_rejects_unknown_user(root_state):
    login, _ = _login(root_state, "nobody", "whatever-pw")

    assert login.error_message == LOGIN_FAILED_MESSAGE


def test_login_rejects_bot(root_state):
    with rx.session() as session:
        create_bot_user(session, username="kilobot", display_name="Kilo Bot")

    login, _ = _login(root_state, "kilobot", "anything-at-all")

    assert login.error_message == "This account is disabled."


async def test_current_profile_id_without_login(root_state):
    login = _substate(root_state, LoginState)
    login.auth_token = "never-logged-in"

    assert await current_profile_id(login) is None
