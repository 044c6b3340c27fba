"""Scoring the demo's detections against the simulator's injected spans: one function for the real-time
demo's summary and the offline recall measurement (``cloud-hub demo-recall``), so both count alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from cloud_hub.demo.simulator import Injected
from shared.metrics import match_events

GRACE_S = 3.0  # an event up to this long after a span's end still detects it


def detection_summary(events: list[tuple[str, float]], injected: list[Injected]) -> dict[str, Any]:
    """Recall overall and per anomaly kind, false alarms, and what was missed / falsely raised.

    ``events``: (device, timestamp) of every reported anomaly event."""
    spans = [(i.device, i.start, i.end) for i in injected]
    match = match_events(events, spans, grace_s=GRACE_S)
    kinds: dict[str, list[int]] = {}
    for span, hit in zip(injected, match.detected, strict=True):
        kinds.setdefault(span.kind, []).append(int(hit))
    false = [{"device": d, "ts": t} for d, t in events
             if not any(sd == d and s <= t <= e + GRACE_S for sd, s, e in spans)]
    return {
        "injected_anomalies": len(injected),
        "injected_detected": int(sum(match.detected)),
        "recall": round(float(np.mean(match.detected)), 4) if injected else None,
        "recall_by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(kinds.items())},
        "detected_by_kind": {k: [int(sum(v)), len(v)] for k, v in sorted(kinds.items())},
        "false_alarms": match.false_alarms,
        "grace_s": GRACE_S,
        "missed": [i.to_dict() for i, hit in zip(injected, match.detected, strict=True) if not hit],
        "false_events": false,
    }
