"""Starting real brokers on loopback: Mosquitto (tests, bench) and embedded amqtt (zero-setup demo)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# The default (1000) silently drops QoS-1 messages to a slow subscriber.
max_queued_messages 1000000
max_inflight_messages 100
message_size_limit 1048576
# Small QoS-1 messages otherwise wait on Nagle + delayed ACK (a steady ~40 ms on loopback).
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
"""


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


def start_mosquitto(port: int | None = None, workdir: Path | None = None) -> RunningBroker:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mosquitto-"))
    conf = workdir / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port))
    return run_mosquitto(conf, port, workdir)


def run_mosquitto(conf: Path, port: int, workdir: Path) -> RunningBroker:
    """Run Mosquitto on an existing config (e.g. one `cloud-hub broker-config` wrote) listening on ``port``."""
    exe = mosquitto_path()
    if exe is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    log = open(workdir / "mosquitto.log", "wb")  # noqa: SIM115 - lives as long as the broker
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, 10, proc)
    return RunningBroker("mosquitto", port, proc, workdir)


def start_amqtt(port: int | None = None, workdir: Path | None = None) -> RunningBroker:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="amqtt-"))
    log = open(workdir / "amqtt.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "cloud_hub.demo.broker", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, 30, proc)
    return RunningBroker("amqtt", port, proc, workdir)
