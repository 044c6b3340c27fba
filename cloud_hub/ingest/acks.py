"""The hub's acknowledgement: after a batch commits, one ``Ack`` per device naming every durable id the
hub stored or found already stored (a redelivery is acknowledged again so the agent can delete it)."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from shared import protocol as p


def ack_messages(device: str, ids: list[str]) -> list[p.Ack]:
    """``ids`` in order, without repeats, in messages of at most ``MAX_ACK_IDS`` ids."""
    unique = list(dict.fromkeys(ids))
    return [p.Ack(v=p.PROTOCOL_VERSION, device=device, ids=unique[i : i + p.MAX_ACK_IDS])
            for i in range(0, len(unique), p.MAX_ACK_IDS)]


def publish_acks(client: mqtt.Client, acked: dict[str, list[str]]) -> int:
    """Publish (QoS 1) the acknowledgements for one committed batch; returns the number of messages."""
    sent = 0
    for device, ids in acked.items():
        topic = p.device_topic(device, p.Channel.ACK)
        for ack in ack_messages(device, ids):
            client.publish(topic, p.encode(ack), qos=1)
            sent += 1
    return sent
