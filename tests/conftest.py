"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kilo_web.chat.database import make_engine, upgrade_database


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """URL of a SQLite file in ``tmp_path``, migrated to the newest schema."""
    url = f"sqlite:///{tmp_path / 'kilo_web.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """Engine on the migrated SQLite file, disposed after the test."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    """A session on the migrated SQLite file."""
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
