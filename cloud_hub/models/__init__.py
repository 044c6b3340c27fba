"""Model architectures the hub can train, by name."""

from cloud_hub.models import ae_lstm

MODELS = {ae_lstm.NAME: ae_lstm}

__all__ = ["MODELS"]
