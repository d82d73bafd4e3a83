"""Fixtures for the chat tests: users, an instance and a conversation."""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import threading
import time
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import bcrypt
import pytest
import pytest_asyncio
import uvicorn
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from reflex_local_auth.auth_session import LocalAuthSession
from reflex_local_auth.user import LocalUser
from sqlmodel import Session, SQLModel

from kilo_web.chat import service
from kilo_web.chat.api import create_api
from kilo_web.chat.models import Conversation, Instance, UserProfile
from kilo_web.event_service import EventServiceServer
from kilo_web.event_service.embedded import get_backplane, server_from_settings
from kilo_web.settings import Settings
from tests.helpers import free_port

TEST_PASSWORD = "test-password"


@functools.cache
def _fast_password_hash() -> bytes:
    # Cost 4 is bcrypt's minimum; the accounts tests cover the real cost-12 path.
    return bcrypt.hashpw(TEST_PASSWORD.encode(), bcrypt.gensalt(rounds=4))


def insert_user(
    session: Session, username: str, *, display_name: str | None = None, is_bot: bool = False
) -> UserProfile:
    """Insert a ``localuser`` row and its profile, hashing TEST_PASSWORD at low cost."""
    local_user = LocalUser(
        username=username, password_hash=_fast_password_hash(), enabled=not is_bot
    )
    session.add(local_user)
    session.flush()
    profile = UserProfile(
        local_user_id=local_user.id,
        display_name=display_name or username.capitalize(),
        is_bot=is_bot,
    )
    session.add(profile)
    session.commit()
    session.refresh(profile)
    return profile


@dataclass
class People:
    alice: UserProfile
    bob: UserProfile
    carol: UserProfile
    bot: UserProfile


@pytest.fixture
def make_user(session: Session) -> Callable[..., UserProfile]:
    return functools.partial(insert_user, session)


@pytest.fixture
def people(session: Session) -> People:
    return People(
        alice=insert_user(session, "alice"),
        bob=insert_user(session, "bob"),
        carol=insert_user(session, "carol"),
        bot=insert_user(session, "kilobot", display_name="Kilo Bot", is_bot=True),
    )


@pytest.fixture
def instance(session: Session, people: People) -> Instance:
    """An instance owned by alice, with bob and the bot as further members."""
    instance = service.create_instance(
        session, owner_id=people.alice.id, label="Sandbox", instance_id="sandbox-1"
    )
    service.add_instance_member(session, instance_id=instance.id, user_id=people.bob.id)
    service.add_instance_member(session, instance_id=instance.id, user_id=people.bot.id)
    return instance


@pytest.fixture
def conversation(session: Session, people: People, instance: Instance) -> Conversation:
    """A conversation in ``instance`` with alice, bob and the bot; carol is not in it."""
    return service.create_conversation(
        session,
        instance_id=instance.id,
        title="General",
        creator_id=people.alice.id,
        member_ids=[people.bob.id, people.bot.id],
        conversation_id="conv-1",
    )


# Tables created by the migrations under test; tables that other model
# modules add to SQLModel.metadata are checked by their own tests.
CHAT_TABLES = frozenset(
    {
        "localuser",
        "localauthsession",
        "user_profile",
        "instance",
        "instance_member",
        "conversation",
        "conversation_member",
        "message",
    }
)


def _diff_table_name(diff) -> str:
    if isinstance(diff, list):
        # Column changes come grouped: ("modify_type", schema, table, column, ...).
        return diff[0][2]
    kind, target = diff[0], diff[1]
    if kind in ("add_column", "remove_column"):
        return diff[2]
    if isinstance(target, sa.Table):
        return target.name
    # Indexes, unique constraints and foreign keys know their table.
    return target.table.name


@pytest.fixture
def schema_differences() -> Callable[[sa.Connection], list]:
    """Return a function listing differences between the chat models and a database."""

    def differences(connection: sa.Connection) -> list:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": False}
        )
        found = compare_metadata(context, SQLModel.metadata)
        return [diff for diff in found if _diff_table_name(diff) in CHAT_TABLES]

    return differences


# The HTTP API on a real loopback socket

SECRET = "api-test-secret-" + "z" * 48


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, jwt_secret=SECRET)


@pytest.fixture
def api_url(settings):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def login_session(session, local_user_id: int, *, expires_in: dt.timedelta) -> str:
    session_id = f"session-{local_user_id}-{secrets.token_hex(8)}"
    session.add(LocalAuthSession(user_id=local_user_id, session_id=session_id,
                                 expiration=dt.datetime.now(dt.UTC) + expires_in))
    session.commit()
    return session_id


def auth_headers(session, profile) -> dict[str, str]:
    session_id = login_session(session, profile.local_user_id, expires_in=dt.timedelta(days=1))
    return {"Authorization": f"Bearer {session_id}"}


@pytest_asyncio.fixture
async def stack(settings, session, people, instance, conversation) -> AsyncIterator["ChatStack"]:
    """The API and the event service on loopback, with alice, bob and "General".

    Both run in the test's event loop and share the process backplane, as
    in the Reflex backend.
    """
    # Imported here: the bots' conftest imports this module.
    from tests.bots.conftest import ChatStack, start_api, stop_api

    settings = dataclasses.replace(settings, reconnect_min_seconds=0.02,
                                   reconnect_max_seconds=0.2, presence_grace_seconds=0.1)
    event_service: EventServiceServer = server_from_settings(
        settings, backplane=get_backplane(), host="127.0.0.1", port=0
    )
    await event_service.start()
    settings = dataclasses.replace(settings, event_service_url=event_service.url)
    server, task, api_url = await start_api(settings)
    try:
        yield ChatStack(
            settings=settings, api_url=api_url, event_service=event_service, session=session,
            alice=people.alice, bot=people.bot, instance=instance, conversation=conversation,
            api_key="", alice_headers=auth_headers(session, people.alice),
        )
    finally:
        await stop_api(server, task)
        await event_service.close()
