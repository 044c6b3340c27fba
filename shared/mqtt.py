"""Broker connection settings, a paho client factory, per-message isolation and the supervised loop.

Used by hub, agent, demo and bench.  :class:`MessageGuard` is the ONE way an MQTT callback handles a
message (agent and hub ingest alike); :class:`NetworkSupervisor` is the one place a process decides
that its broker connection is beyond repair and exits non-zero so systemd restarts it.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from shared.protocol import ProtocolError, RejectCounter, parse_topic
from shared.schema import doc

log = logging.getLogger(__name__)

HUB_MAX_DISCONNECTED_S = 300.0  # the hub is useless offline: let systemd restart it after 5 minutes
AGENT_MAX_DISCONNECTED_S = 0.0  # never: a gateway keeps scoring and buffering through long outages
EXIT_NETWORK = 3  # exit status of a process that gave up on its broker connection (2 = bad config)


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect to the MQTT broker."""

    url: str = doc("mqtt://host:port (mqtts:// for TLS).", default="mqtt://127.0.0.1:1883")
    username: str = doc("Username, if the broker requires one.", default="")
    password: str = doc("Password, if the broker requires one.", default="", repr=False)
    password_credential: str = doc(
        "Name of a systemd credential holding the password (LoadCredential=NAME:/path in the unit); read "
        "from $CREDENTIALS_DIRECTORY/NAME at start. Used when password is empty.", default="")
    keepalive_s: int = doc("MQTT keepalive in seconds.", default=30)
    client_id: str = doc("Client id of a long-running service's persistent session (empty: the hub uses "
                         "'edgesentry-hub', an agent 'edge-<device>'). Short-lived CLI clients ignore it and "
                         "use a random id with a clean session.", default="")
    ca_file: str = doc("CA bundle for mqtts:// (empty = system CAs).", default="")
    reconnect_max_s: int = doc("Longest wait between reconnection attempts (they back off from 1 s).", default=30)
    max_disconnected_s: float | None = doc(
        "Exit non-zero (for systemd to restart) after this long without a broker connection; 0 = never. "
        "Unset = the side's default: hub 300 s, agent never (a gateway may be offline for days and keeps "
        "scoring).", default=None)

    def __post_init__(self) -> None:
        parse_url(self.url)
        if self.keepalive_s < 5 or self.reconnect_max_s < 1:
            raise ValueError("keepalive_s must be >= 5 and reconnect_max_s >= 1")
        if "/" in self.password_credential or self.password_credential.startswith("."):
            raise ValueError("password_credential is a credential name, not a path")
        if self.max_disconnected_s is not None and self.max_disconnected_s < 0:
            raise ValueError("max_disconnected_s must be >= 0 (0 = never)")

    def disconnect_limit(self, side_default: float) -> float:
        """Seconds of disconnection after which the process gives up (0 = never)."""
        return side_default if self.max_disconnected_s is None else self.max_disconnected_s

    def resolved_password(self) -> str:
        """The password, from the config or from the systemd credential it names (ValueError if absent)."""
        if self.password or not self.password_credential:
            return self.password
        directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise ValueError(f"password_credential {self.password_credential!r} set but $CREDENTIALS_DIRECTORY "
                             "is not (run under systemd with LoadCredential=, or export it)")
        path = Path(directory) / self.password_credential
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read credential {path}: {exc.strerror}") from None


def parse_url(url: str) -> tuple[str, int, bool]:
    """mqtt://host[:port] → (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts", "tcp") or not parsed.hostname:
        raise ValueError(f"broker url must look like mqtt://host:port, got {url!r}")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def make_client(cfg: BrokerConfig, client_id_prefix: str, *, persistent: bool, manual_ack: bool = False,
                client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """A paho v2 client (MQTT 3.1.1) with unlimited in-flight queueing.

    ``persistent=True`` is for long-running services (``cloud-hub serve``, ``edge-agent run``): a stable
    client id (``cfg.client_id``, else ``client_id_prefix`` itself) and clean_session=False, so the broker
    queues QoS-1 messages for it while it is down.  ``persistent=False`` is for short-lived clients (CLI
    commands, demo helpers, bench publishers): a random id and a clean session, so nothing stays queued
    on the broker for a client that never comes back.  ``manual_ack=True``: paho does not PUBACK a
    received QoS-1 message; the caller does (``client.ack(mid, qos)``) once what it needs is durable.
    ``client_class``: a paho ``Client`` subclass (the hub's ``cloud_hub.ingest.mqtt_io.HubClient``).
    """
    NetworkSupervisor.install_excepthook()  # from the start: a loop thread may die before anyone watches
    if persistent:
        client_id = cfg.client_id or client_id_prefix
    else:
        client_id = f"{client_id_prefix}-{uuid.uuid4().hex[:12]}"
    client = client_class(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=not persistent,
        manual_ack=manual_ack,
    )
    client.on_socket_open = _no_delay
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=1, max_delay=cfg.reconnect_max_s)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.resolved_password() or None)
    _, _, tls = parse_url(cfg.url)
    if tls:
        client.tls_set(ca_certs=cfg.ca_file or None)
    return client


def _no_delay(_client: mqtt.Client, _userdata: object, sock: Any) -> None:
    """Small QoS-1 messages must not wait for Nagle's algorithm (tens of ms on an idle link)."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(client: mqtt.Client, cfg: BrokerConfig, timeout_s: float = 15.0) -> None:
    """Connect and start the network loop; block until CONNACK or raise ConnectionError."""
    host, port, _ = parse_url(cfg.url)
    connected = threading.Event()
    failure: list[str] = []
    previous: Any = client.on_connect

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            failure.append(str(reason))
        connected.set()
        if previous is not None:
            previous(c, userdata, flags, reason, props)
        client.on_connect = previous

    client.on_connect = on_connect
    client.connect_async(host, port, keepalive=cfg.keepalive_s)
    client.loop_start()
    if not connected.wait(timeout_s) or failure:
        client.loop_stop()
        raise ConnectionError(f"could not connect to {cfg.url}: {failure[0] if failure else 'timeout'}")


def start(client: mqtt.Client, cfg: BrokerConfig) -> None:
    """Connect in the background and keep retrying: a gateway may boot before its network."""
    host, port, _ = parse_url(cfg.url)
    client.connect_async(host, port, keepalive=cfg.keepalive_s)
    client.loop_start()


# ------------------------------------------------------------------------------ per-message isolation


def topic_channel(topic: str) -> str:
    """Channel name of an ``edgesentry/<device>/<channel>`` topic, ``unknown`` otherwise."""
    try:
        return parse_topic(topic)[1].value
    except ProtocolError:
        return "unknown"


Handler = Callable[[mqtt.MQTTMessage], None]


class MessageGuard:
    """Handles each MQTT message in isolation: nothing one message raises reaches paho's loop.

    A :class:`~shared.protocol.ProtocolError` is counted by reason (``rejects.reject``); any other
    exception is a bug: counted as ``internal_error`` by channel and logged rate-limited with at most
    one traceback per interval (``rejects.internal_error``).  Both the agent and the hub's ingest
    (``cloud_hub/ingest/``) wrap every paho callback with this — use :meth:`on_message` for
    ``client.on_message`` and :meth:`callback` for ``on_connect`` and friends.
    """

    def __init__(self, rejects: RejectCounter, channel_of: Callable[[str], str] = topic_channel) -> None:
        self.rejects = rejects
        self.channel_of = channel_of

    def handle(self, handler: Handler, msg: mqtt.MQTTMessage) -> bool:
        """Run ``handler(msg)``; True if it returned normally."""
        topic = "?"
        try:
            topic = msg.topic
            handler(msg)
            return True
        except ProtocolError as exc:
            self.rejects.reject(topic, exc)
        except Exception as exc:  # noqa: BLE001 - isolation is the point: count, log, carry on
            self.rejects.internal_error(self._channel(topic), topic, exc)
        return False

    def on_message(self, handler: Handler) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        """A paho ``on_message`` callback that runs ``handler`` under the guard."""

        def callback(_client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self.handle(handler, msg)

        return callback

    def callback(self, fn: Callable[..., None], name: str) -> Callable[..., None]:
        """Wrap any other paho callback (``on_connect``, ...): failures count as ``internal_error``
        under ``name``."""

        def wrapped(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001
                self.rejects.internal_error(name, name, exc)

        return wrapped

    def _channel(self, topic: str) -> str:
        try:
            return self.channel_of(topic)
        except Exception:  # noqa: BLE001
            return "unknown"


# ------------------------------------------------------------------------------ supervised loop


class LoopFailure(enum.StrEnum):
    THREAD_DIED = "network_thread_died"  # paho's loop thread ended while we still needed it: always fatal
    DISCONNECTED = "disconnected_too_long"  # no broker connection for longer than max_disconnected_s


@dataclass
class _Watched:
    client: mqtt.Client
    name: str
    max_disconnected_s: float
    down_since: float | None = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None  # paho's loop thread (paho forgets it when it ends)


class NetworkSupervisor:
    """Watches paho clients started with ``loop_start``; :meth:`wait` returns why one failed.

    The process then logs the reason and exits non-zero: a service manager restarting it is better
    than a process that runs on and stores nothing (a dead network thread is silent otherwise).
    """

    _errors: dict[str, BaseException] = {}
    _hook_lock = threading.Lock()
    _hooked = False

    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self._watched: list[_Watched] = []
        self.install_excepthook()

    def watch(self, client: mqtt.Client, name: str, max_disconnected_s: float) -> None:
        """Watch a client whose loop was started with ``loop_start`` (``connect``/``start`` here)."""
        self._watched.append(_Watched(client, name, max_disconnected_s, thread=getattr(client, "_thread", None)))

    def check(self, now: float | None = None) -> tuple[LoopFailure, str] | None:
        now = time.monotonic() if now is None else now
        for w in self._watched:
            if w.thread is None:
                w.thread = getattr(w.client, "_thread", None)
            name = _loop_thread_name(w.client)
            exc = self._errors.get(name)
            if exc is not None or (w.thread is not None and not w.thread.is_alive()):
                why = f"{type(exc).__name__}: {exc}" if exc is not None else "it returned"
                return LoopFailure.THREAD_DIED, f"{w.name}: MQTT network thread died ({why})"
            if w.client.is_connected():
                w.down_since = None
            elif w.down_since is None:
                w.down_since = now
            elif w.max_disconnected_s > 0 and now - w.down_since > w.max_disconnected_s:
                return LoopFailure.DISCONNECTED, (f"{w.name}: no broker connection for {now - w.down_since:.0f} s "
                                                  f"(broker.max_disconnected_s = {w.max_disconnected_s:g})")
        return None

    def wait(self, stop: threading.Event) -> tuple[LoopFailure, str] | None:
        """Block until ``stop`` is set (None) or a watched client fails (its reason and message)."""
        while not stop.wait(self.poll_s):
            failure = self.check()
            if failure is not None:
                return failure
        return None

    def run(self, stop: threading.Event, logger: logging.Logger) -> int:
        """The main thread's wait in ``edge-agent run`` / ``cloud-hub serve``: 0 when asked to stop;
        :data:`EXIT_NETWORK` after logging why the connection is beyond repair (the caller then shuts
        down what it can and exits with it, so systemd restarts the process)."""
        failure = self.wait(stop)
        if failure is None:
            return 0
        reason, message = failure
        logger.critical("exiting with status %d: %s [%s]", EXIT_NETWORK, message, reason.value)
        stop.set()
        return EXIT_NETWORK

    @classmethod
    def install_excepthook(cls) -> None:
        """Remember what killed a thread so the exit message can say it."""
        with cls._hook_lock:
            if cls._hooked:
                return
            cls._hooked = True
            previous = threading.excepthook

            def hook(args: threading.ExceptHookArgs) -> None:
                if args.thread is not None and args.exc_value is not None:
                    cls._errors[args.thread.name] = args.exc_value
                previous(args)

            threading.excepthook = hook


def _loop_thread_name(client: mqtt.Client) -> str:
    """The name paho gives a client's ``loop_start`` thread."""
    raw = getattr(client, "_client_id", b"")
    return f"paho-mqtt-client-{raw.decode(errors='replace') if isinstance(raw, bytes) else raw}"
