"""Broker connection settings and a paho client factory used by hub, agent, demo and bench."""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from shared.schema import doc


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect to the MQTT broker."""

    url: str = doc("mqtt://host:port (mqtts:// for TLS).", default="mqtt://127.0.0.1:1883")
    username: str = doc("Username, if the broker requires one.", default="")
    password: str = doc("Password, if the broker requires one.", default="")
    keepalive_s: int = doc("MQTT keepalive in seconds.", default=30)
    client_id: str = doc("Client id of a long-running service's persistent session (empty: the hub uses "
                         "'edgesentry-hub', an agent 'edge-<device>'). Short-lived CLI clients ignore it and "
                         "use a random id with a clean session.", default="")
    ca_file: str = doc("CA bundle for mqtts:// (empty = system CAs).", default="")

    def __post_init__(self) -> None:
        parse_url(self.url)
        if self.keepalive_s < 5:
            raise ValueError("keepalive_s must be >= 5")


def parse_url(url: str) -> tuple[str, int, bool]:
    """mqtt://host[:port] → (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts", "tcp") or not parsed.hostname:
        raise ValueError(f"broker url must look like mqtt://host:port, got {url!r}")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def make_client(cfg: BrokerConfig, client_id_prefix: str, *, persistent: bool) -> mqtt.Client:
    """A paho v2 client (MQTT 3.1.1) with unlimited in-flight queueing.

    ``persistent=True`` is for long-running services (``cloud-hub serve``, ``edge-agent run``): a stable
    client id (``cfg.client_id``, else ``client_id_prefix`` itself) and clean_session=False, so the broker
    queues QoS-1 messages for it while it is down.  ``persistent=False`` is for short-lived clients (CLI
    commands, demo helpers, bench publishers): a random id and a clean session, so nothing stays queued
    on the broker for a client that never comes back.
    """
    if persistent:
        client_id = cfg.client_id or client_id_prefix
    else:
        client_id = f"{client_id_prefix}-{uuid.uuid4().hex[:12]}"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=not persistent
    )
    client.on_socket_open = _no_delay
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
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
