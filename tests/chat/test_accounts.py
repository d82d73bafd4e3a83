"""Accounts: credentials in ``localuser`` linked to a chat profile."""

from __future__ import annotations

import pytest
from reflex_local_auth.user import LocalUser
from sqlmodel import select

from kilo_web.accounts.users import (
    MAX_PASSWORD_BYTES,
    create_bot_user,
    create_local_user,
    ensure_profile,
    validate_password,
    validate_username,
)
from kilo_web.chat import service
from kilo_web.chat.errors import (
    AlreadyExistsError,
    InvalidNameError,
    InvalidPasswordError,
    InvalidUsernameError,
    UserNotFoundError,
)
from kilo_web.chat.models import UserProfile


def test_create_local_user_links_profile(session):
    profile = create_local_user(session, username="dave", password="correct horse")

    local_user = session.get(LocalUser, profile.local_user_id)
    assert local_user.username == "dave"
    assert local_user.enabled
    assert local_user.verify("correct horse")
    assert not local_user.verify("wrong horse")
    assert profile.display_name == "dave"
    assert profile.is_bot is False
    assert service.find_user_by_username(session, "dave").id == profile.id


def test_create_local_user_uses_display_name(session):
    profile = create_local_user(
        session, username="erin", password="long enough", display_name="  Erin E.  "
    )

    assert profile.display_name == "Erin E."


def test_create_local_user_rejects_taken_username(session, make_user):
    make_user("frank")

    with pytest.raises(AlreadyExistsError) as caught:
        create_local_user(session, username="frank", password="long enough")

    assert "frank" in str(caught.value)
    assert len(session.exec(select(LocalUser)).all()) == 1


def test_bot_and_person_share_usernames(session):
    create_bot_user(session, username="helper", display_name="Helper")

    with pytest.raises(AlreadyExistsError):
        create_local_user(session, username="helper", password="long enough")


def test_create_bot_user_cannot_sign_in(session):
    profile = create_bot_user(session, username="kilobot", display_name="Kilo Bot")

    local_user = session.get(LocalUser, profile.local_user_id)
    assert profile.is_bot is True
    assert profile.display_name == "Kilo Bot"
    assert local_user.enabled is False


def test_password_length_limit_is_in_bytes():
    assert validate_password("a" * MAX_PASSWORD_BYTES) == "a" * MAX_PASSWORD_BYTES
    # "€" is 3 bytes in UTF-8: 24 of them fill the 72 bytes exactly.
    assert validate_password("€" * 24) == "€" * 24

    with pytest.raises(InvalidPasswordError):
        validate_password("a" * (MAX_PASSWORD_BYTES + 1))
    with pytest.raises(InvalidPasswordError) as caught:
        validate_password("€" * 25)
    assert "75 bytes" in str(caught.value)
    assert "€" not in str(caught.value)


@pytest.mark.parametrize("password", ["", "short", "seven77", None, b"bytes-password"], ids=repr)
def test_validate_password_rejects(password):
    with pytest.raises(InvalidPasswordError):
        validate_password(password)


def test_longest_password_hashes_and_verifies(session):
    password = "é" * 36  # 72 bytes in UTF-8

    profile = create_local_user(session, username="grace", password=password)

    assert session.get(LocalUser, profile.local_user_id).verify(password)


def test_over_long_password_creates_nothing(session):
    with pytest.raises(InvalidPasswordError):
        create_local_user(session, username="heidi", password="x" * 73)

    assert session.exec(select(LocalUser)).all() == []


@pytest.mark.parametrize(
    "username",
    ["ab", "x" * 33, "with space", "slash/name", "émile", "", None, "tab\tname"],
    ids=repr,
)
def test_validate_username_rejects(username):
    with pytest.raises(InvalidUsernameError):
        validate_username(username)


@pytest.mark.parametrize("username", ["abc", "Alice_01", "first.last", "a-b", "x" * 32])
def test_validate_username_accepts(username):
    assert validate_username(username) == username


def test_create_bot_user_rejects_bad_display_name(session):
    with pytest.raises(InvalidNameError):
        create_bot_user(session, username="bot2", display_name="   ")
    with pytest.raises(InvalidNameError):
        create_bot_user(session, username="bot2", display_name="x" * 101)


def test_ensure_profile_creates_missing_profile(session):
    # reflex-local-auth's own registration form creates only the localuser row.
    local_user = LocalUser(username="ivan", password_hash=b"unused", enabled=True)
    session.add(local_user)
    session.commit()
    local_user_id = local_user.id

    first = ensure_profile(session, local_user_id)
    second = ensure_profile(session, local_user_id)

    assert first.id == second.id
    assert first.display_name == "ivan"
    assert first.is_bot is False
    assert len(session.exec(select(UserProfile)).all()) == 1


def test_ensure_profile_returns_existing(session, make_user):
    profile = make_user("judy", display_name="Judy J.")

    assert ensure_profile(session, profile.local_user_id).id == profile.id


def test_ensure_profile_rejects_unknown_local_user(session):
    with pytest.raises(UserNotFoundError):
        ensure_profile(session, 12345)
