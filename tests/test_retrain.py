"""nanopet-tune retrain on a tiny real study: the stored best hypers exactly, a loadable calculator,
an exact resume, the comparison with the defaults, and one-line errors."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import optuna
import pytest
import torch
import yaml
from retrain_support import tiny_study

from nanopet.calculator import NanoPETCalculator
from nanopet.checkpoints import load_checkpoint, model_from_checkpoint
from nanopet.cli.retrain import COMMANDS, add_parsers
from nanopet.data import generate_emt_alloy
from nanopet.errors import InputError
from nanopet.options import read_yaml, resolve_options
from nanopet.retrain import choose_trial, open_study, retrain
from nanopet.runs import evaluate_checkpoint, shared_data
from nanopet.tune.storage import trial_options
from nanopet.tune.storage import open_storage


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrain")
    result, space_file = tiny_study(folder)
    return folder, result, space_file


def quiet(**kwargs):
    lines = []
    return lines, dict(out=lines.append, **kwargs)


def without(options: dict, *keys) -> dict:
    options = resolve_options(options)
    for key in keys:
        options["architecture"]["training"].pop(key)
    return options


def test_retrain_reproduces_the_best_trial_and_gives_a_calculator(study):
    folder, search, _ = study
    lines, kwargs = quiet(directory=folder / "studies", equal_time=False)
    result = retrain("tiny", epochs=2, seeds=2, **kwargs)
    best = folder / "studies" / "tiny" / "best"
    assert result.trial == search.best_trial and result.folder == best
    # the hypers are best.yaml's exactly (same epochs as the search here), and trainable by `nanopet-tune train`
    assert resolve_options(read_yaml(best / "hypers.yaml")) == resolve_options(read_yaml(search.best_options))
    # seed 0 is the search's own run again: the same validation metrics at the best epoch, bit for bit
    found = open_study("tiny", folder / "studies")
    trial = choose_trial(found).trial
    first = next(r for r in result.runs if r["hypers"] == "best" and r["seed"] == 0)
    assert {k: first[k] for k in trial.user_attrs["metrics"] if k.startswith("val_") and k != "val_loss"} == \
        {k: v for k, v in trial.user_attrs["metrics"].items() if k.startswith("val_") and k != "val_loss"}
    # one run per hypers and seed; the defaults are the search's defaults trial
    assert [(r["hypers"], r["seed"]) for r in result.runs] == [("best", 0), ("best", 1), ("defaults", 0), ("defaults", 1)]
    defaults_trial = optuna.load_study(study_name="tiny", storage=open_storage(str(found.url))).trials[0]
    assert resolve_options(read_yaml(best / "defaults" / "hypers.yaml"))["architecture"]["training"]["learning_rate"] == \
        pytest.approx(defaults_trial.params["learning_rate"])
    for row in result.runs:
        assert (best.joinpath(*([] if row["hypers"] == "best" else ["defaults"])) / f"seed{row['seed']}" / "model.ckpt").is_file()
    with open(best / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    # mean and spread over seeds, and the gain over the defaults
    forces = next(r for r in result.summary if r["metric"] == "test_forces_rmse")
    values = [r["test_forces_rmse"] for r in result.runs if r["hypers"] == "best"]
    defaults = [r["test_forces_rmse"] for r in result.runs if r["hypers"] == "defaults"]
    assert forces["best_mean"] == pytest.approx(np.mean(values)) and forces["best_std"] == pytest.approx(np.std(values, ddof=1))
    assert forces["gain"] == pytest.approx(1 - np.mean(values) / np.mean(defaults))
    assert {r["metric"] for r in result.summary} >= {"test_energy_rmse", "test_forces_mae", "test_stress_rmse"}
    assert any(line.startswith("gain over the defaults") for line in lines)
    # the ASE model: the seed with the lowest validation loss, energies, forces and stress from any Atoms
    chosen = min((r for r in result.runs if r["hypers"] == "best"), key=lambda r: r["best_val_loss"])
    calculator = NanoPETCalculator.from_checkpoint(result.model)
    atoms = generate_emt_alloy(1, seed=5)[0]
    atoms.calc = calculator
    energy, forces_, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert np.isfinite(energy) and forces_.shape == (len(atoms), 3) and stress.shape == (6,)
    reference = NanoPETCalculator(model_from_checkpoint(best / f"seed{chosen['seed']}" / "model.ckpt"))
    assert reference.get_potential_energy(atoms.copy()) == pytest.approx(energy, rel=1e-6)
    # and exported beside it, for metatomic engines: the same energy through metatomic's ASE calculator
    from metatomic_ase import MetatomicCalculator

    assert MetatomicCalculator(str(best / "model.pt")).get_potential_energy(atoms.copy()) == pytest.approx(energy, rel=1e-5)
    # the test metrics are those of the saved models
    data = shared_data([load_checkpoint(result.model)["options"]])
    recomputed = evaluate_checkpoint(best / "seed1" / "model.ckpt", data)
    assert recomputed == {k: v for k, v in result.runs[1].items() if k.startswith("test_")}
    # a second call reuses every finished run
    again_lines, kwargs = quiet(directory=folder / "studies", equal_time=False)
    again = retrain("tiny", epochs=2, seeds=2, **kwargs)
    assert sum("reused" in line for line in again_lines) == 4 and again.summary == result.summary


def test_resumed_retrain_equals_an_uninterrupted_one(study, tmp_path):
    folder, _, _ = study
    _, kwargs = quiet(directory=folder / "studies", epochs=3, seeds=2, equal_time=False)
    straight = retrain("tiny", output_dir=tmp_path / "straight", **kwargs)
    calls = []

    def interrupt(epoch, metrics):
        calls.append(epoch)
        if len(calls) == 5:  # seed 1 of the best hypers, after its epoch 1 (checkpoint model_1 written)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain("tiny", output_dir=tmp_path / "resumed", on_epoch=interrupt, **kwargs)
    assert not (tmp_path / "resumed" / "seed1" / "model.ckpt").exists()
    resumed = retrain("tiny", output_dir=tmp_path / "resumed", **kwargs)
    seed1 = next(r for r in resumed.runs if r["hypers"] == "best" and r["seed"] == 1)
    assert seed1["resumed_from"].endswith("model_1.ckpt")
    skip = ("folder", "resumed_from", "train_seconds", "epoch_seconds")
    assert [{k: v for k, v in r.items() if k not in skip} for r in resumed.runs] == \
        [{k: v for k, v in r.items() if k not in skip} for r in straight.runs]
    a = load_checkpoint(tmp_path / "straight" / "seed1" / "model.ckpt")
    b = load_checkpoint(tmp_path / "resumed" / "seed1" / "model.ckpt")
    for key in ("model_state_dict", "best_model_state_dict"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    with open(tmp_path / "resumed" / "seed1" / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]  # no duplicated rows after the resume


def test_options_come_from_the_trial_folder_when_the_search_file_is_gone(study):
    folder, _, _ = study
    found = open_study("tiny", folder / "studies")
    chosen = choose_trial(found)
    found.space = None  # as if the search-space file had been moved or edited
    stored, how = trial_options(found, chosen.study, chosen.trial)
    assert how == "the trial's stored options"  # the storage alone is enough
    assert stored == chosen.options
    chosen.trial.user_attrs.pop("options")  # a trial from a driver that did not store them
    options, how = trial_options(found, chosen.study, chosen.trial)
    assert how.endswith("trial.json")
    assert without(options, "log_interval") == without(chosen.options, "log_interval")


def test_staged_study_best_over_all_stages_and_stage_trial_names(tmp_path):
    result, _ = tiny_study(tmp_path, name="staged", strategy={"type": "staged", "importance": ["cutoff", "learning_rate"]})
    found = open_study("staged", tmp_path / "studies")
    assert [s.study_name for s in found.studies] == ["staged.stage1-cutoff", "staged.stage2-learning_rate"]
    best = choose_trial(found)
    assert best.trial.values[0] == result.best_value
    assert without(best.options, "num_epochs", "scheduler_epochs") == \
        without(read_yaml(result.best_options), "num_epochs", "scheduler_epochs")  # best.yaml anneals in its own epochs
    assert choose_trial(found, "stage1-0").label == "staged.stage1-cutoff#0"
    assert choose_trial(found, "staged.stage2-learning_rate#1").trial.number == 1
    with pytest.raises(InputError, match=r"staged; name the stage, e\.g\. --trial stage1-0 \(completed trials: stage1-0\.\.\d, stage2-"):
        choose_trial(found, "0")


def test_unknown_study_or_trial_is_a_one_line_error(study):
    folder, _, _ = study
    directory = folder / "studies"
    with pytest.raises(InputError, match=r"study 'nope': not found under .*known: tiny"):
        retrain("nope", directory=directory, out=lambda m: None)
    with pytest.raises(InputError, match=r"--trial 42: study tiny has no such trial; completed trials: 0-3"):
        retrain("tiny", trial=42, directory=directory, out=lambda m: None)
    with pytest.raises(InputError, match=r"--seeds: must be at least 1"):
        retrain("tiny", seeds=0, directory=directory, out=lambda m: None)
    study_ = optuna.load_study(study_name="tiny", storage=open_storage(str(directory / "tiny" / "journal.log")))
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "non-finite loss"})
    study_.add_trial(failed)
    with pytest.raises(InputError, match=r"--trial 4: trial tiny#4 is failed \(non-finite loss\), not complete; completed trials: 0-3"):
        retrain("tiny", trial="4", directory=directory, out=lambda m: None)
    # the command line: the same errors through the subcommand's handler
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["retrain", "tiny", "--trial", "9", "--directory", str(directory)])
    with pytest.raises(InputError, match="no such trial"):
        COMMANDS[args.command](args)
    with pytest.raises(SystemExit):
        parser.parse_args(["retrain", "tiny", "--seeds", "0"])


def test_a_folder_holding_another_trial_is_refused(study, tmp_path):
    folder, _, _ = study
    directory = folder / "studies"
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "retrain.json").write_text(json.dumps({"trial": "tiny#1", "label": "1", "key": "0" * 16}))
    with pytest.raises(InputError, match=r"holds the retrain of trial tiny#1 \(other hypers or data split\); remove that folder, or finish it with --trial 1"):
        retrain("tiny", directory=directory, output_dir=tmp_path / "best", out=lambda m: None)


def test_a_study_by_folder_and_a_trial_with_the_defaults_hypers(study, tmp_path):
    folder, _, _ = study
    lines, kwargs = quiet(trial="0", epochs=1, seeds=1, output_dir=tmp_path / "defaults-trial")
    result = retrain(str(folder / "studies" / "tiny"), **kwargs)  # the study's folder instead of its name
    assert result.trial == "tiny#0" and any("has the defaults' hypers" in line for line in lines)
    best, defaults = result.runs
    assert defaults["hypers"] == "defaults" and defaults["folder"] == best["folder"]  # trained once
    assert all(row["gain"] == 0 for row in result.summary)


def test_equal_time_trains_the_faster_hypers_for_the_slower_ones_time(study, tmp_path):
    from nanopet.retrain import equal_time_set

    rows = [{"hypers": "best", "epoch_seconds": 3.0}, {"hypers": "best", "epoch_seconds": 5.0},
            {"hypers": "defaults", "epoch_seconds": 1.0}, {"hypers": "defaults", "epoch_seconds": 1.0}]
    matched = equal_time_set(rows, 10, tmp_path)
    assert (matched["faster"], matched["slower"], matched["epochs"]) == ("defaults", "best", 40)  # 10 x 4 s / 1 s
    assert equal_time_set([{**r, "epoch_seconds": 1.05} if r["hypers"] == "best" else r for r in rows], 10, tmp_path) is None

    folder, _, _ = study
    lines, kwargs = quiet(directory=folder / "studies", epochs=2, seeds=1, output_dir=tmp_path / "best")
    import nanopet.retrain as retrain_module

    forced = lambda runs, epochs, out_folder: {"faster": "defaults", "slower": "best", "epochs": 3,  # noqa: E731
                                               "seconds": {"best": 2.0, "defaults": 1.3}, "folder": str(out_folder / "equal-time")}
    original = retrain_module.equal_time_set
    retrain_module.equal_time_set = forced
    try:
        result = retrain("tiny", **kwargs)
    finally:
        retrain_module.equal_time_set = original
    longer = [r for r in result.runs if r["hypers"] == "defaults at equal time"]
    assert len(longer) == 1 and longer[0]["epochs"] == 3 and (tmp_path / "best" / "equal-time" / "seed0" / "model.ckpt").is_file()
    forces = next(r for r in result.summary if r["metric"] == "test_forces_rmse")
    best = next(r for r in result.runs if r["hypers"] == "best")
    assert forces["equal_time_gain"] == pytest.approx(1 - best["test_forces_rmse"] / longer[0]["test_forces_rmse"])
    summary = yaml.safe_load((tmp_path / "best" / "summary.yaml").read_text())
    assert summary["verdict"] == result.verdict == result.lines[0] and summary["equal_time"]["epochs"] == 3
    assert result.verdict.startswith("tuned vs defaults, test RMSE: at 2 epochs ")
    assert "at equal time (defaults trained 3 epochs)" in result.verdict
    worse = [r["metric"] for r in result.summary if r["metric"].endswith("_rmse") and min(r["gain"], r["equal_time_gain"]) < 0]
    assert ("WORSE on" in result.verdict) == bool(worse)
    assert set(summary["seconds_per_epoch"]) == {"best", "defaults"} and "convergence" in summary


def test_convergence_says_whether_the_validation_loss_still_fell_at_the_end():
    from nanopet.runs import convergence

    falling = [{"val_loss": 1.0 * 0.97**k} for k in range(40)]  # 3% an epoch: still learning
    flat = [{"val_loss": 1.0 * 0.9**min(k, 20)} for k in range(40)]  # no change over the last 20 epochs
    result = convergence(falling)
    assert result["converged"] is False and result["last_quarter_drop"] == pytest.approx(1 - 0.97**9, rel=1e-6)
    assert convergence(flat) == {"last_quarter_drop": pytest.approx(0.0, abs=1e-12), "converged": True}
    assert convergence(falling[:5]) == {"last_quarter_drop": None, "converged": None}
