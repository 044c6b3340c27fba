"""Engines and dialect helpers: SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The one engine (and connection pool) of this process for ``url``: a hub home's commands, ingest
    and queries share it instead of opening a pool each (a forked child gets its own)."""
    key = (url, os.getpid())
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every cached engine's connections (tests that delete databases, processes about to exit)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def make_engine(url: str) -> Engine:
    """A new engine; use :func:`engine_for` unless the caller owns and disposes of it."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        # WAL lets `serve` write while CLI commands read; busy_timeout rides out short write locks.
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignoring_duplicates(engine_or_dialect: Engine | str, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for SQLite and PostgreSQL: idempotent storage of rows keyed
    by durable ids (a redelivered message inserts nothing; ``rowcount`` counts the new rows)."""
    name = engine_or_dialect if isinstance(engine_or_dialect, str) else engine_or_dialect.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    raise ValueError(f"idempotent ingest supports SQLite and PostgreSQL, not {name}")
