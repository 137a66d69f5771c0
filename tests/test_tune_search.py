"""Searches in this process on tiny data: budgets, best trial, staged search, pruning, failures, resume."""

from __future__ import annotations

import json

import pytest
import yaml
import torch
from optuna.trial import TrialState
from tune_support import tiny_space, trials

import nanopet.data.batch as batch_module
from nanopet.options import read_yaml, resolve_options
from nanopet.tune import load_search_space, run
from nanopet.tune.optuna_driver.runner import pace_line
from nanopet.tune.plan import counted


def search(raw, lines=None, **kwargs):
    lines = [] if lines is None else lines
    return run(load_search_space(raw), threads=1, out=lines.append, **kwargs), lines


def test_six_trial_study_completes_and_best_is_the_argmin(tmp_path):
    result, lines = search(tiny_space(tmp_path))
    done = trials(tmp_path, "tiny")
    assert len(done) == 6 and len(counted(done)) == 6
    assert done[0].user_attrs["role"] == "defaults"
    assert done[0].params["learning_rate"] == pytest.approx(3e-3) and done[0].params["cutoff"] == 3.5
    completed = [t for t in done if t.state == TrialState.COMPLETE]
    best = min(completed, key=lambda t: t.value)
    assert result.status == "completed"
    assert result.best_value == best.value and result.best_trial == f"tiny#{best.number}"
    assert result.start_value == done[0].value and result.gain == pytest.approx(1 - best.value / done[0].value)
    for t in completed:
        folder = tmp_path / "tiny" / "trials" / str(t.number)
        assert (folder / "model.ckpt").is_file() and (folder / "metrics.csv").is_file()
        assert json.loads((folder / "trial.json").read_text())["state"] == "COMPLETE"
        assert t.user_attrs["config"]["cutoff"] == t.params["cutoff"]
        assert len(t.intermediate_values) == 2  # learning curve: one value per epoch
    best_options = read_yaml(result.best_options)
    assert resolve_options(best_options)["architecture"]["model"]["cutoff"] == best.params["cutoff"]
    assert any("better than the defaults" in line for line in lines)
    # each trial's last epoch line: that epoch's metric, then the value the trial reports (at its best val_loss)
    for t in completed:
        last = next(line for line in lines if line.startswith(f"trial {t.number} epoch 2/2: val_forces_rmse "))
        assert last.endswith(f", {t.value:.4g} at the best val_loss so far")
    # one pace line, after the first epoch: what a trial and the budget cost at that pace
    paces = [line for line in lines if line.startswith("pace: ")]
    assert len(paces) == 1 and "a trial of 2 epochs; 6 trials: about" in paces[0]
    assert lines.index(paces[0]) == next(i for i, line in enumerate(lines) if line.startswith("trial 0 ")) + 1
    # re-running the same search resumes it: the budget is used up, nothing new runs
    again, _ = search(tiny_space(tmp_path))
    assert len(trials(tmp_path, "tiny")) == 6 and again.best_value == result.best_value


def test_staged_search_fixes_earlier_stages_best(tmp_path):
    raw = tiny_space(tmp_path, strategy={"type": "staged", "importance": ["cutoff", "learning_rate"]},
                     budget={"n_trials": 5}, study={"sampler": {"type": "tpe", "seed": 1, "n_startup_trials": 2}})
    result, _ = search(raw)
    first, second = trials(tmp_path, "tiny.stage1-cutoff"), trials(tmp_path, "tiny.stage2-learning_rate")
    assert len(counted(first)) == 3 and len(counted(second)) == 2  # 5 trials split by importance
    best_cutoff = min((t for t in first if t.state == TrialState.COMPLETE), key=lambda t: t.value).params["cutoff"]
    carried = [t for t in second if t.user_attrs.get("role") == "carried"]
    assert len(carried) == 1 and carried[0].params == {"learning_rate": pytest.approx(3e-3)}
    for t in second:
        assert set(t.params) == {"learning_rate"}
        assert t.user_attrs["config"]["cutoff"] == best_cutoff
        if t.user_attrs.get("role") != "carried":
            options = json.loads((tmp_path / "tiny" / "trials" / f"stage2-{t.number}" / "trial.json").read_text())["options"]
            assert options["architecture"]["model"]["cutoff"] == best_cutoff
    assert result.best_config["cutoff"] == best_cutoff


def test_batch_size_stage_trains_at_the_chosen_learning_rate_moved_by_the_square_root_rule(tmp_path):
    raw = tiny_space(tmp_path, strategy={"type": "staged", "importance": ["learning_rate", "batch_size"], "learning_rate_scaling": "sqrt"},
                     parameters={"learning_rate": {"type": "categorical", "choices": [2.0e-3, 3.0e-3]},
                                 "batch_size": {"type": "categorical", "choices": [2, 6, 24]}},
                     budget={"n_trials": 4, "epochs": 1})
    result, lines = search(raw)
    first, second = trials(tmp_path, "tiny.stage1-learning_rate"), trials(tmp_path, "tiny.stage2-batch_size")
    chosen = min((t for t in first if t.state == TrialState.COMPLETE), key=lambda t: t.value).params["learning_rate"]
    trained = [t for t in second if t.user_attrs.get("role") != "carried"]
    assert sorted(t.params["batch_size"] for t in trained) == [2, 24]  # 6 (the base) is carried in
    for t in trained:
        moved = chosen * (t.params["batch_size"] / 6) ** 0.5
        assert t.user_attrs["config"]["learning_rate"] == pytest.approx(moved)
        assert t.user_attrs["options"]["architecture"]["training"]["learning_rate"] == pytest.approx(moved)
        assert t.user_attrs["options"]["architecture"]["training"]["batch_size"] == t.params["batch_size"]
        assert f"trial {t.number} [stage 2/2 (batch_size)] batch_size={t.params['batch_size']}, learning_rate={moved:.4g}" in lines, lines
    best = min((t for t in first + second if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert result.best_config == pytest.approx(best.user_attrs["config"])
    best_training = resolve_options(read_yaml(result.best_options))["architecture"]["training"]
    assert best_training["learning_rate"] == pytest.approx(best.user_attrs["config"]["learning_rate"])


def test_pruner_prunes_a_bad_trial(tmp_path):
    raw = tiny_space(tmp_path, parameters={"learning_rate": {"type": "categorical", "choices": [3.0e-3, 1.0e-6]}},
                     study={"sampler": {"type": "random", "seed": 3}, "pruner": {"type": "median", "n_startup_trials": 1}},
                     objective={"metric": "val_energy_rmse"}, budget={"n_trials": 6, "epochs": 3},
                     strategy={"type": "joint", "enumerate": False})  # repeats wanted: not each value once
    search(raw)
    done = trials(tmp_path, "tiny")
    bad = [t for t in done if t.params["learning_rate"] == 1.0e-6]
    assert len(bad) >= 2, "the seed must draw the bad learning rate twice"
    for t in bad:
        assert t.state == TrialState.PRUNED
        assert "pruned after epoch 1/3 by the median pruner" in t.user_attrs["reason"]
        assert t.intermediate_values  # the curve is kept
    for t in bad[1:]:  # a repeat of a pruned trial is its copy (deterministic training: the same curve again)
        assert t.user_attrs["duplicate_of"] == bad[0].number and t.intermediate_values == bad[0].intermediate_values
        assert "not trained again" in t.user_attrs["reason"]
    assert not (tmp_path / "tiny" / "trials" / str(bad[1].number)).exists()
    good = [t for t in done if t.params["learning_rate"] == 3.0e-3]
    assert good[0].state == TrialState.COMPLETE
    assert all(t.user_attrs.get("duplicate_of") == good[0].number for t in good[1:])  # deterministic: not retrained


def test_nan_learning_rate_fails_only_its_trial(tmp_path):
    raw = tiny_space(tmp_path, parameters={"learning_rate": {"type": "categorical", "choices": [3.0e-3, 1.0e3]}},
                     study={"sampler": {"type": "random", "seed": 3}}, budget={"n_trials": 4},
                     strategy={"type": "joint", "enumerate": False})  # four trials of two values: the study goes on
    result, _ = search(raw)
    done = trials(tmp_path, "tiny")
    failed = [t for t in done if t.state == TrialState.FAIL]
    assert failed and all(t.params["learning_rate"] == 1.0e3 for t in failed)
    assert all("non-finite" in t.user_attrs["reason"] for t in failed)
    assert len(counted(done)) == 4 and result.status == "completed"
    assert result.best_config["learning_rate"] == 3.0e-3


def test_data_neighbour_listed_once_at_the_largest_cutoff(tmp_path, monkeypatch):
    calls = []
    original = batch_module.neighbor_list
    monkeypatch.setattr(batch_module, "neighbor_list", lambda s, cutoff: calls.append(cutoff) or original(s, cutoff))
    raw = tiny_space(tmp_path, budget={"n_trials": 4, "epochs": 1})
    search(raw)
    cutoffs = {t.params["cutoff"] for t in trials(tmp_path, "tiny")}
    assert len(cutoffs) > 1  # trials used several cutoffs ...
    assert len(calls) == 24 and set(calls) == {4.0}  # ... and the 24 structures were neighbour-listed once, at 4.0


def test_cost_objectives_penalty_and_front(tmp_path):
    penalty = tiny_space(tmp_path / "a", objective={"cost": "penalty", "cost_measure": "parameters", "cost_weight": 0.5},
                         parameters={"d_pet": {"type": "categorical", "choices": [8, 16]}}, budget={"n_trials": 3, "epochs": 1})
    search(penalty)
    for t in trials(tmp_path / "a", "tiny"):
        metric = t.user_attrs["metrics"]["val_forces_rmse"]
        assert t.value == pytest.approx(metric * t.user_attrs["cost"] ** 0.5)
    front = tiny_space(tmp_path / "b", objective={"cost": "front", "cost_measure": "inference_time"},
                       parameters={"d_pet": {"type": "categorical", "choices": [8, 16]}}, budget={"n_trials": 3, "epochs": 1})
    result, lines = search(front)
    done = trials(tmp_path / "b", "tiny")
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in done if t.state == TrialState.COMPLETE)
    assert result.front and any("Pareto front" in line for line in lines)


def test_keep_only_the_best_checkpoints(tmp_path):
    search(tiny_space(tmp_path, study={"keep_checkpoints": 2}, budget={"n_trials": 4, "epochs": 1}))
    done = sorted((t for t in trials(tmp_path, "tiny") if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs),
                  key=lambda t: t.value)
    kept = [(tmp_path / "tiny" / "trials" / str(t.number) / "model.ckpt").is_file() for t in done]
    assert kept == [True, True] + [False] * (len(done) - 2)


def test_interrupt_finishes_the_epoch_marks_the_trial_and_resume_completes(tmp_path):
    from nanopet.tune.optuna_driver.workers import StopFlag, work

    space = load_search_space(tiny_space(tmp_path, budget={"n_trials": 3, "epochs": 3}))
    stop = StopFlag()
    lines = []

    def out(line):  # "Ctrl-C" during the second trial's first epoch
        lines.append(line)
        if line.startswith("trial 1 epoch 1/"):
            stop.request()

    assert work(space, stop=stop, out=out) == "interrupted"
    done = trials(tmp_path, "tiny")
    assert done[0].state == TrialState.COMPLETE
    assert done[1].state == TrialState.FAIL and "interrupted by the user after epoch 1" in done[1].user_attrs["reason"]
    assert done[2].state == TrialState.WAITING and done[2].user_attrs["retry_of"] == 1
    assert len(done[1].intermediate_values) == 1  # the running epoch finished and was reported
    result, _ = search(tiny_space(tmp_path, budget={"n_trials": 3, "epochs": 3}))
    done = trials(tmp_path, "tiny")
    assert [t.state for t in done[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert done[2].state == TrialState.COMPLETE and done[2].params == done[1].params
    assert len(counted(done)) == 3 and result.status == "completed"


def test_out_of_memory_and_other_errors_fail_only_their_trial(tmp_path, monkeypatch):
    import nanopet.tune.trial as trial_module

    real_train = trial_module.train

    def flaky_train(options, **kwargs):
        learning_rate = options["architecture"]["training"]["learning_rate"]
        if learning_rate == 1.0e-2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if learning_rate == 2.0e-2:
            raise RuntimeError("boom")
        return real_train(options, **kwargs)

    monkeypatch.setattr(trial_module, "train", flaky_train)
    raw = tiny_space(tmp_path, parameters={"learning_rate": {"type": "categorical", "choices": [3.0e-3, 1.0e-2, 2.0e-2]}},
                     study={"sampler": {"type": "random", "seed": 0}}, budget={"n_trials": 6, "epochs": 1})
    result, _ = search(raw)
    done = trials(tmp_path, "tiny")
    reasons = {t.params["learning_rate"]: t.user_attrs.get("reason") for t in done if t.state == TrialState.FAIL}
    assert reasons == {1.0e-2: "CUDA out of memory: CUDA out of memory. Tried to allocate 2.00 GiB", 2.0e-2: "RuntimeError: boom"}
    boom = next(t for t in done if t.params["learning_rate"] == 2.0e-2)
    assert "Traceback" in (tmp_path / "tiny" / "trials" / str(boom.number) / "error.txt").read_text()
    assert len(counted(done)) == 3 and result.status == "completed"  # three values: each tried once
    assert sorted(t.params["learning_rate"] for t in done) == [3.0e-3, 1.0e-2, 2.0e-2]


def test_timeout_stops_starting_trials(tmp_path):
    raw = tiny_space(tmp_path, budget={"n_trials": None, "timeout": 0.5, "epochs": 1})
    result, lines = search(raw)
    assert result.status == "timeout" and 1 <= len(trials(tmp_path, "tiny")) < 10
    assert any(line.startswith("timeout reached") for line in lines)


def test_a_small_discrete_space_is_enumerated_once_and_ends(tmp_path):
    # a timeout-only budget over three configurations: each trained once, then the study ends (the sampler would
    # repeat them, and each repeat, copied without training, would start another until the timeout)
    raw = tiny_space(tmp_path, parameters={"learning_rate": {"type": "categorical", "choices": [3.0e-3, 1.0e-2, 2.0e-3]}},
                     study={"sampler": {"type": "tpe", "seed": 0}}, budget={"n_trials": None, "timeout": 300, "epochs": 1})
    result, lines = search(raw)
    done = trials(tmp_path, "tiny")
    assert result.status == "completed" and "joint: each of its 3 configurations tried once" in lines
    assert sorted(t.params["learning_rate"] for t in done) == [2.0e-3, 3.0e-3, 1.0e-2]
    assert all(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in done)
    # strategy.enumerate: false leaves the sampler alone: with more trials than configurations it repeats some
    raw = tiny_space(tmp_path / "b", parameters={"learning_rate": {"type": "categorical", "choices": [3.0e-3, 1.0e-2]}},
                     strategy={"type": "joint", "enumerate": False}, budget={"n_trials": 4, "epochs": 1})
    search(raw)
    done = trials(tmp_path / "b", "tiny")
    assert len(done) == 4 and sum("duplicate_of" in t.user_attrs for t in done) == 2


def test_the_defaults_trial_is_never_pruned(tmp_path):
    # the gain over the defaults is measured from it: worse than every earlier trial at every epoch, it still runs
    # all its epochs, while the pruner prunes the next trial that is as bad
    import optuna

    from nanopet.tune.storage import open_storage, storage_url
    from nanopet.tune.params import distribution
    from nanopet.tune.studies import open_stage
    from nanopet.tune.plan import plan

    raw = tiny_space(tmp_path, study={"pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}},
                     parameters={"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
                     budget={"n_trials": 4, "epochs": 2})
    space = load_search_space(raw)
    stage = plan(space)[0]
    study = open_stage(open_storage(storage_url(space)), space, stage, {}, None)  # a new study: the defaults enqueued
    for learning_rate in (2.0e-3, 5.0e-3):  # earlier results that every real trial is worse than
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": learning_rate}, distributions={"learning_rate": distribution(space.parameters["learning_rate"])},
            value=1.0e-6, intermediate_values={0: 1.0e-6, 1: 1.0e-6}, user_attrs={"config": {"learning_rate": learning_rate}}))
    search(raw)
    done = trials(tmp_path, "tiny")
    assert done[0].user_attrs["role"] == "defaults" and done[0].state == TrialState.COMPLETE
    assert len(done[0].intermediate_values) == 2
    assert done[3].state == TrialState.PRUNED and len(done[3].intermediate_values) == 1


def test_an_enumerated_later_stage_trains_each_configuration_but_its_start(tmp_path):
    # stage 2 tunes 3 cutoffs from stage 1's best at the base cutoff 3.5 (carried in): it trains 3.0 and 4.0, once each
    raw = tiny_space(tmp_path, strategy={"type": "staged", "importance": ["learning_rate", "cutoff"]}, budget={"n_trials": 5},
                     study={"sampler": {"type": "tpe", "seed": 0}})
    result, lines = search(raw)
    second = trials(tmp_path, "tiny.stage2-cutoff")
    trained = [t for t in second if t.user_attrs.get("role") != "carried"]
    assert sorted(t.params["cutoff"] for t in trained) == [3.0, 4.0]
    assert all(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in trained)
    assert [t.params["cutoff"] for t in second if t.user_attrs.get("role") == "carried"] == [3.5]
    assert len(counted(trials(tmp_path, "tiny.stage1-learning_rate"))) == 3 and result.status == "completed"
    assert "stage 2/2 (cutoff): each of its 3 configurations tried once" in lines
    assert lines[0] == "plan: stage 1/2 (learning_rate): 3 trials; stage 2/2 (cutoff): 2 trials, each configuration once"


def test_pace_line_scales_the_first_epoch_to_a_trial_and_the_budget(tmp_path):
    space = load_search_space(tiny_space(tmp_path, budget={"n_trials": 60, "epochs": 100, "timeout": 7200}))
    assert pace_line(space, 48.0, 1) == ("pace: 48 s an epoch, 80 min a trial of 100 epochs; 60 trials: about "
                                          "3.3 days on 1 worker (less with pruning and repeats); budget.timeout ends the "
                                          "search after 2.0 h")
    assert "60 trials: about 16.7 h on 1 worker" in pace_line(space, 10.0, 1)
    assert "0.6 s an epoch, 60 s a trial of 100 epochs; 60 trials: about 15 min on 4 workers" in pace_line(space, 0.6, 4)
    single = load_search_space(tiny_space(tmp_path, budget={"n_trials": 1, "epochs": 1}))
    assert pace_line(single, 3.0, 1) == ("pace: 3 s an epoch, 3 s a trial of 1 epoch; 1 trial: about 3 s on 1 worker "
                                         "(less with pruning and repeats)")


def test_a_cutoff_given_by_its_full_path_is_neighbour_listed_once_at_its_largest_value(tmp_path, monkeypatch):
    calls = []
    original = batch_module.neighbor_list
    monkeypatch.setattr(batch_module, "neighbor_list", lambda s, cutoff: calls.append(cutoff) or original(s, cutoff))
    raw = tiny_space(tmp_path, budget={"n_trials": 4, "epochs": 1},
                     parameters={"architecture.model.cutoff": {"type": "float", "low": 3.0, "high": 4.0, "step": 0.5}})
    assert load_search_space(raw).max_cutoff == 4.0
    search(raw)
    cutoffs = {t.params["architecture.model.cutoff"] for t in trials(tmp_path, "tiny")}
    assert len(cutoffs) > 1  # trials used several cutoffs ...
    assert len(calls) == 24 and set(calls) == {4.0}  # ... and the 24 structures were neighbour-listed once, at 4.0


def test_best_yaml_of_a_relative_dataset_mapping_trains_where_it_lies(tmp_path):
    from nanopet.data import write_emt_alloy
    from nanopet.train import train

    search_dir = tmp_path / "search"
    search_dir.mkdir()
    write_emt_alloy(search_dir / "rel.xyz", n=24, seed=0)
    raw = tiny_space(tmp_path / "studies", budget={"n_trials": 1, "epochs": 1},
                     parameters={"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}})
    raw["training_set"] = {"systems": {"read_from": "rel.xyz"}}
    path = search_dir / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result, _ = search(path)
    best = read_yaml(result.best_options)
    assert best["training_set"]["systems"]["read_from"] == str((search_dir / "rel.xyz").resolve())
    assert "scheduler_epochs" not in best["architecture"]["training"]  # the search's own: best.yaml anneals in its epochs
    # what `nanopet-tune train studies/<name>/best.yaml` does: dataset paths against the file's folder
    trained = train(best, output_dir=tmp_path / "run", base_dir=result.best_options.parent)
    assert len(trained.history) == 1


def test_a_stop_rule_of_the_trial_layer_prunes_every_trial_but_the_defaults(tmp_path, monkeypatch):
    import nanopet.tune.trial as trial_module

    def rule(epoch, value, best):
        return f"stopped by the test rule after epoch {epoch + 1} (value {value:.4g})" if epoch == 0 else None

    monkeypatch.setattr(trial_module, "stop_rules", lambda space: [rule])
    search(tiny_space(tmp_path, budget={"n_trials": 3, "epochs": 2}))
    done = trials(tmp_path, "tiny")
    assert done[0].user_attrs["role"] == "defaults" and done[0].state == TrialState.COMPLETE  # protected
    for t in done[1:]:
        assert t.state == TrialState.PRUNED or t.user_attrs.get("duplicate_of") is not None
        if t.user_attrs.get("duplicate_of") is None:
            assert t.user_attrs["reason"].startswith("stopped by the test rule after epoch 1")
            assert len(t.intermediate_values) == 1
