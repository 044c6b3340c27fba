"""The operator's view: dashboard pages, ``/metrics`` and alert webhooks."""
