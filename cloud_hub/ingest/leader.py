"""One leader among the ``serve`` workers: it alone runs the jobs that must not run twice (rollout
driving, retrain triggers).  Every worker stores what it receives; only leadership is exclusive.

PostgreSQL: a session-level advisory lock held on a dedicated connection.  It is released when that
connection ends — a worker that is killed or loses its database link stops leading at once, and the
others try for the lock every ``interval_s``.  SQLite (one worker): an exclusive ``flock`` beside the
database file, so a second ``serve`` on the same file does not lead too.

Each worker also keeps its row in ``hub_workers`` fresh (leader flag, rows stored) for operators.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from cloud_hub import db

log = logging.getLogger("cloud_hub.leader")

LEADER_LOCK = 0x65646766  # PostgreSQL advisory lock key of the leader (migrations use 0x65646765)


@dataclass
class LeaderTask:
    """A job only the leader runs, every ``interval_s`` seconds (first run right after election)."""

    name: str
    run: Callable[[], None]
    interval_s: float
    next_at: float = 0.0


class _PgLock:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self.conn is None:
            self.conn = self.engine.connect()
            # Autocommit: an open transaction would hold a snapshot (and block vacuum) for the worker's life.
            self.conn = self.conn.execution_options(isolation_level="AUTOCOMMIT")
        got = bool(self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}).scalar())
        if not got:  # not holding anything: back to the pool between attempts
            self.conn.close()
            self.conn = None
        return got

    def still_held(self) -> bool:
        """A cheap round trip on the lock's connection: if it is gone, so is the lock."""
        if self.conn is None:
            return False
        try:
            self.conn.execute(text("SELECT 1"))
            return True
        except Exception:
            self.release()
            return False

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.invalidate()  # never return a connection holding the lock to the pool
                self.conn.close()
            self.conn = None


class _FileLock:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fh: IO[Any] | None = None

    def try_acquire(self) -> bool:
        if self.path is None:  # in-memory SQLite: nobody else can see it
            return True
        fh = open(self.path, "a+")  # noqa: SIM115 - held for as long as this worker leads
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self.fh = fh
        return True

    def still_held(self) -> bool:
        return self.path is None or self.fh is not None

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class Leadership:
    """Elect this worker when the lock is free, run the leader tasks while it leads, heartbeat its row.

    ``is_leader()`` is what the rollout engine and retrain triggers check before acting; ``add_task``
    registers a job to run only on the leader (every ``interval_s``).
    """

    def __init__(self, engine: Engine, sessions: sessionmaker, worker: str, client_id: str,  # type: ignore[type-arg]
                 stats: Callable[[], tuple[int, int]] = lambda: (0, 0), interval_s: float = 1.0) -> None:
        self.engine = engine
        self.sessions = sessions
        self.worker = worker
        self.client_id = client_id
        self.stats = stats  # (rows stored, duplicates) so far
        self.interval_s = interval_s
        if engine.dialect.name == "postgresql":
            self._lock: _PgLock | _FileLock = _PgLock(engine)
        else:
            database = engine.url.database
            self._lock = _FileLock(Path(f"{database}.leader") if database and database != ":memory:" else None)
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._tasks: list[LeaderTask] = []
        self._tasks_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hub-leader", daemon=True)
        self.started_at = time.time()
        self._registered = False
        self.elections = 0  # times this worker became leader
        self.changed = threading.Condition()

    def is_leader(self) -> bool:
        return self._leader.is_set()

    def add_task(self, name: str, run: Callable[[], None], interval_s: float) -> None:
        with self._tasks_lock:
            self._tasks.append(LeaderTask(name, run, interval_s))

    def start(self) -> None:
        self._step()  # decide at once: a single worker leads from its first second
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._set_leader(False)
        self._lock.release()
        with contextlib.suppress(Exception):
            self._heartbeat()

    def wait_leader(self, timeout_s: float) -> bool:
        return self._leader.wait(timeout_s)

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._step()

    def _step(self) -> None:
        try:
            if self.is_leader():
                if not self._lock.still_held():
                    log.warning("worker %s lost leadership (database connection gone)", self.worker)
                    self._set_leader(False)
            elif self._lock.try_acquire():
                self.elections += 1
                log.info("worker %s is the leader", self.worker)
                self._set_leader(True)
            self._heartbeat()
        except Exception as exc:  # the database is down: not leading; try again next interval
            if self.is_leader():
                log.warning("worker %s stops leading: %s", self.worker, exc)
            self._lock.release()
            self._set_leader(False)
            return
        if self.is_leader():
            self._run_tasks()

    def _set_leader(self, leading: bool) -> None:
        if leading == self.is_leader():
            return
        if leading:
            self._leader.set()
            with self._tasks_lock:
                for task in self._tasks:
                    task.next_at = 0.0
        else:
            self._leader.clear()
        with self.changed:
            self.changed.notify_all()

    def _run_tasks(self) -> None:
        now = time.monotonic()
        with self._tasks_lock:
            due = [t for t in self._tasks if t.next_at <= now]
        for task in due:
            task.next_at = now + task.interval_s
            try:
                task.run()
            except Exception:  # one failing job must not stop the others or the election
                log.exception("leader task %s failed", task.name)

    def _heartbeat(self) -> None:
        stored, duplicates = self.stats()
        with self.sessions() as s:
            row = s.get(db.HubWorker, self.worker)
            if row is None:
                row = db.HubWorker(name=self.worker, started_at=self.started_at)
                s.add(row)
            row.host, row.pid, row.client_id = socket.gethostname()[:255], os.getpid(), self.client_id
            row.last_seen, row.leader, row.stored, row.duplicates = time.time(), self.is_leader(), stored, duplicates
            if not self._registered:  # a restarted worker of the same name starts its row afresh
                row.started_at, self._registered = self.started_at, True
            s.commit()
