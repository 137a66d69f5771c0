"""nanopet-tune compare-losses on tiny data: one row per variant and seed, metrics recomputed from the
saved models, huber deltas by the documented rule, reduction and weights variants, the report, and
the loss search space that starts from a study's best."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from retrain_support import TINY_DATA, tiny_study
from tune_support import REPO, TINY_MODEL

from nanopet.checkpoints import load_checkpoint
from nanopet.compare_losses import HUBER_FRACTION, compare_losses, losses_space, parse_weights
from nanopet.errors import InputError
from nanopet.options import resolve_options
from nanopet.runs import evaluate_checkpoint, shared_data
from nanopet.tune import load_search_space, run
from nanopet.tune.storage import open_storage


def options_file(folder, **extra):
    options = {"seed": 0, "device": "cpu", "training_set": TINY_DATA, "validation_set": 0.25, "test_set": 0.25,
               "architecture": {"model": dict(TINY_MODEL),
                                "training": {"num_epochs": 2, "batch_size": 6, "learning_rate": 3.0e-3, "checkpoint_interval": 1}},
               **extra}
    path = folder / "tiny-options.yaml"
    path.write_text(yaml.safe_dump(options))
    return path


def test_one_row_per_type_and_seed_with_metrics_of_the_saved_models(tmp_path):
    lines = []
    result = compare_losses(str(options_file(tmp_path)), seeds=2, reports=tmp_path / "reports", runs=tmp_path / "runs",
                            out=lines.append)
    with open(tmp_path / "reports" / "tiny-options" / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["type"], r["seed"]) for r in rows) == sorted((t, s) for t in ("mse", "mae", "huber") for s in ("0", "1"))
    data = shared_data([load_checkpoint(rows[0]["folder"] + "/model.ckpt")["options"]])
    for row in rows:
        checkpoint = load_checkpoint(row["folder"] + "/model.ckpt")
        assert checkpoint["options"]["architecture"]["training"]["loss"]["type"] == row["type"]
        assert checkpoint["options"]["seed"] == int(row["seed"])
        recomputed = evaluate_checkpoint(row["folder"] + "/model.ckpt", data)
        assert set(recomputed) == {k for k in row if k.startswith("test_")}
        assert recomputed == {k: float(row[k]) for k in recomputed}  # same data, same code: exactly
    # huber deltas by the rule: a tenth of the RMS force component of the training set
    forces = np.concatenate([s.forces.ravel() for s in data.train.structures])
    delta, how = result.deltas["forces"]
    assert delta == pytest.approx(HUBER_FRACTION * np.sqrt(np.mean(forces**2))) and how.startswith("rule")
    huber = load_checkpoint(next(r for r in rows if r["type"] == "huber")["folder"] + "/model.ckpt")["options"]
    assert huber["architecture"]["training"]["loss"]["deltas"]["forces"] == pytest.approx(delta)
    # winners per metric, summary with spread, and the page with its offline plotly
    metrics = {k for k in rows[0] if k.startswith("test_")}
    assert {w["metric"] for w in result.winners} == metrics
    for w in result.winners:
        means = {s["variant"]: s["mean"] for s in result.summary if s["metric"] == w["metric"]}
        assert w["winner"] == min(means, key=means.get)
    forces_mse = [float(r["test_forces_rmse"]) for r in rows if r["type"] == "mse"]
    summary = next(s for s in result.summary if s["variant"] == "mse" and s["metric"] == "test_forces_rmse")
    assert (summary["mean"], summary["std"]) == pytest.approx((np.mean(forces_mse), np.std(forces_mse, ddof=1)))
    page = (tmp_path / "reports" / "tiny-options" / "losses.html").read_text()
    assert "Winners" in page and "Learning curves" in page and 'src="plotly.min.js"' in page
    assert (tmp_path / "reports" / "tiny-options" / "plotly.min.js").is_file()
    assert (tmp_path / "reports" / "tiny-options" / "losses_summary.csv").is_file()
    assert any(line.startswith("report:") for line in lines)


def test_reduction_and_weights_variants_and_deltas_from_the_yaml(tmp_path):
    section = {"types": ["huber"], "reductions": ["mean", "sum"], "weights": [{"forces": 1.0}, {"forces": 10.0}],
               "deltas": {"energy": 0.02}, "seeds": 1, "epochs": 1}
    result = compare_losses(str(options_file(tmp_path, compare_losses=section)), reports=tmp_path / "reports",
                            runs=tmp_path / "runs", out=lambda m: None)
    assert [r["variant"] for r in result.runs] == ["mean, w(forces=1)", "mean, w(forces=10)", "sum, w(forces=1)", "sum, w(forces=10)"]
    for row in result.runs:
        loss = load_checkpoint(row["folder"] + "/model.ckpt")["options"]["architecture"]["training"]["loss"]
        assert (loss["type"], loss["reduction"]) == ("huber", row["reduction"])
        assert loss["weights"] == json.loads(row["weights"]) and loss["weights"]["forces"] in (1.0, 10.0)
        assert loss["deltas"]["energy"] == 0.02 and loss["deltas"]["forces"] == pytest.approx(result.deltas["forces"][0])
        assert row["epochs"] == 1
    assert result.deltas["energy"] == (0.02, "given")
    # the command line wins per axis: only the types axis changes here
    again = compare_losses(str(options_file(tmp_path, compare_losses=section)), types=["mse"], reports=tmp_path / "reports",
                           runs=tmp_path / "runs2", out=lambda m: None)
    assert {r["type"] for r in again.runs} == {"mse"} and len(again.runs) == 4


def test_bad_variants_are_one_line_errors(tmp_path):
    path = options_file(tmp_path)
    with pytest.raises(InputError, match=r"--types: must be mse, mae or huber, got 'hubber' \(did you mean 'huber'\?\)"):
        compare_losses(str(path), types=["hubber"], out=lambda m: None)
    with pytest.raises(InputError, match=r"--weights.force: unknown loss term \(did you mean 'forces'\?\)"):
        parse_weights("force=10")
    with pytest.raises(InputError, match=r"compare_losses.seed: unknown key \(did you mean 'seeds'\?\)"):
        compare_losses(str(options_file(tmp_path, compare_losses={"seed": 2})), out=lambda m: None)
    with pytest.raises(InputError, match=r"study 'nope': not found"):
        compare_losses("nope", directory=tmp_path / "studies", out=lambda m: None)


def test_loss_search_space_starts_from_a_study_best(tmp_path):
    search, _ = tiny_study(tmp_path)
    raw = losses_space("tiny", REPO / "search_spaces" / "losses.yaml", directory=tmp_path / "studies")
    template = yaml.safe_load((REPO / "search_spaces" / "losses.yaml").read_text())
    assert raw["parameters"] == template["parameters"] and raw["study"]["name"] == "tiny-losses"
    best = resolve_options(yaml.safe_load(search.best_options.read_text()))
    assert raw["architecture"]["model"] == best["architecture"]["model"]
    assert raw["architecture"]["training"]["learning_rate"] == best["architecture"]["training"]["learning_rate"]
    raw["study"].update(directory=str(tmp_path / "studies"), sampler={"type": "random", "seed": 0})
    raw["budget"].update(n_trials=2)
    result = run(load_search_space(raw), threads=1, out=lambda m: None)
    assert result.status == "completed"
    import optuna

    first = optuna.load_study(study_name="tiny-losses", storage=open_storage(str(tmp_path / "studies" / "tiny-losses" / "journal.log"))).trials[0]
    assert first.user_attrs["role"] == "defaults" and first.params["loss.type"] == "mse"
    options = json.loads((tmp_path / "studies" / "tiny-losses" / "trials" / "0" / "trial.json").read_text())["options"]
    assert options["architecture"]["model"] == load_checkpoint(search.best_dir / "model.ckpt")["options"]["architecture"]["model"]
