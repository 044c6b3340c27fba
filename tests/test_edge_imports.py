"""The edge must run on a Pi: no TensorFlow, Keras, scipy or SQLAlchemy, even while scoring."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

FORBIDDEN = ("tensorflow", "keras", "scipy", "sqlalchemy", "tf_keras")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_the_agent_pulls_in_no_hub_library() -> None:
    loaded = _run(f"""
        import sys, pkgutil, importlib, edge_agent, shared
        for pkg in (edge_agent, shared):
            for m in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(pkg.__name__ + "." + m.name)
        print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})))
    """)
    assert loaded == ""


def test_scoring_a_real_bundle_pulls_in_no_hub_library(trained_home) -> None:  # type: ignore[no-untyped-def]
    home, exported = trained_home
    loaded = _run(f"""
        import sys, numpy as np
        from shared import bundle
        from shared.signing import parse_public_key
        from edge_agent.detector import ActiveModel, StreamingDetector
        b = bundle.load_dir(__import__("pathlib").Path({str(exported.bundle_dir)!r}),
                            [parse_public_key({home.public_key()!r})])
        d = StreamingDetector(); m = ActiveModel.from_bundle(b); d.swap(m)
        feats = m.preprocessing.features
        out = d.push([(float(i), {{f: float(np.sin(i / 5)) for f in feats}}) for i in range(40)])
        assert len(out) == 40 - m.preprocessing.window + 1, len(out)
        assert m.model.runtime.value == "litert", m.model.runtime
        print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})))
    """)
    assert loaded == ""


def test_the_resident_agent_leaves_heavy_optional_modules_out() -> None:
    """What `edge-agent run` imports stays out of numpy.random (~2 MB resident; sync sampling uses the
    stdlib generator) — the idle-RSS budget in docs/benchmarks.md."""
    loaded = _run("""
        import sys
        from edge_agent.agent import Agent
        from edge_agent.config import SyncConfig
        from edge_agent.sync import SyncSelector
        SyncSelector(SyncConfig(), seed=0)._uniform(8)
        print(",".join(sorted(m for m in sys.modules if m.startswith("numpy.random"))))
    """)
    assert loaded == ""


def test_the_running_agent_verifies_bundles_without_the_crypto_library(trained_home) -> None:  # type: ignore[no-untyped-def]
    """`edge-agent run` checks signatures in a helper process: the bundle verifies, and `cryptography`
    (~6.5 MB resident) never loads into the agent."""
    home, exported = trained_home
    loaded = _run(f"""
        import sys
        from pathlib import Path
        from shared import bundle, signing
        signing.verify_in_helper_process(True)
        b = bundle.load_dir(Path({str(exported.bundle_dir)!r}), [signing.parse_public_key({home.public_key()!r})])
        assert b.manifest.version >= 1
        print(",".join(sorted(m for m in sys.modules if m.split(".")[0] == "cryptography")))
    """)
    assert loaded == ""
