"""Engines and schema migrations for the chat database.

The Reflex app reads and writes through ``rx.session()``. This module serves
the code that runs outside Reflex (set-up, seeding, tests), and it applies
the Alembic migrations kept in ``alembic/`` at the project root.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from kilo_web.settings import PROJECT_DIR

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
"""Errors that mean the database cannot be reached now, rather than that a query is wrong."""

ALEMBIC_INI = PROJECT_DIR / "alembic.ini"
ALEMBIC_DIR = PROJECT_DIR / "alembic"


@sa.event.listens_for(sa.pool.Pool, "connect")
def _remember_owner(dbapi_connection: Any, record: Any) -> None:
    """Note which process opened a pooled connection."""
    record.info["pid"] = os.getpid()


@sa.event.listens_for(sa.pool.Pool, "checkout")
def _refuse_inherited(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Make the pool reconnect instead of using a connection its parent process opened.

    Production servers load the app once and fork their workers, so a worker
    inherits the parent's pooled sockets. Two processes on one database
    socket corrupt each other's replies, so the pool drops such a connection
    and opens one of its own.
    """
    owner = record.info.get("pid")
    if owner is not None and owner != os.getpid():
        record.dbapi_connection = proxy.dbapi_connection = None
        raise sa.exc.DisconnectionError(
            f"connection opened by process {owner}, used in process {os.getpid()}"
        )


def _ensure_sqlite_folder(database_url: str) -> None:
    """Create the folder of a SQLite file, which SQLite will not create itself."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(database_url: str) -> sa.Engine:
    """Create a synchronous engine for ``database_url``, creating a SQLite file's folder."""
    _ensure_sqlite_folder(database_url)
    return sa.create_engine(database_url)


@functools.cache
def shared_engine(database_url: str) -> sa.Engine:
    """Return one engine per URL for this process, for code outside ``rx.session()``."""
    return make_engine(database_url)


def alembic_config(database_url: str) -> Config:
    """Build the Alembic configuration that migrates ``database_url``."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # Passed as an attribute, not as sqlalchemy.url, because the ini parser
    # would treat a '%' in a URL-encoded password as interpolation syntax.
    config.attributes["database_url"] = database_url
    # The application configures logging itself; only the alembic CLI should
    # install the ini file's handlers.
    config.attributes["configure_logging"] = False
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (the newest by default)."""
    _ensure_sqlite_folder(database_url)
    logger.info(
        "migrating database %s to %s",
        make_url(database_url).render_as_string(hide_password=True),
        revision,
    )
    command.upgrade(alembic_config(database_url), revision)


def downgrade_database(database_url: str, revision: str = "base") -> None:
    """Revert the migrations down to ``revision`` (an empty schema by default)."""
    logger.info(
        "downgrading database %s to %s",
        make_url(database_url).render_as_string(hide_password=True),
        revision,
    )
    command.downgrade(alembic_config(database_url), revision)
