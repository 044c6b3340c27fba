"""Starting real brokers on loopback: Mosquitto (tests, bench) and embedded amqtt (zero-setup demo)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.procs import die_with_parent

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
{persistence}
# The default (1000) silently drops QoS-1 messages to a slow subscriber.
max_queued_messages 1000000
# The hub PUBACKs only after its database commit: this window caps one ingest batch.
max_inflight_messages 1000
message_size_limit 1048576
# Small QoS-1 messages otherwise wait on Nagle + delayed ACK (a steady ~40 ms on loopback).
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
"""


PERSISTENCE_ON = """persistence true
persistence_location {workdir}/
# Save every change at once so a broker that is killed loses nothing it acknowledged (tests; production
# setups trade this for fewer writes).
autosave_interval 1
autosave_on_changes true
{user}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port (or the process dies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # readiness poll of a port, bounded by the deadline
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s}s")


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


@dataclass
class RunningBroker:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    persistence: bool = False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files (and drops clients no longer allowed)."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing saved that was not saved already."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, persistence: bool | None = None) -> None:
        """Start again on the same port and workdir (after ``stop`` or ``kill``) with the test configuration
        of :func:`start_mosquitto`; with persistence, the saved sessions and queued messages come back."""
        if self.kind != "mosquitto":
            raise RuntimeError("only Mosquitto can be restarted in place")
        self.stop()
        again = start_mosquitto(self.port, self.workdir, self.persistence if persistence is None else persistence)
        self.proc, self.persistence = again.proc, again.persistence


def start_mosquitto(port: int | None = None, workdir: Path | None = None, persistence: bool = False) -> RunningBroker:
    """A Mosquitto on 127.0.0.1:port; ``persistence`` keeps sessions and queued QoS-1 messages on disk in
    ``workdir`` (what a gateway broker must do, see docs/architecture.md)."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mosquitto-"))
    conf = workdir / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(
        port=port, persistence=PERSISTENCE_ON.format(
            workdir=workdir,
            # As root Mosquitto drops to the `mosquitto` user, who cannot write a private temp dir.
            user="user root" if hasattr(os, "geteuid") and os.geteuid() == 0 else "",
        ) if persistence else "persistence false"))
    return run_mosquitto(conf, port, workdir, persistence)


def run_mosquitto(conf: Path, port: int, workdir: Path, persistence: bool = False) -> RunningBroker:
    """Run Mosquitto on an existing config (e.g. one `cloud-hub broker-config` wrote) listening on ``port``."""
    exe = mosquitto_path()
    if exe is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    log = open(workdir / "mosquitto.log", "ab")  # noqa: SIM115 - lives as long as the broker (appended on restart)
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    wait_for_port(port, 10, proc)
    return RunningBroker("mosquitto", port, proc, workdir, persistence)


def start_amqtt(port: int | None = None, workdir: Path | None = None) -> RunningBroker:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="amqtt-"))
    log = open(workdir / "amqtt.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "cloud_hub.demo.broker", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    wait_for_port(port, 30, proc)
    return RunningBroker("amqtt", port, proc, workdir)
