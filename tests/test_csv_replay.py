"""CSV replay source: every row, in order, with usable timestamps whichever clock is chosen."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import CsvSource
from edge_agent.sources import CsvReplay
from shared.readings import ReadingsBlock
from tests.conftest import simulated_series, write_csv


def _replay(path: Path, **kw: object) -> list[tuple[float, dict[str, float | None]]]:
    got: list[ReadingsBlock] = []
    src = CsvReplay(CsvSource(type="csv", path=path, **kw), got.append, threading.Event())  # type: ignore[arg-type]
    src.run()
    assert src.finished.is_set()
    return [(float(t), {f: None if np.isnan(v) else float(v) for f, v in zip(b.features, row, strict=True)})
            for b in got for t, row in zip(b.ts, b.values, strict=True)]


@pytest.mark.parametrize("restamp", [False, True])
def test_replay_as_fast_as_possible_keeps_order_and_spacing(tmp_path: Path, restamp: bool) -> None:
    ts, values = simulated_series(10)
    values[5, 1] = np.nan
    got = _replay(write_csv(tmp_path / "r.csv", ts, values), rate_hz=0.0, restamp=restamp)
    assert len(got) == len(ts)
    stamps = np.array([t for t, _ in got])
    np.testing.assert_allclose(np.diff(stamps), np.diff(ts), atol=1e-3)  # unique, file spacing
    if not restamp:
        np.testing.assert_allclose(stamps, ts, atol=1e-3)
    assert got[5][1]["humidity"] is None and got[4][1]["humidity"] is not None


def test_missing_file_ends_the_source_without_readings(tmp_path: Path) -> None:
    assert _replay(tmp_path / "absent.csv", rate_hz=0.0) == []
