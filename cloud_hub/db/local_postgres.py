"""A throwaway PostgreSQL server on loopback for tests and ``make bench`` (never for production).

``initdb`` in a temporary directory, ``postgres`` on a free 127.0.0.1 port with trust authentication,
run as an unprivileged user when started as root (PostgreSQL refuses to run as root), stopped with its
parent (``PR_SET_PDEATHSIG``) so a killed test run leaks no server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.brokers import free_port
from cloud_hub.procs import die_with_parent

RUN_AS = "postgres"  # the Debian package's account; "nobody" if it does not exist


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with a ``postgres`` server, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


@dataclass
class LocalPostgres:
    port: int
    datadir: Path
    proc: subprocess.Popen[bytes]
    superuser: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.superuser} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # "smart" shutdown waits for clients; fast (SIGINT) does not
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _demote(uid: int, gid: int) -> None:
    die = die_with_parent()
    if die is not None:
        die()
    if os.geteuid() == 0:
        os.setgid(gid)
        os.setuid(uid)


def start_postgres(fast: bool = True, max_connections: int = 300, timeout_s: float = 60) -> LocalPostgres:
    """Start a new cluster. ``fast`` turns off fsync (tests: durability of a throwaway server is moot)."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        account = pwd.getpwnam(RUN_AS)
    except KeyError:
        account = pwd.getpwnam("nobody")
    uid, gid = (account.pw_uid, account.pw_gid) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    root = Path(tempfile.mkdtemp(prefix="edgesentry-pg-"))
    os.chown(root, uid, gid)
    datadir = root / "data"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, env=env, preexec_fn=lambda: _demote(uid, gid))
    settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(root),
                "max_connections": str(max_connections)}
    if fast:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    last_error: Exception | None = None
    for _attempt in range(5):  # a free port can be taken between free_port() and postgres' bind
        port = free_port()
        args = [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(root / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the server
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=lambda: _demote(uid, gid))
        server = LocalPostgres(port, datadir, proc)
        try:
            _wait_ready(server, timeout_s)
            return server
        except RuntimeError as exc:
            last_error = exc
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {last_error}")


def _wait_ready(server: LocalPostgres, timeout_s: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            log = (server.datadir.parent / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres exited with code {server.proc.returncode}: {log}")
        try:
            with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres",
                                 connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.1)  # readiness poll of a starting server, bounded by the deadline
    raise RuntimeError(f"postgres not accepting connections after {timeout_s}s")
