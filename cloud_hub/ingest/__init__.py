"""``cloud-hub serve``'s ingest: MQTT → validated messages → batched, idempotent writes → acknowledgements.

Modules: ``service`` (the MQTT client and the writer thread: :class:`HubServer`), ``batching`` (the
queue between them), ``store`` (message → rows, one transaction per batch), ``acks`` (the hub's
``Ack`` per device), ``rollout_hooks`` (today's rollout bookkeeping, replaced by the rollout owner).
"""

from cloud_hub.ingest.service import HUB_CHANNELS, HUB_CLIENT_ID, HubServer

__all__ = ["HUB_CHANNELS", "HUB_CLIENT_ID", "HubServer"]
