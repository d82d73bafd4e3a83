"""Migration 0003: read positions and the notification tables on SQLite."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import kilo_web.notifications.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from kilo_web.chat.database import downgrade_database, make_engine, upgrade_database

TABLES = frozenset(
    {
        "conversation_read_state",
        "badge_counts",
        "push_delivery",
        "push_device",
        "expo_push_ticket",
        "scheduled_job",
    }
)


def schema_differences(connection: sa.Connection) -> list:
    """Differences between the models and the database, for every table."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": False}
    )
    return compare_metadata(context, SQLModel.metadata)


def test_migrated_schema_matches_models(engine):
    with engine.connect() as connection:
        differences = schema_differences(connection)

    assert differences == []
    assert TABLES <= set(sa.inspect(engine).get_table_names())


def test_downgrade_to_0002_drops_tables(database_url):
    downgrade_database(database_url, "0002")
    engine = make_engine(database_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert tables.isdisjoint(TABLES)
        assert "message" in tables

        upgrade_database(database_url)
        engine.dispose()
        assert TABLES <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_server_defaults_apply_to_raw_inserts(engine, session, world):
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO push_device (user_id, kind, address, created_at, updated_at) "
            "VALUES (:user, 'expo', 'ExponentPushToken[raw]', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        ), {"user": world.bob})
        connection.execute(sa.text(
            "INSERT INTO conversation_read_state (conversation_id, user_id, updated_at) "
            "VALUES (:conversation, :user, '2026-01-01 00:00:00')"
        ), {"conversation": world.general, "user": world.bob})
        active = connection.execute(sa.text("SELECT active FROM push_device")).scalar()
        position = connection.execute(sa.text("SELECT last_read_seq FROM conversation_read_state")).scalar()

    assert active == 1
    assert position == 0
