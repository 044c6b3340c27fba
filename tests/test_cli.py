"""The operator's path through the hub CLI: init → train from CSV → export (with a profile budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud_hub.cli import main
from tests.conftest import REPO, simulated_series, write_csv

pytestmark = pytest.mark.integration


def test_init_train_export_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(tmp_path / "hub")]
    out = runner.invoke(main, [*home, "init"])
    assert out.exit_code == 0 and "public key" in out.output
    assert runner.invoke(main, [*home, "init"]).output.startswith("Already initialised")

    ts, values = simulated_series(60)
    csv = write_csv(tmp_path / "normal.csv", ts, values)
    out = runner.invoke(main, [*home, "train", "--data", str(csv), "--epochs", "2", "--window", "16",
                               "--features", "temperature,humidity"])
    assert out.exit_code == 0, out.output
    assert "Model v1 (ae-lstm, unsupervised) trained" in out.output

    out = runner.invoke(main, [*home, "export", "--model", "1", "-q", "int8",
                               "--profile", str(REPO / "firmware_profiles" / "rpi3-32.toml")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, [*home, "export", "--model", "1", "--profile", "rpi4-64"])  # by name
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # rich wraps long lines
    assert "Profile rpi4-64" in text and "1 interpreter thread(s)" in text
    threads = tmp_path / "threads.toml"
    threads.write_text('name = "threads"\ndescription = "d"\narch = "x86_64"\nnum_threads = 3\n'
                       'quantization = "float16"\n')
    out = runner.invoke(main, [*home, "export", "--model", "1", "--profile", str(threads), "-q", "int8"])
    text = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert "3 interpreter thread(s)" in text and "-q int8 given: overrides profile threads's float16" in text
    assert not (tmp_path / "hub" / "bundles" / "ae-lstm-v1-float16").exists()
    manifest = json.loads((tmp_path / "hub" / "bundles" / "ae-lstm-v1-int8" / "manifest.json").read_text())
    assert manifest["preprocessing"]["features"] == ["temperature", "humidity"]
    assert manifest["quantization"]["mode"] == "int8" and manifest["quantization"]["agreement"]["windows"] > 0

    # The agents' likelihood post-processing is set per bundle (NAB's configuration, on any model).
    out = runner.invoke(main, [*home, "export", "--model", "1", "--decide-on", "likelihood", "--likelihood",
                               "rearm=500", "--likelihood", "deviation_window=144", "--likelihood",
                               "spatial_tolerance=0.05"])
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "hub" / "bundles" / "ae-lstm-v1-int8" / "manifest.json").read_text())
    assert (manifest["likelihood"]["rearm"], manifest["likelihood"]["deviation_window"],
            manifest["likelihood"]["spatial_tolerance"]) == (500, 144, 0.05)
    for bad, says in (("votes=3", "KEY=VALUE with KEY one of"), ("rearm=soon", "rearm needs a number"),
                      ("deviation_window=1", "deviation_window 0 (off) or >= 2")):
        out = runner.invoke(main, [*home, "export", "--model", "1", "--likelihood", bad])
        assert out.exit_code != 0 and says in " ".join(out.output.split()), out.output

    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\ndescription = "d"\narch = "armv7l"\nmax_model_bytes = 1000\n')
    out = runner.invoke(main, [*home, "export", "--model", "1", "--profile", str(tiny)])
    assert out.exit_code != 0 and "exceeds profile tiny's budget" in out.output
    f16 = tmp_path / "f16.toml"
    f16.write_text('name = "f16"\ndescription = "d"\narch = "x86_64"\nquantization = "float16"\n'
                   "max_model_bytes = 1000\n")
    out = runner.invoke(main, [*home, "export", "--model", "1", "--profile", str(f16)])
    assert out.exit_code != 0 and "float16 model exceeds profile f16's budget" in out.output
    assert not (tmp_path / "hub" / "bundles" / "ae-lstm-v1-float16").exists()  # refused before writing
    out = runner.invoke(main, [*home, "export", "--model", "1", "--profile", "pi-nine"])
    assert out.exit_code != 0 and "no firmware profile named 'pi-nine'" in out.output


def test_clear_errors_for_operator_mistakes(tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(tmp_path / "nohub")]
    out = runner.invoke(main, [*home, "train", "--synced"])
    assert out.exit_code != 0 and "cloud-hub init" in out.output
    runner.invoke(main, ["--home", str(tmp_path / "hub"), "init"])
    out = runner.invoke(main, ["--home", str(tmp_path / "hub"), "train", "--synced"])
    assert out.exit_code != 0 and "no synced data yet" in out.output
    out = runner.invoke(main, ["--home", str(tmp_path / "hub"), "export", "--model", "7"])
    assert out.exit_code != 0 and "does not exist" in out.output
    bad = tmp_path / "bad.csv"
    bad.write_text("time,a\n1,2\n")
    out = runner.invoke(main, ["--home", str(tmp_path / "hub"), "train", "--data", str(bad)])
    assert out.exit_code != 0 and "no 'timestamp' column" in out.output
