"""Dialect helpers for the statements that SQLAlchemy's generic ``insert`` cannot express.

``INSERT ... ON CONFLICT`` exists on SQLite (3.24 and newer) and PostgreSQL
with the same meaning, but SQLAlchemy builds it only from the dialect's own
``insert`` construct.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session


def dialect_insert(session: Session, table: sa.Table) -> Any:
    """Return the dialect's ``insert(table)``, which has ``on_conflict_do_nothing/_update``."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(
        f"database dialect {name!r} is not supported; use SQLite or PostgreSQL"
    )


def insert_ignore(
    session: Session, table: sa.Table, values: dict[str, Any], conflict_columns: list[str]
) -> bool:
    """Insert one row unless a row with the same ``conflict_columns`` exists; tell if it did.

    The check and the insert are one statement, so two concurrent callers
    cannot both insert: exactly one of them gets True.
    """
    # RETURNING shows reliably whether a row was written. For a table with an
    # autoincrement key, SQLAlchemy 2.1 on psycopg 3 reports rowcount -1 here.
    statement = (
        dialect_insert(session, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict_columns)
        .returning(*table.primary_key.columns)
    )
    return session.execute(statement).first() is not None
