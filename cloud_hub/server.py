"""Kept for imports: the hub's ingest lives in :mod:`cloud_hub.ingest`."""

from cloud_hub.ingest import HUB_CHANNELS, HubServer

__all__ = ["HUB_CHANNELS", "HubServer"]
