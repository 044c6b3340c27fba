"""`cloud-hub evaluate`, `cloud-hub nab`, `train --label-column` and `edge-agent replay`, from the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud_hub.cli import main
from tests.conftest import REPO, simulated_series, write_csv

pytestmark = pytest.mark.integration
DATASETS = REPO.parent / "shared" / "datasets"
FAST = ["--set", "epochs=3", "--set", "hidden=16", "--set", "latent=4", "--set", "trees=20"]


def labelled_table(path: Path, n: int = 900, seed: int = 0) -> Path:
    """Flow-like rows: heavy-tailed counts, some cells missing; attacks send more bytes on few ports."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    x = np.column_stack([rng.lognormal(5 + 3 * y, 0.6), rng.lognormal(3, 1, n), rng.integers(0, 2, n),
                         rng.normal(0, 1, n) + 3 * y, rng.exponential(1, n)])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["bytes", "pkts", "proto_tcp", "rate", "dur", "label"])
        for i in range(n):
            cells = [f"{v:.5g}" for v in x[i]]
            if i % 17 == 0:
                cells[1] = ""  # missing values are imputed, not dropped
            w.writerow([*cells, y[i]])
    return path


def test_evaluate_writes_metrics_report_and_plots(tmp_path: Path) -> None:
    data = labelled_table(tmp_path / "flows.csv")
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", "--model", "random-forest", "--model", "deep-ae", "--data", str(data),
                                  "--out", str(out), "--folds", "3", *FAST])
    assert r.exit_code == 0, r.output
    for name in ("random-forest", "deep-ae"):
        m = json.loads((out / name / "metrics.json").read_text())
        for key in ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc", "pr_auc", "fp", "fn",
                    "ms_per_batch"):
            assert m[key] is not None, key
        assert m["test_rows"] == 270 and m["fp"] + m["fn"] + m["tp"] + m["tn"] == 270
        assert m["cross_validation"]["folds"] == 3 and "f1" in m["cross_validation"]["summary"]
        for f in ("report.md", "roc.png", "pr.png", "timeline.png", "scores.csv"):
            assert (out / name / f).stat().st_size > 0
    rf = json.loads((out / "random-forest" / "metrics.json").read_text())
    assert rf["f1"] > 0.9 and rf["int8"] is None and "no TFLite form" in rf["export_note"]
    ae = json.loads((out / "deep-ae" / "metrics.json").read_text())
    assert ae["mode"] == "unsupervised" and ae["int8"]["tflite_bytes"] > 0
    assert ae["quantization_f1_delta"] == pytest.approx(ae["int8"]["f1"] - ae["f1"])
    # Unsupervised: the normal-only threshold and one placed with a few labelled attacks, same test rows.
    semi = ae["semi_supervised"]
    assert 0 < semi["labelled_attacks"] <= 50 and semi["fp"] + semi["fn"] + semi["tp"] + semi["tn"] == 270
    assert semi["threshold"] != ae["threshold"] and "semi_supervised" not in rf
    assert "semi-supervised threshold" in (out / "deep-ae" / "report.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "random-forest" in summary and "deep-ae" in summary and (out / "roc.png").exists()


def test_score_on_validation_never_scores_the_test_rows(tmp_path: Path) -> None:
    """Configurations are compared on a validation part of the training split; the test rows, split off
    first with the same seed, are neither trained on nor scored."""
    from cloud_hub.evaluation.evaluate import split

    data = labelled_table(tmp_path / "flows.csv")
    out = tmp_path / "val"
    r = CliRunner().invoke(main, ["evaluate", "--model", "random-forest", "--data", str(data), "--score-on",
                                  "validation", "-q", "none", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["scored_on"] == "validation" and m["test_rows"] == 189 and m["f1"] > 0.9  # 0.3 of the 630 training rows
    scored = {int(line.split(",")[0]) for line in (out / "scores.csv").read_text().splitlines()[1:]}
    labels = np.array([int(line.rsplit(",", 1)[1]) for line in data.read_text().splitlines()[1:]])
    train, test = split(labels, 0.3, 0)
    assert len(scored) == 189 and scored <= set(train.tolist()) and not scored & set(test.tolist())
    assert "scored on the validation rows" in (out / "report.md").read_text()


def test_evaluate_refuses_bad_input(tmp_path: Path) -> None:
    data = labelled_table(tmp_path / "flows.csv", n=60)
    r = CliRunner().invoke(main, ["evaluate", "--model", "svm", "--data", str(data), "--label-column", "nope",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "no 'nope' column" in r.output
    r = CliRunner().invoke(main, ["evaluate", "--model", "svm", "--data", str(data), "--out", str(tmp_path / "o"),
                                  "--set", "no_such_key=1"])
    assert r.exit_code != 0 and "no_such_key" in r.output


def test_train_matches_model_and_labels(tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(tmp_path / "hub")]
    assert runner.invoke(main, [*home, "init"]).exit_code == 0
    ts, values = simulated_series(40)
    plain = write_csv(tmp_path / "plain.csv", ts, values)
    r = runner.invoke(main, [*home, "train", "--model", "svm", "--data", str(plain), "--window", "16"])
    assert r.exit_code != 0 and "svm is a supervised model: it needs labelled data" in r.output
    labels = np.zeros(len(ts), int)
    labels[300:340] = 1
    values[300:340, 0] += 5.0
    lab = tmp_path / "labelled.csv"
    with open(lab, "w") as fh:
        fh.write("timestamp,temperature,humidity,power,vibration,label\n")
        for t, v, y in zip(ts, values, labels, strict=True):
            fh.write(f"{t}," + ",".join(f"{x:.5f}" for x in v) + f",{y}\n")
    r = runner.invoke(main, [*home, "train", "--model", "random-forest", "--data", str(lab), "--label-column",
                             "label", "--window", "16", "--set", "trees=10"])
    assert r.exit_code == 0 and "(random-forest, supervised)" in r.output, r.output
    r = runner.invoke(main, [*home, "train", "--model", "deep-ae", "--data", str(lab), "--label-column", "label",
                             "--window", "16", "--epochs", "1"])
    assert r.exit_code == 0 and "(deep-ae, unsupervised)" in r.output, r.output
    r = runner.invoke(main, [*home, "export", "--model", "1"])
    assert r.exit_code != 0 and "no TFLite form" in r.output


def test_edge_replay_cli_matches_in_process(tmp_path: Path, trained_home) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.replay import load_bundle, replay
    from shared.csvdata import read_series

    home, exported = trained_home
    ts, values = simulated_series(30, seed=5)
    values[400:405, 2] += 3.0
    data = write_csv(tmp_path / "rec.csv", ts, values)
    out = tmp_path / "scores.csv"
    cmd = [sys.executable, "-m", "edge_agent.cli", "replay", "--bundle", str(exported.archive), "--data", str(data),
           "--out", str(out)]
    p = subprocess.run([*cmd, "--trusted-key", home.public_key()], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == len(ts) and rows[0]["score"] == "" and rows[-1]["score"] != ""
    r = replay(load_bundle(exported.archive, [home.public_key()]), read_series(data))
    np.testing.assert_allclose([float(x["score"]) for x in rows[15:]], r.score[15:], rtol=1e-5)
    assert int(r.anomalous[400:420].sum()) >= 1 and [x["top_feature"] for x in rows][402] == "power"
    from shared.signing import generate_private_key, public_key_b64

    other = public_key_b64(generate_private_key())
    p = subprocess.run([*cmd, "--trusted-key", other], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "bundle refused" in p.stderr


@pytest.mark.skipif(not (DATASETS / "netflow").exists(), reason="datasets not present (../shared/datasets)")
def test_reduced_benchmark_on_real_netflow(tmp_path: Path) -> None:
    """CI's reduced version of `make bench-models` on real data: 3000 IoT-23 rows, few epochs."""
    sample = tmp_path / "iot23_small.csv"
    lines = (DATASETS / "netflow" / "iot23_sample.csv").read_text().splitlines()
    rng = np.random.default_rng(0)
    keep = sorted(rng.choice(np.arange(1, len(lines)), 3000, replace=False))
    sample.write_text("\n".join([lines[0], *(lines[i] for i in keep)]) + "\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", "--model", "vae-dnn", "--model", "isolation-forest", "--data",
                                  str(sample), "--out", str(out), "--set", "epochs=5"])
    assert r.exit_code == 0, r.output
    vae = json.loads((out / "vae-dnn" / "metrics.json").read_text())
    assert vae["f1"] > 0.93 and abs(vae["quantization_f1_delta"]) <= 0.02


@pytest.mark.skipif(not (DATASETS / "nab").exists(), reason="NAB corpus not present (../shared/datasets/nab)")
def test_reduced_nab_through_the_edge_path(tmp_path: Path) -> None:
    out = tmp_path / "nab"
    r = CliRunner().invoke(main, ["nab", "--data", str(DATASETS / "nab"), "--model", "ae-lstm", "--out", str(out),
                                  "--files", "art_daily_jumpsup", "--files", "art_daily_no_noise",
                                  "--set", "epochs=3"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "nab_scores.json").read_text())
    for key in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        assert -1000 < s[key] <= 100
    assert s["standard"] > 0  # one clear jump: better than never detecting
    res = out / "edgesentryAeLstm" / "artificialWithAnomaly" / "edgesentryAeLstm_art_daily_jumpsup.csv"
    rows = list(csv.DictReader(res.read_text().splitlines()))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label", "is_anomaly"] and len(rows) == 4032
    assert rows[0]["timestamp"] == "2014-04-01 00:00:00" and {r["label"] for r in rows} == {"0", "1"}
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in rows)
    assert len(list((out / "bundles").glob("*.tar.gz"))) == 2 and (out / "report.md").exists()
    # The same bundles replayed again (verified with the key the run kept) decide exactly as before...
    again = tmp_path / "again"
    files = ["--files", "art_daily_jumpsup", "--files", "art_daily_no_noise"]
    r = CliRunner().invoke(main, ["nab", "--data", str(DATASETS / "nab"), "--out", str(again), *files,
                                  "--reuse-bundles", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((again / "nab_scores.json").read_text())["own_decision"] == s["own_decision"]
    again_rows = list(csv.DictReader((again / res.relative_to(out)).read_text().splitlines()))
    assert [x["is_anomaly"] for x in again_rows] == [x["is_anomaly"] for x in rows]
    # ...and other post-processing needs no training; a tampered bundle is refused.
    r = CliRunner().invoke(main, ["nab", "--data", str(DATASETS / "nab"), "--out", str(tmp_path / "off"), *files,
                                  "--reuse-bundles", str(out), "--onset-window", "0", "--rearm", "0"])
    assert r.exit_code == 0, r.output
    flags_off = [x["is_anomaly"] for x in csv.DictReader((tmp_path / "off" / res.relative_to(out)).read_text()
                                                          .splitlines())]
    assert flags_off.count("1") >= [x["is_anomaly"] for x in rows].count("1")  # no onset or re-arm filter: more alarms
    # A file the previous run has no bundle for (its model was not deployable) stays silent, and says so;
    # a folder without any bundle is not a previous run.
    quiet = tmp_path / "quiet"
    shutil.copytree(out / "bundles", quiet / "bundles")
    next((quiet / "bundles").glob("*no_noise.tar.gz")).unlink()
    r = CliRunner().invoke(main, ["nab", "--data", str(DATASETS / "nab"), "--out", str(tmp_path / "q"), *files,
                                  "--reuse-bundles", str(quiet)])
    assert r.exit_code == 0, r.output
    notes = {f["name"]: f["note"] for f in json.loads((tmp_path / "q" / "nab_scores.json").read_text())["files"]}
    assert notes["artificialNoAnomaly/art_daily_no_noise.csv"].startswith("no model") and \
        not notes["artificialWithAnomaly/art_daily_jumpsup.csv"]
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["nab", "--data", str(DATASETS / "nab"), "--out", str(tmp_path / "e"), *files,
                                  "--reuse-bundles", str(tmp_path / "empty")])
    assert r.exit_code != 0 and "holds no bundles" in r.output
    pub = next((out / "bundles").glob("*jumpsup.pub"))
    from shared.signing import generate_private_key, public_key_b64

    pub.write_text(public_key_b64(generate_private_key()))
    r = CliRunner().invoke(main, ["nab", "--data", str(DATASETS / "nab"), "--out", str(tmp_path / "bad"), *files,
                                  "--reuse-bundles", str(out)])
    assert r.exit_code != 0 and "signature" in r.output.lower()
