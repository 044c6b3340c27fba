"""Firmware profiles parse and validate; event matching scores detections and false alarms."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.metrics import match_events, percentile
from shared.profiles import load_profile
from shared.schema import SchemaError
from tests.conftest import REPO


@pytest.mark.parametrize("path", sorted((REPO / "firmware_profiles").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_profiles_are_valid(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem and profile.max_model_bytes > 100_000


def test_profile_with_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('name = "x"\ndescription = "d"\narch = "aarch64"\ngpu = true\n')
    with pytest.raises(SchemaError, match="gpu"):
        load_profile(bad)


def test_event_matching() -> None:
    spans = [("a", 10.0, 12.0), ("a", 30.0, 31.0), ("b", 10.0, 12.0)]
    events = [("a", 13.5), ("a", 20.0), ("b", 9.0), ("b", 11.0), ("c", 11.0)]
    m = match_events(events, spans, grace_s=2.0)
    assert m.detected == [True, False, True]
    assert m.false_alarms == 3 and m.events_in_spans == 2


def test_percentile() -> None:
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 99) == pytest.approx(9.9)
