"""``cloud-hub serve --workers N``: N ``serve --worker wI`` processes sharing ingest, restarted if they die.

Each worker is a whole hub process (own MQTT session ``<client_id>-wI``, own writer, own connection pool)
on the shared subscription; the parent only starts, restarts and stops them.  A restarted worker takes
the same name, so the broker redelivers what its session had not acknowledged.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

from cloud_hub.procs import die_with_parent

log = logging.getLogger("cloud_hub.workers")

RESTART_DELAY_S = 1.0


class WorkerPool:
    def __init__(self, home: Path, workers: int, verbose: bool = False, web_args: list[str] | None = None) -> None:
        if workers < 1:
            raise ValueError("--workers must be >= 1")
        self.home = home
        self.names = [f"w{i}" for i in range(workers)]
        self.verbose = verbose
        self.web_args = web_args or []  # --http/--no-auth: the dashboard runs in the first worker only
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "cloud_hub.cli", "--home", str(self.home)]
        if self.verbose:
            args.append("-v")
        web = self.web_args if name == self.names[0] else ["--no-web"]
        return subprocess.Popen([*args, "serve", "--worker", name, *web], preexec_fn=die_with_parent())

    def run(self, stop: threading.Event) -> int:
        """Start the workers and keep them running until ``stop``; then SIGTERM them (each stores and
        acknowledges what it holds) and wait."""
        for name in self.names:
            self.procs[name] = self._spawn(name)
        log.info("started %d serve workers: %s", len(self.names), ", ".join(self.names))
        while not stop.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.warning("worker %s exited with code %s; restarting it in %.0f s", name, code, RESTART_DELAY_S)
                if stop.wait(RESTART_DELAY_S):
                    break
                self.procs[name] = self._spawn(name)
                self.restarts += 1
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 60
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0
