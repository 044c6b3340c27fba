"""Schema versions of the hub database, through Alembic (``cloud_hub/db/migrations``).

``cloud-hub init`` and ``cloud-hub serve`` upgrade the database to the newest revision themselves (under a
PostgreSQL advisory lock, so several ``serve`` workers starting at once migrate it once); every other
command refuses a database that is behind and names ``cloud-hub db upgrade``.  A database created by
the release before Alembic (tables, no ``alembic_version``) is recognised and stamped as the baseline.
"""

from __future__ import annotations

import enum
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema the release before Alembic created with create_all
MIGRATION_LOCK = 0x65646765  # PostgreSQL advisory lock key held while migrating ("edge")

# Alembic logs its dialect choice on every run; the CLI prints the revisions it moved between instead.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


class DatabaseSchemaError(RuntimeError):
    """The database's schema does not match this cloud-hub; the message says what to run."""


class SchemaState(enum.StrEnum):
    EMPTY = "empty"  # no tables: a new hub
    PRE_ALEMBIC = "pre-alembic"  # tables from the release before migrations, no revision recorded
    BEHIND = "behind"  # an older revision: `cloud-hub db upgrade`
    CURRENT = "current"
    UNKNOWN = "unknown"  # a revision this cloud-hub does not know: the database is newer than the code


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    revision: str | None
    head: str


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision; raises if the migrations branch (two engineers chained to the same parent)."""
    heads = scripts().get_heads()
    if len(heads) != 1:
        raise DatabaseSchemaError(f"migrations have {len(heads)} heads {heads}: re-chain the newest revision")
    return heads[0]


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def status(engine: Engine) -> SchemaStatus:
    top = head()
    with engine.connect() as conn:
        revision = _current(conn)
        tables = set(inspect(conn).get_table_names())
    if revision is None:
        state = SchemaState.PRE_ALEMBIC if tables - {"alembic_version"} else SchemaState.EMPTY
    elif revision == top:
        state = SchemaState.CURRENT
    else:
        try:
            known = scripts().get_revision(revision) is not None
        except Exception:
            known = False
        state = SchemaState.BEHIND if known else SchemaState.UNKNOWN
    return SchemaStatus(state, revision, top)


def _baseline_columns() -> dict[str, set[str]]:
    """Tables and columns of the baseline revision, built in a scratch in-memory SQLite."""
    scratch = create_engine("sqlite://")
    with scratch.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        insp = inspect(conn)
        return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names() if t != "alembic_version"}


def _stamp_pre_alembic(conn: Connection) -> None:
    """A hub from the release before migrations: check it has the baseline's tables, then record it."""
    insp = inspect(conn)
    missing = []
    for table, columns in _baseline_columns().items():
        if not insp.has_table(table):
            missing.append(table)
        else:
            have = {c["name"] for c in insp.get_columns(table)}
            missing += [f"{table}.{c}" for c in sorted(columns - have)]
    if missing:
        raise DatabaseSchemaError(
            f"the database has tables but no schema revision, and lacks {', '.join(missing)}: it is not a hub "
            "database this cloud-hub can upgrade (back it up and start from a new one)")
    command.stamp(alembic_config(conn), BASELINE)


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``target`` (default: the newest); returns (revision before, revision after)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Transaction-scoped: concurrent `serve` workers wait here and then find nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        before = _current(conn)
        if before is None and set(inspect(conn).get_table_names()) - {"alembic_version"}:
            _stamp_pre_alembic(conn)
        elif before is not None and before != head() and _unknown(before):
            raise DatabaseSchemaError(f"the database is at revision {before}, which this cloud-hub does not "
                                      "know: it was upgraded by a newer edgesentry; install that version")
        command.upgrade(alembic_config(conn), target)
        after = _current(conn)
    _verified.discard(engine)
    return before, after or ""


def downgrade(engine: Engine, target: str) -> tuple[str | None, str | None]:
    with engine.begin() as conn:
        before = _current(conn)
        command.downgrade(alembic_config(conn), target)
        after = _current(conn)
    _verified.discard(engine)
    return before, after


def _unknown(revision: str) -> bool:
    try:
        return scripts().get_revision(revision) is None
    except Exception:
        return True


_verified: weakref.WeakSet[Engine] = weakref.WeakSet()


def require_current(engine: Engine) -> None:
    """Raise a :class:`DatabaseSchemaError` naming the command to run unless the schema is the newest
    (checked once per engine: one query of ``alembic_version``)."""
    if engine in _verified:
        return
    st = status(engine)
    if st.state == SchemaState.CURRENT:
        _verified.add(engine)
        return
    where = engine.url.render_as_string(hide_password=True)
    hint = {
        SchemaState.EMPTY: "has no hub schema: run `cloud-hub init` (or `cloud-hub db upgrade`)",
        SchemaState.PRE_ALEMBIC: "was created by an older edgesentry: run `cloud-hub db upgrade`",
        SchemaState.BEHIND: f"is at schema revision {st.revision}, this cloud-hub needs {st.head}: "
                            "run `cloud-hub db upgrade` (or restart `cloud-hub serve`, which upgrades)",
        SchemaState.UNKNOWN: f"is at schema revision {st.revision}, newer than this cloud-hub ({st.head}): "
                             "install the edgesentry version that upgraded it",
    }[st.state]
    raise DatabaseSchemaError(f"database {where} {hint}")


def new_revision(message: str, autogenerate: bool = True) -> Path:
    """Write ``versions/NNNN_message.py`` chained to the head; with ``autogenerate`` its operations are
    what turns a database at the head into the ORM's schema (diffed on a scratch SQLite: check the
    result, and PostgreSQL-specific types by hand)."""
    number = max((int(p.name[:4]) for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")),
                 default=0) + 1
    scratch = create_engine("sqlite://")
    with scratch.begin() as conn:
        cfg = alembic_config(conn)
        command.upgrade(cfg, "head")
        script = command.revision(cfg, message=message, autogenerate=autogenerate, rev_id=f"{number:04d}")
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if "### " not in line))  # alembic's "please adjust" banners
    return path
