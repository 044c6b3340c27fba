"""Agent start-up from disk, CSV replay source, and the TFLite runtime fallback chain."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from edge_agent.model_store import ModelStore
from edge_agent.update import provision
from shared import bundle as bundle_fmt
from shared.signing import parse_public_key
from tests.conftest import CSV_REPLAY_TOML, REPO, simulated_series, start_agent, wait_until, write_csv

pytestmark = pytest.mark.integration


def test_csv_replay_scores_every_row_with_the_model_on_disk(tmp_path: Path, mosquitto: RunningBroker,
                                                            trained_home) -> None:  # type: ignore[no-untyped-def]
    src_home, exported = trained_home
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    server = HubServer(home)
    server.start()
    # The gateway already holds a verified v1 from an earlier run: it must score without the hub's help.
    store = ModelStore(tmp_path / "state", [parse_public_key(src_home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(exported.bundle_dir)))
    provision(tmp_path / "state", 1)
    ts, values = simulated_series(60, seed=1, t0=1_700_100_000.0)  # the trained device, later on
    values[700:703, 0] += 40.0  # a spike the model must report
    write_csv(tmp_path / "replay.csv", ts, values)
    agent, _ = start_agent(tmp_path, "gw-csv", src_home.public_key(), mosquitto.url, "heartbeat_s = 0.5\n" + CSV_REPLAY_TOML + "\n[sync]\nenabled = false")
    window = 16  # the trained_home model's window
    try:
        def last() -> tuple[int, int, int | None] | None:
            with home.sessions()() as s:
                hb = s.scalars(select(db.Heartbeat).order_by(db.Heartbeat.seq.desc())).first()
                return (hb.readings_received, hb.readings_scored, hb.model_version) if hb else None

        wait_until(lambda: last() == (len(ts), len(ts) - window + 1, 1), 60, "all CSV rows scored by v1")
        with home.sessions()() as s:
            events = list(s.scalars(select(db.AnomalyEvent)))
        assert any(ts[700] <= e.ts <= ts[700 + window] for e in events), [e.ts for e in events]
        assert all(e.model_version == 1 for e in events)
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        server.stop()


def test_runtime_falls_back_to_tensorflow_lite_when_litert_is_missing(trained_home) -> None:  # type: ignore[no-untyped-def]
    """With LiteRT unavailable (and tflite-runtime absent), tf.lite runs the same bundle, same numbers."""
    _, exported = trained_home
    model_path = exported.bundle_dir / bundle_fmt.MODEL_FILE
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ai_edge_litert"] = None
        sys.modules["ai_edge_litert.interpreter"] = None
        import numpy as np
        from shared.inference import TFLiteModel
        m = TFLiteModel(open({str(model_path)!r}, "rb").read())
        x = np.random.default_rng(0).random((4, m.window, m.n_features)).astype("float32")
        from shared.scoring import Head
        np.save(sys.stdout.buffer, m.predict(x)[Head.PREDICTION], allow_pickle=False)
        print(m.runtime.value, file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stderr.decode().strip().splitlines()[-1] == "tensorflow"
    import io

    from shared.inference import TFLiteModel
    from shared.scoring import Head

    m = TFLiteModel(model_path.read_bytes())
    assert m.runtime.value == "litert"
    x = np.random.default_rng(0).random((4, m.window, m.n_features)).astype("float32")
    np.testing.assert_allclose(np.load(io.BytesIO(out.stdout), allow_pickle=False), m.predict(x)[Head.PREDICTION], atol=1e-6)
