"""The Alembic migrations on the test database (SQLite, or PostgreSQL when asked)."""

from __future__ import annotations

import datetime

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from kilo_web.chat.database import (
    alembic_config,
    downgrade_database,
    make_engine,
    upgrade_database,
)
from tests.conftest import sqlite_only


def _head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def test_migrations_have_single_head(database_url):
    heads = ScriptDirectory.from_config(alembic_config(database_url)).get_heads()

    assert len(heads) == 1


def test_upgrade_creates_all_tables(engine, database_url):
    tables = set(sa.inspect(engine).get_table_names())

    expected = {
        "alembic_version",
        "localuser",
        "localauthsession",
        "user_profile",
        "instance",
        "instance_member",
        "conversation",
        "conversation_member",
        "message",
    }
    assert expected <= tables
    with engine.connect() as connection:
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == _head_revision(database_url)


def test_migrated_schema_matches_models(engine, schema_differences):
    with engine.connect() as connection:
        differences = schema_differences(connection)

    assert differences == []


def test_upgrade_is_idempotent(engine, database_url):
    upgrade_database(database_url)

    assert "message" in sa.inspect(engine).get_table_names()


def test_upgrade_creates_missing_sqlite_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'folder' / 'kilo.db'}"

    upgrade_database(url)

    assert (tmp_path / "nested" / "folder" / "kilo.db").is_file()


def test_downgrade_then_upgrade_again(database_url):
    downgrade_database(database_url, "base")
    engine = make_engine(database_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}

        upgrade_database(database_url)
        engine.dispose()
        assert "message" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_server_defaults_apply_to_raw_inserts(engine):
    # Rows written by other clients (psql, scripts) get the same defaults as the ORM's.
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO localuser (id, username, password_hash, enabled) "
                "VALUES (1, 'raw', :hash, :enabled)"
            ),
            {"hash": b"\x00", "enabled": True},
        )
        connection.execute(
            sa.text(
                "INSERT INTO user_profile (id, local_user_id, display_name, created_at) "
                "VALUES (1, 1, 'Raw', '2026-01-02 03:04:05')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO instance (id, label, owner_id, created_at) "
                "VALUES ('i1', 'I', 1, '2026-01-02 03:04:05')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO conversation (id, instance_id, title, created_at) "
                "VALUES ('c1', 'i1', 'C', '2026-01-02 03:04:05')"
            )
        )
        is_bot = connection.execute(sa.text("SELECT is_bot FROM user_profile")).scalar()
        last_seq = connection.execute(sa.text("SELECT last_message_seq FROM conversation")).scalar()

    assert is_bot == 0
    assert last_seq == 0


@sqlite_only
def test_naive_sqlite_timestamps_read_as_utc(session, engine):
    from kilo_web.chat.models import UserProfile

    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO localuser (id, username, password_hash, enabled) "
                "VALUES (7, 'naive', x'00', 1)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO user_profile (id, local_user_id, display_name, created_at) "
                "VALUES (7, 7, 'Naive', '2026-01-02 03:04:05.000000')"
            )
        )

    profile = session.get(UserProfile, 7)

    assert profile.created_at == datetime.datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc
    )


@sqlite_only
def test_foreign_keys_are_enforced(engine):
    with engine.connect() as connection:
        enabled = connection.execute(sa.text("PRAGMA foreign_keys")).scalar()

    assert enabled == 1


def test_sqlite_file_uses_write_ahead_log(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'kilo.db'}")
    try:
        with engine.connect() as connection:
            mode = connection.execute(sa.text("PRAGMA journal_mode")).scalar()
            synchronous = connection.execute(sa.text("PRAGMA synchronous")).scalar()
    finally:
        engine.dispose()

    assert mode == "wal"
    assert synchronous == 2  # FULL: a commit survives a power loss.


def test_migrations_run_with_foreign_keys_off(tmp_path):
    # Batch migrations rebuild SQLite tables; with foreign keys on, dropping the
    # old copy would cascade deletes into the tables that refer to it.
    url = f"sqlite:///{tmp_path / 'fk.db'}"
    states_during_ddl = []

    def record_foreign_keys(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("CREATE TABLE"):
            row = cursor.connection.execute("PRAGMA foreign_keys").fetchone()
            states_during_ddl.append(row[0])

    sa.event.listen(sa.Engine, "before_cursor_execute", record_foreign_keys)
    try:
        upgrade_database(url)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record_foreign_keys)

    assert len(states_during_ddl) >= 8
    assert set(states_during_ddl) == {0}
