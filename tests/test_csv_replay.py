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
    src = CsvReplay(CsvSource(type="csv", path=path, **kw), lambda b: got.append(b) or 0,  # type: ignore[arg-type]
                    threading.Event())
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


def test_replay_resumes_after_the_last_row_the_scorer_took(tmp_path: Path) -> None:
    """progress() names the row after the last block the consumer took; a replay started there continues
    without overlap or gap (the agent stores it with each commit and passes it back after a restart)."""
    from edge_agent.readings_queue import ReadingQueue

    ts, values = simulated_series(10)  # 200 rows
    path = write_csv(tmp_path / "r.csv", ts, values)
    cfg = CsvSource(type="csv", path=path, rate_hz=0.0, restamp=False)
    queue = ReadingQueue(10_000)
    first = CsvReplay(cfg, queue.put, threading.Event())
    first.run()
    assert first.progress(queue.taken) is None  # nothing taken yet
    got = queue.get(max_items=100, timeout=1)  # 64 + 36: the second block is only partly taken
    assert sum(len(b) for b in got) == 100
    assert first.progress(queue.taken) == 64  # only whole blocks count
    assert first.progress(queue.taken) is None  # no news since
    rest: list[ReadingsBlock] = []

    def sink(block: ReadingsBlock) -> int:
        rest.append(block)
        return len(rest)

    CsvReplay(cfg, sink, threading.Event(), resume_row=64).run()
    np.testing.assert_allclose(np.concatenate([b.ts for b in rest]), ts[64:], atol=1e-3)
    done: list[ReadingsBlock] = []
    CsvReplay(cfg, lambda b: done.append(b) or 0, threading.Event(), resume_row=len(ts)).run()
    assert done == []  # the last run replayed everything: nothing again
