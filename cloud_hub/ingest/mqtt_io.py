"""The hub's MQTT socket I/O, cheaper per message than paho does it alone.

Through a broker, paho's one network thread was the hub's bottleneck (a profile of the end-to-end
bench: a fifth of that thread in ``recv`` calls, and a syscall pair per PUBACK on the writer):

* paho reads each packet with three or more ``recv()`` calls (command byte, each remaining-length byte,
  then the body).  :class:`HubClient` gives paho a socket that reads whatever the kernel holds (up to
  64 KiB) in one call and serves paho's small reads from it; its ``pending()`` — the method paho
  already asks TLS sockets — tells paho's loop that bytes are waiting, and ``loop_read`` handles every
  whole packet already read (up to ``MAX_PACKETS_PER_READ``) instead of one per ``select()``.
* a committed batch is PUBACKed in ONE queued write (:func:`puback_all`) instead of one queued packet,
  one wake-up of the network thread and one ``send()`` per message.

Both lean on paho 2.x internals (``_create_socket``, ``_packet_queue``); on any other paho the client is
plain paho and :func:`puback_all` acknowledges message by message (``tests/test_ingest.py`` checks the
fast path is the one in use, so an upgrade that changes them fails a test rather than silently slowing).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt

READ_CHUNK = 64 * 1024
MAX_PACKETS_PER_READ = 1000  # then paho's loop gets round to writing (PUBACKs, Acks) and keepalive again
_PAHO_2 = paho.mqtt.__version__.startswith("2.") and hasattr(mqtt.Client, "_create_socket") \
    and hasattr(mqtt.Client, "_packet_queue")
_PUBACK = struct.Struct("!BBH")


class BufferedSocket:
    """A connected (TCP or TLS) socket whose ``recv`` is served from one larger read; everything else
    goes to the socket itself."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(n, READ_CHUNK))  # BlockingIOError, TLS errors, b"" at EOF: as paho expects
            if len(data) <= n:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + n, len(self._buf))
        return self._buf[start:self._pos]

    def buffered(self) -> int:
        """Bytes read from the kernel and not yet handed to paho."""
        return len(self._buf) - self._pos

    def pending(self) -> int:
        """Bytes readable without the kernel: ours, plus those TLS has decrypted but not handed out."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HubClient(mqtt.Client):
    """paho's client with :class:`BufferedSocket` reads (plain paho where its internals differ)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if not _PAHO_2 or not isinstance(sock, socket.socket):  # websockets, unix sockets: as paho does them
            return sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # on_socket_open's TCP_NODELAY sees the wrapper
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """paho reads one packet per call (per ``select``); go on while whole packets are buffered."""
        rc = super().loop_read(max_packets)
        for _ in range(MAX_PACKETS_PER_READ):
            sock = self._sock
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, BufferedSocket) \
                    or not sock.buffered():
                break
            rc = super().loop_read(max_packets)
        return rc


def fast_io(client: mqtt.Client) -> bool:
    """Whether ``client`` uses the shortcuts (paho 2.x and a :class:`HubClient`)."""
    return _PAHO_2 and isinstance(client, HubClient)


def puback_all(client: mqtt.Client, mids: Iterable[int]) -> None:
    """PUBACK (QoS 1) every message id in one queued write: MQTT packets are just concatenated bytes."""
    mids = list(mids)
    if not mids:
        return
    if not _PAHO_2:
        for mid in mids:
            client.ack(mid, 1)
        return
    packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
    client._packet_queue(mqtt.PUBACK, packet, 0, 0)  # type: ignore[attr-defined]
