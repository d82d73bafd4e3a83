"""Fixtures shared by every test folder.

``database_url`` is a migrated SQLite file by default. With
``KILO_TEST_DATABASE=postgresql`` it is a fresh PostgreSQL database per test
instead, copied from a template migrated once per run, on the server named
by ``KILO_TEST_POSTGRES_URL``; ``scripts/test.sh`` runs the suite both ways.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session

from kilo_web.chat.database import make_engine, upgrade_database

TEST_DATABASE = os.environ.get("KILO_TEST_DATABASE", "sqlite")
POSTGRES_ADMIN_URL = os.environ.get(
    "KILO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
if TEST_DATABASE not in ("sqlite", "postgresql"):
    raise pytest.UsageError(
        f"KILO_TEST_DATABASE={TEST_DATABASE!r} is not supported; use sqlite or postgresql"
    )

sqlite_only = pytest.mark.skipif(
    TEST_DATABASE != "sqlite", reason="checks behaviour of SQLite itself"
)
"""Mark for tests of SQLite's own behaviour, which the PostgreSQL run skips."""


def _admin_engine() -> sa.Engine:
    return sa.create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """Name of a PostgreSQL database migrated to the newest schema, dropped after the run."""
    name = f"kilo_web_template_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade_database(make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(
            hide_password=False))
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a migrated database for one test: a SQLite file, or PostgreSQL (see above)."""
    if TEST_DATABASE == "sqlite":
        url = f"sqlite:///{tmp_path / 'kilo_web.db'}"
        upgrade_database(url)
        yield url
        return
    template = request.getfixturevalue("postgres_template")
    name = f"kilo_web_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """Engine on the migrated test database, disposed after the test."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    """A session on the migrated test database."""
    with Session(engine) as session:
        yield session


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the browser tests last.

    Playwright's sync API keeps an event loop running in the main thread
    while a browser is open, and pytest-asyncio cannot start its own loop
    beside it; the session-scoped browser stays open until the end.
    """
    browser_dir = Path(__file__).parent / "browser"
    items.sort(key=lambda item: Path(str(item.path)).is_relative_to(browser_dir))
