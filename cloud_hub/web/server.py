"""Run the dashboard with uvicorn in a background thread (inside ``cloud-hub serve``) or in the foreground."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

import uvicorn

from cloud_hub.home import HubHome
from cloud_hub.web.app import create_app

log = logging.getLogger("cloud_hub.web")


class BindError(ValueError):
    pass


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[v6]:PORT`` → (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BindError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, require_login: bool) -> None:
    """Login may only be off on a loopback address (the local demo)."""
    if not require_login and not is_loopback(host):
        raise BindError(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}")


class WebServer:
    """uvicorn serving the dashboard on its own thread; ``url`` once started."""

    def __init__(self, home: HubHome, listen: str, *, require_login: bool = True, metrics: Any = None,
                 alerts: Any = None) -> None:
        self.host, port = parse_listen(listen)
        check_bind(self.host, require_login)
        app = create_app(home, require_login=require_login, metrics=metrics, alerts=alerts)
        # Bind here so a busy port fails at once and port 0 gets a free one we can report.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((self.host, port))
        except OSError as exc:
            self.sock.close()
            raise BindError(f"cannot listen on {listen}: {exc}") from None
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, limit_concurrency=64)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="hub-web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else host}:{self.port}/"

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        ok = threading.Event()

        def started() -> None:
            if self.server.started:
                ok.set()

        for _ in range(int(timeout_s * 20)):
            started()
            if ok.wait(0.05) or not self._thread.is_alive():
                break
        if not self.server.started:
            raise BindError(f"dashboard did not start on {self.host}:{self.port}")
        log.info("dashboard on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()
