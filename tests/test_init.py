"""``nanopet-tune init``: a search space fitted to the data and the machine, with its reasons; keys and units it
cannot decide asked for by flag; plans that fit the budget; the search's last line (time against the prediction);
stages that share a timeout; equal-time budgets that do not re-time steps of the same cost."""

from __future__ import annotations

import time

import ase.io
import optuna
import pytest

from nanopet.cli import main
from nanopet.data import generate_emt_alloy
from nanopet.errors import InputError
from nanopet.tune import load_search_space, run
from nanopet.tune.init import init_search
from nanopet.tune.init.plan import FILL, MAX_TRIAL_SHARE, STAGE_SETS, Fitter, Plan, Timing, predict
from nanopet.tune.init.rules import MODEL_SIZES, learning_rates, splits

from data_support import overlapping, relabelled, scaled
from test_inspect import synthetic_molecules  # water, ethanol, benzene labelled like DFT in eV
from tune_support import tiny_space

KCAL_PER_EV = 23.0605


@pytest.fixture(scope="module")
def emt():
    return generate_emt_alloy(24, seed=0)


@pytest.fixture
def timed(monkeypatch):
    """init's timing, fixed: what it decides from a timing is tested here, not this machine's speed."""
    import nanopet.tune.init as init

    def measure(space, threads, workers=1):
        return Timing(threads, "cpu", data=0.5, epoch=1.0, setup=0.1, measure=0.3, estimate=0.8), 17

    monkeypatch.setattr(init, "measure", measure)


def test_init_writes_a_space_that_loads_with_the_data_keys_a_test_set_and_reasons(tmp_path, emt, monkeypatch):
    import nanopet.tune.init as init

    monkeypatch.setattr(init, "LARGER_MODEL_SHARE", 0.0)  # the tiny model's timing only: larger ones take long here
    data = tmp_path / "data" / "cells.xyz"
    data.parent.mkdir()
    ase.io.write(data, relabelled(emt[:12], forces="force"), format="extxyz")
    day = 86400  # so that a busy machine still fits a plan: the plan's size is tested below, on fixed timings
    result = init_search([data], budget=day, workers=1, output=tmp_path / "spaces" / "cells.yaml", out=lambda m: None)
    space = load_search_space(result.path)
    training_set = space.options["training_set"]
    assert training_set["systems"]["read_from"] == "../data/cells.xyz"  # relative to the space's folder
    assert training_set["targets"]["energy"] == {"key": "energy", "unit": "eV", "forces": {"key": "force"},
                                                 "stress": {"key": "stress"}}
    assert space.options["test_set"] > 0 and space.options["validation_set"] >= 0.05
    assert space.budget.equal == "time" and space.budget.timeout == day
    assert 0 < space.budget.predicted_seconds <= FILL * day
    assert space.options["architecture"]["training"]["initialisation"] == "torch"  # bulk
    cutoff = space.parameters["cutoff"]
    # 20 neighbours within 4.48 A, 1 A either side, floored at the second shell's end (4.2 A, 3.5 A without the floor)
    assert (cutoff.low, cutoff.high, cutoff.step) == (4.0, 5.5, 0.5)
    assert space.strategy.stages[:2] == (("cutoff",), ("learning_rate",))
    text = result.text
    for reason in ("# keys: energy 'energy' (12 frames), forces 'force'", "unit: eV assumed", "# splits by size:",
                   "the median atom has 20 neighbours within",
                   "not below the second neighbour shell's end (4.2 A)", "initialisation: torch (bulk)", "# sized here: one epoch",
                   "pruner: median from epoch", f"#   nanopet-tune {result.path} --workers 1"):
        assert reason in text, reason
    assert result.command == f"nanopet-tune {result.path} --workers 1"
    assert any(line.startswith("  plan: ") and "predicted" in line for line in result.summary)
    with pytest.raises(InputError, match="exists; give another file with -o, or --overwrite"):
        init_search([data], budget=day, workers=1, output=result.path, out=lambda m: None)


def test_molecules_get_balanced_initialisation_ranking_and_a_cutoff_below_their_size(tmp_path, timed):
    path = tmp_path / "mols.xyz"
    ase.io.write(path, synthetic_molecules(60), format="extxyz")
    result = init_search(path, budget=600, workers=1, out=lambda m: None)
    assert result.path == tmp_path / "mols-search.yaml" and result.raw["study"]["name"] == "mols"
    raw = result.raw
    assert raw["architecture"]["training"]["initialisation"] == "balanced"
    assert raw["study"]["pruner"] == {"type": "ranking"}
    assert raw["training_set"]["targets"]["energy"]["stress"] is False
    cutoff = raw["parameters"]["cutoff"]
    assert cutoff["low"] == 3.0 and cutoff["high"] <= 5.5  # benzene is about 5 A across
    assert "(molecules)" in result.text and "the widest molecule is" in result.text


def test_a_unit_the_file_cannot_tell_and_an_ambiguous_key_are_asked_for_by_flag(tmp_path, emt, capsys, timed):
    kcal = tmp_path / "kcal.xyz"
    ase.io.write(kcal, [scaled(atoms, KCAL_PER_EV) for atoms in synthetic_molecules(30)], format="extxyz")
    assert main(["init", str(kcal), "--budget", "5m"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--energy-unit" in error and "looks large" in error
    assert not (tmp_path / "kcal-search.yaml").exists()
    result = init_search(kcal, budget=600, workers=1, energy_unit="kcal/mol", out=lambda m: None)
    assert result.raw["training_set"]["targets"]["energy"]["unit"] == "kcal/mol"
    assert "unit: kcal/mol, given with --energy-unit" in result.text

    two = tmp_path / "two.xyz"
    frames = relabelled(emt[:12], forces="forces")
    for frame, original in zip(frames, emt[:12]):
        frame.arrays["dft_force"] = original.get_forces() * 1.01
    ase.io.write(two, frames, format="extxyz")
    assert main(["init", str(two)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "several forces keys" in error and "--forces-key KEY" in error
    assert main(["init", str(two), "--forces-key", "nope"]) == 2
    assert "--forces-key nope: no forces under that key" in capsys.readouterr().err
    result = init_search(two, budget=600, workers=1, forces_key="dft_force", out=lambda m: None)
    assert result.raw["training_set"]["targets"]["energy"]["forces"] == {"key": "dft_force"}


def test_suspicious_frames_are_named_and_a_unit_mix_up_can_be_left_out(tmp_path, emt, timed):
    frames = list(emt)
    frames[3] = overlapping(emt[3], 0.4)
    path = tmp_path / "overlap.xyz"
    ase.io.write(path, frames, format="extxyz")
    kept = init_search(path, budget=600, workers=1, out=lambda m: None)
    assert "  suspicious: overlapping atoms: 3" in kept.summary
    assert "overlapping atoms: 3" in kept.text and "--drop-suspicious" in kept.text

    frames[9] = scaled(emt[9], 1000.0)  # one frame in meV: its forces make the file's look like another unit
    path = tmp_path / "planted.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(InputError, match="--energy-unit .*leave them out with --drop-suspicious"):
        init_search(path, budget=600, workers=1, out=lambda m: None)
    dropped = init_search(path, budget=600, workers=1, drop_suspicious=True, output=tmp_path / "clean.yaml",
                          out=lambda m: None)
    assert dropped.dropped == ["3", "9"] and len(ase.io.read(tmp_path / "planted.clean.xyz", ":")) == 22
    assert dropped.raw["training_set"]["systems"]["read_from"] == "planted.clean.xyz"
    assert dropped.raw["study"]["name"] == "planted" and dropped.report.suspicious == []
    assert "Left out with --drop-suspicious (2 frames)" in dropped.text


def test_a_smaller_budget_makes_a_smaller_plan_and_too_small_a_one_is_refused():
    from nanopet.tune.init import DataChoices, rules

    choices = DataChoices("x", "cpu", {}, None, None, rules.Reasoned({"low": 3.0, "high": 5.0}, ""), None,
                          {size.name: rules.Reasoned({"choices": [2, 4, 8, 16], "base": 16}, "") for size in MODEL_SIZES})
    timing = Timing(1, "cpu", data=2.0, epoch=2.0, setup=0.2, measure=1.0, estimate=1.5, side_by_side=True)

    def fitted(budget, larger=None):
        fitter = Fitter(choices.counts, choices.stages, lambda size, base: (larger or {}).get(size.name), budget, 2, 10)
        return fitter(timing)[0]

    big, small, tiny = fitted(3600), fitted(300), fitted(90)
    assert big.stages == STAGE_SETS[0] and big.learning_rates is None and big.learning_rate_trials >= 8
    assert big.counts == [5, big.learning_rate_trials, 3, 5] and big.epochs > 10
    assert small.learning_rates == learning_rates(MODEL_SIZES[0]) == (3e-4, 6e-4, 1.2e-3, 2.4e-3, 4.8e-3, 9.6e-3)
    assert small.n_trials * small.epochs < big.n_trials * big.epochs
    assert len(tiny.stages) == 2 and tiny.counts == [5, 2]  # cutoffs, and three learning rates a factor 4 apart
    for plan, budget in ((big, 3600), (small, 300), (tiny, 90)):
        assert plan.predicted <= FILL * budget and plan.trial_seconds <= MAX_TRIAL_SHARE * budget
        assert plan.predicted == pytest.approx(predict(timing, plan.counts, plan.epochs, 2))
    assert fitted(20) is None
    smallest, needed = Fitter(choices.counts, choices.stages, lambda size, base: None, 20, 2, 10).least_budget(timing)
    assert smallest.counts == [5, 2] and fitted(needed + 1) is not None and fitted(needed - 1) is None
    larger = fitted(3600, larger={"small": timing.scaled(4.0), "default": timing.scaled(20.0)})
    assert larger.size is MODEL_SIZES[1] and larger.epochs >= 10 and larger.learning_rate_trials >= 8
    assert choices.counts(Plan(MODEL_SIZES[0], STAGE_SETS[0], [], 10, learning_rates=(3e-4, 1e-3))) == [5, 1, 3, 5]


def test_splits_keep_a_test_set_and_grow_the_validation_share_on_small_sets():
    assert dict(splits(1000)) == {"validation_set": 0.2, "test_set": 0.1}
    assert dict(splits(4000)) == {"validation_set": 0.05, "test_set": 0.05}
    assert dict(splits(30)) == {"validation_set": 0.2, "test_set": 0.1}


def test_the_search_says_its_time_against_the_budget_and_the_prediction(tmp_path):
    raw = tiny_space(tmp_path, budget={"n_trials": 2, "epochs": 1, "timeout": 120, "predicted_seconds": 100})
    lines = []
    started = time.time()
    run(raw, out=lines.append)
    elapsed = time.time() - started
    assert lines[-1].startswith("time: ")
    assert "of a 2.0 min budget" in lines[-1] and "predicted 1.7 min)" in lines[-1]
    seconds = float(lines[-1].split()[1])  # whole seconds under 90 s
    assert abs(seconds - elapsed) <= 1.0
    assert load_search_space(raw).budget.predicted_seconds == 100


def test_each_stage_gets_its_share_of_the_timeout_and_the_search_goes_on(tmp_path):
    from nanopet.tune.stages import run_stages, share_deadline
    from nanopet.tune.plan import plan

    raw = tiny_space(tmp_path, budget={"n_trials": 6, "epochs": 1, "timeout": 100},
                     strategy={"type": "staged", "importance": ["learning_rate", "cutoff"], "split": [4, 2]})
    space = load_search_space(raw)
    stages = plan(space)
    deadline = time.time() + 60
    assert share_deadline(stages, deadline) == pytest.approx(time.time() + 40, abs=1)  # 4 of 6 trials
    assert share_deadline(stages[1:], deadline) == deadline and share_deadline(stages, None) is None

    calls, lines = [], []

    def run_stage(stage, fixed, previous, until):
        calls.append((stage.index, until))
        study = optuna.create_study()
        name = stage.parameters[0]
        distribution = optuna.distributions.FloatDistribution(1e-3, 1e-2) if name == "learning_rate" else \
            optuna.distributions.FloatDistribution(3.0, 4.0, step=0.5)
        value = 2e-3 if name == "learning_rate" else 3.5
        study.add_trial(optuna.trial.create_trial(params={name: value}, distributions={name: distribution}, value=1.0))
        return ("timeout" if stage.index == 1 else "completed"), study

    status = run_stages(space, run_stage, lines.append, deadline)
    assert [index for index, _ in calls] == [1, 2] and calls[0][1] < deadline and calls[1][1] == deadline
    assert status == "timeout" and any("its share of budget.timeout is used up" in line for line in lines)


def test_equal_time_measures_each_step_cost_once_and_not_the_base_cost(tmp_path):
    from nanopet.tune.trial import EpochBudget

    class Sized:
        train = [None] * 18

    raw = tiny_space(tmp_path, budget={"epochs": 10, "equal": "time"},
                     parameters={"batch_size": {"type": "categorical", "choices": [2, 6]},
                                 "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}})
    space = load_search_space(raw)
    measured = []

    def seconds(options, data):
        measured.append(options["architecture"]["training"]["batch_size"])
        return {6: 1.0, 2: 4.0}[options["architecture"]["training"]["batch_size"]]

    budget = EpochBudget(space, measure=seconds)
    assert budget(space.options_for({"learning_rate": 7e-3}), Sized())[:2] == (10, None)  # the base's step cost
    assert measured == []
    assert budget(space.options_for({"batch_size": 2, "learning_rate": 2e-3}), Sized())[0] == 2
    assert budget(space.options_for({"batch_size": 2, "learning_rate": 5e-3}), Sized())[0] == 2
    assert measured == [6, 2]  # once for batch 2, whatever the learning rate
