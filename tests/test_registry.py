"""Model registry: lineage recorded for every trained version, models list/show/diff, champions per group."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cloud_hub import db, training
from cloud_hub.cli import main
from cloud_hub.data import from_csv
from cloud_hub.export import Quantization, export
from cloud_hub.home import HubHome
from cloud_hub.registry import champion, lineage
from tests.conftest import simulated_series, write_csv


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory: pytest.TempPathFactory) -> HubHome:
    """v1 from a CSV (exported int8), v2 a child of v1 for group "north" with other settings."""
    root = tmp_path_factory.mktemp("registry")
    home = HubHome(root / "hub")
    home.init()
    ts, values = simulated_series(40)
    csv = write_csv(root / "normal.csv", ts, values)
    cfg = replace(home.config().training, epochs=1, window=16, hidden=16, latent=4, lstm_units=8)
    training.train(home, from_csv(csv), cfg)
    export(home, 1, Quantization.INT8)
    training.train(home, from_csv(csv), replace(cfg, hidden=24, alpha=0.7), parent=1, group="north")
    return home


@pytest.mark.integration
def test_lineage_of_each_version(registry_home: HubHome) -> None:
    ts, _ = simulated_series(40)
    with registry_home.sessions()() as s:
        v1, v2 = lineage.version(s, 1), lineage.version(s, 2)
        assert v1.lineage is not None and v2.lineage is not None
        d = v1.lineage.data
        assert d["source"].startswith("csv:") and d["rows"] == len(ts)
        assert d["start_ts"] == pytest.approx(ts[0]) and d["end_ts"] == pytest.approx(ts[-1], abs=1e-3)
        assert len(d["feature_mean"]) == len(d["features"]) == len(d["feature_std"])
        assert v1.lineage.settings["model"] == "ae-lstm" and v1.lineage.settings["hidden"] == 16
        hold = v1.lineage.metrics["holdout"]
        assert hold["windows"] > 0 and 0 <= hold["flag_rate"] <= 1 and hold["threshold"] > 0
        assert [b.quantization for b in v1.bundles] == ["int8"] and v2.bundles == []
        assert v2.lineage.parent_version == 1 and v2.lineage.device_group == "north"
        changed = {k for k, _, _ in lineage.diff(v1, v2)}
        assert {"settings.hidden", "settings.alpha", "parent_version", "group", "version"} <= changed
        assert "settings.window" not in changed and "data.rows" not in changed
        assert [v.version.version for v in lineage.versions(s, group="north")] == [2]
        with pytest.raises(lineage.UnknownVersion, match="model version 9 does not exist"):
            lineage.version(s, 9)


def test_champion_per_group_with_fallbacks(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "copy")  # its own database: promotions here do not leak into other tests
    home.init()
    with home.sessions()() as s:
        assert champion.champion(s, "north") is None
        s.add_all([db.ModelVersion(version=v, name="ae-lstm", source="t", artifacts_dir="-") for v in (1, 2, 3)])
        s.commit()
        assert champion.champion(s, "north") == champion.CurrentChampion(3, champion.ChampionSource.NEWEST)
        champion.promote(s, 1)
        assert champion.champion(s, "north") == champion.CurrentChampion(1, champion.ChampionSource.FLEET)
        d = champion.promote(s, 2, "north", "field test")
        assert (d.champion_version, d.challenger_version, d.trigger, d.outcome) == (
            1, 2, db.RetrainTrigger.PROMOTE, db.RetrainOutcome.PROMOTED)
        assert champion.champion(s, "north") == champion.CurrentChampion(2, champion.ChampionSource.GROUP)
        assert champion.champion(s, "") == champion.CurrentChampion(1, champion.ChampionSource.GROUP)
        with pytest.raises(lineage.UnknownVersion):
            champion.promote(s, 7, "north")
        assert champion.champion(s, "north").version == 2  # type: ignore[union-attr]


@pytest.mark.integration
def test_models_cli(registry_home: HubHome) -> None:
    runner = CliRunner()
    h = ["--home", str(registry_home.path)]
    out = runner.invoke(main, [*h, "models"])  # the catalogue, as before
    assert out.exit_code == 0 and "ae-lstm" in out.output and "isolation-forest" in out.output, out.output
    out = runner.invoke(main, [*h, "models", "list", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["version"] for r in rows] == [2, 1] and rows[1]["bundles.int8"]["size"] > 0
    out = runner.invoke(main, [*h, "models", "list"])
    assert out.exit_code == 0 and "v2" in out.output and "north" in out.output, out.output
    out = runner.invoke(main, [*h, "models", "show", "2", "--json"])
    shown = json.loads(out.output)
    assert shown["parent_version"] == 1 and shown["settings.hidden"] == 24 and shown["data.rows"] > 0
    out = runner.invoke(main, [*h, "models", "diff", "1", "2"])
    assert out.exit_code == 0 and "settings.hidden" in out.output and "settings.window" not in out.output
    out = runner.invoke(main, [*h, "models", "show", "42"])
    assert out.exit_code == 1 and "model version 42 does not exist" in out.output
    out = runner.invoke(main, [*h, "models", "promote", "2", "--group", "north"])
    assert out.exit_code == 0 and "v2 is the champion of north" in out.output, out.output
    out = runner.invoke(main, [*h, "models", "list", "--json"])
    assert json.loads(out.output.splitlines()[0])["champion_of"] == ["north"]
    out = runner.invoke(main, [*h, "models", "promote", "1", "--rollout"])  # fleet default, staged rollout
    assert out.exit_code == 0 and "v1 is the champion of (fleet)" in out.output, out.output
    with registry_home.sessions()() as s:
        d = s.scalars(select(db.RetrainDecision).order_by(db.RetrainDecision.id.desc())).first()
        assert d is not None and d.rollout_id is not None
        rollout = s.get(db.Rollout, d.rollout_id)
        assert rollout is not None and rollout.version == 1 and rollout.phases == [25, 100]


@pytest.mark.integration
def test_label_lifted_threshold_survives_export(tmp_path: Path) -> None:
    """evaluate.with_threshold scales the validation-quantile margin too, so the exported bundle (which
    re-learns its threshold on the int8 model's own scores) keeps the label calibration's lift."""
    from cloud_hub.models import load_detector
    from cloud_hub.registry import evaluate

    home = HubHome(tmp_path / "hub")
    home.init()
    ts, values = simulated_series(40)
    cfg = replace(home.config().training, epochs=1, window=16, hidden=16, latent=4, lstm_units=8)
    trained = training.train(home, from_csv(write_csv(tmp_path / "n.csv", ts, values)), cfg)
    before = export(home, trained.version, Quantization.INT8).decision.score_threshold
    det = load_detector(trained.artifacts)
    evaluate.with_threshold(det, det.threshold * 2)
    det.save(trained.artifacts)
    after = export(home, trained.version, Quantization.INT8).decision.score_threshold
    assert after == pytest.approx(2 * before, rel=1e-3)
