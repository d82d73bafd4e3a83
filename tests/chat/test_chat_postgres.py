"""The migrations and the chat service on PostgreSQL.

Needs a PostgreSQL server that lets the test create and drop a database.
``KILO_TEST_POSTGRES_URL`` names the database to connect to for that
(default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). The tests
are skipped only when nothing listens at that address.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session

from kilo_web.accounts.users import create_bot_user
from kilo_web.chat import service
from kilo_web.chat.content import text_blocks
from kilo_web.chat.database import downgrade_database, make_engine, upgrade_database
from kilo_web.chat.models import Message, UserProfile

ADMIN_URL = os.environ.get(
    "KILO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _server_reachable(url: sa.URL) -> str | None:
    """Return None if something listens at the URL's address, else the reason it does not."""
    host = url.host or "127.0.0.1"
    port = url.port or 5432
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as error:
        return f"PostgreSQL is not reachable at {host}:{port}: {error}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    admin_url = make_url(ADMIN_URL)
    reason = _server_reachable(admin_url)
    if reason is not None:
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed; install it with: pip install 'psycopg[binary]'")

    database = f"kilo_web_test_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
        yield admin_url.set(database=database).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin_engine.dispose()


def test_postgres_migrations_round_trip(postgres_url, schema_differences):
    upgrade_database(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            differences = schema_differences(connection)
            is_bot_default = connection.execute(
                sa.text(
                    "SELECT column_default FROM information_schema.columns "
                    "WHERE table_name = 'user_profile' AND column_name = 'is_bot'"
                )
            ).scalar()
        assert differences == []
        assert is_bot_default == "false"

        engine.dispose()
        downgrade_database(postgres_url, "base")
        assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}

        engine.dispose()
        upgrade_database(postgres_url)
        assert "message" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


async def test_postgres_post_and_list_messages(postgres_url):
    upgrade_database(postgres_url)
    engine = make_engine(postgres_url)
    published = []

    class RecordingPublisher:
        async def publish(self, context, event, data):
            published.append((context, event, data))

    try:
        with Session(engine) as session:
            bot = create_bot_user(session, username="pgbot", display_name="PG Bot")
            instance = service.create_instance(
                session, owner_id=bot.id, label="PG", instance_id="pg-1"
            )
            conversation = service.create_conversation(
                session, instance_id=instance.id, title="Chat", creator_id=bot.id
            )
            # Each commit expires loaded objects, so keep the plain ids.
            bot_id = bot.id
            conversation_id = conversation.id
            for text in ("first", "second € ✓"):
                await service.post_message(
                    session,
                    conversation_id=conversation_id,
                    sender_id=bot_id,
                    blocks=text_blocks(text),
                    publisher=RecordingPublisher(),
                )

        with Session(engine) as session:
            messages = service.list_messages(session, conversation_id)
            stored = session.get(Message, messages[0].id)
            profile = session.get(UserProfile, bot_id)

        assert [m.seq for m in messages] == [1, 2]
        assert messages[1].blocks == ({"type": "text", "text": "second € ✓"},)
        assert stored.created_at.tzinfo == datetime.timezone.utc
        assert profile.is_bot is True
        assert [p[0] for p in published] == [f"/kiloclaw/pg-1/{conversation_id}"] * 2
        assert published[1][2]["createdAt"] == messages[1].created_at.isoformat()
    finally:
        engine.dispose()
