"""A paho client whose publishing thread writes its PUBLISH and PUBACK packets to the socket itself.

Why: with ``loop_start()`` paho queues every packet a caller publishes and wakes its network thread
(a byte on a socketpair) to write it: one more thread hand-off per message.  On the agent's reading →
report path that hand-off was a tail of its own (the network thread waiting for a core or the GIL:
p99 up to ~9 ms of a 32 ms p99 on a loaded run, ``docs/benchmarks.md``).  :class:`DirectWriteClient`
writes the queued packets from the calling thread when the socket takes them at once; the network
thread is woken only when something is left (socket buffer full, not connected).  Writes from both
threads go through one lock, so packets never interleave and leave in queue order.

Scope, on purpose narrow: plain TCP only (two threads must not drive one OpenSSL connection, so TLS and
websockets keep paho's own path), PUBLISH and PUBACK only (CONNECT, DISCONNECT and the rest change the
connection state, which stays the network thread's business), and paho 2.x only (it overrides
``_packet_queue`` / ``_packet_write``); any other paho gets plain paho behaviour
(``tests/test_mqtt_direct.py`` checks the shortcut is the one in use).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt

_PAHO_2 = paho.mqtt.__version__.startswith("2.") and hasattr(mqtt.Client, "_packet_queue") \
    and hasattr(mqtt.Client, "_packet_write")
_DIRECT_COMMANDS = frozenset({mqtt.PUBLISH, mqtt.PUBACK})


class DirectWriteClient(mqtt.Client):
    """paho's client; a thread other than the network thread writes its own PUBLISH/PUBACK packets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_lock = threading.RLock()
        self.direct_writes = 0  # packets written by the calling thread (tests, benchmarks)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        with self._write_lock:
            return super()._packet_write()  # type: ignore[misc]

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> mqtt.MQTTErrorCode:
        sock = self._sock  # type: ignore[has-type]
        thread = self._thread  # type: ignore[has-type]
        if (not _PAHO_2 or thread is None or threading.current_thread() is thread
                or (command & 0xF0) not in _DIRECT_COMMANDS
                or type(sock) is not socket.socket or isinstance(sock, ssl.SSLSocket)):
            return super()._packet_queue(command, packet, mid, qos, info)  # type: ignore[misc]
        self._out_packet.append({  # type: ignore[has-type]
            "command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet), "packet": packet,
            "info": info,
        })
        if self._write_lock.acquire(blocking=False):  # else the network thread is writing: it takes ours too
            try:
                super()._packet_write()  # type: ignore[misc]
            finally:
                self._write_lock.release()
            if not self._out_packet:  # type: ignore[has-type]
                self.direct_writes += 1
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        # Something is left (socket buffer full, connection lost): wake the network thread as paho does.
        if self._sockpairW is not None:  # type: ignore[has-type]
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(b"0")  # type: ignore[has-type]
        self._call_socket_register_write()  # type: ignore[attr-defined]
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def direct_write(client: mqtt.Client) -> bool:
    """Whether ``client`` takes the shortcut (paho 2.x and a :class:`DirectWriteClient`)."""
    return _PAHO_2 and isinstance(client, DirectWriteClient)


__all__ = ["DirectWriteClient", "direct_write"]
