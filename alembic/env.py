"""Alembic environment of kilo_web.

The database URL comes, in this order, from ``config.attributes["database_url"]``
(set by ``kilo_web.chat.database.alembic_config``), from ``sqlalchemy.url`` in
``alembic.ini`` if one is added there, or from ``kilo_web.settings``.
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

# Importing the model modules registers their tables on SQLModel.metadata,
# which autogenerate compares with the database. Add new model modules here.
import kilo_web.chat.models  # noqa: F401
import kilo_web.notifications.models  # noqa: F401
import reflex_local_auth.auth_session  # noqa: F401
import reflex_local_auth.user  # noqa: F401
from kilo_web.settings import get_settings

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return url or get_settings().database_url


def run_migrations_offline() -> None:
    """Write the migration SQL to standard output instead of running it."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations over a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with_connection(connection)
        return

    engine = sa.create_engine(_database_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # kilo_web.chat.models turns foreign keys on for every SQLite
                # connection. Batch migrations rebuild a table by copy, drop and
                # rename, and with ON DELETE CASCADE enforced the drop would
                # delete the rows that refer to it.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            _run_with_connection(connection)
    finally:
        engine.dispose()


def _run_with_connection(connection: sa.Connection) -> None:
    # render_as_batch makes autogenerate emit SQLite-compatible ALTERs
    # (copy-and-move table rebuilds); PostgreSQL runs them as plain ALTERs.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
