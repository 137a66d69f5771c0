"""The ranking pruner (nanopet/tune/pruning.py): it decides only once the finished trials' values at an epoch rank
their final ones; the same decision under Optuna (a pruner) and Ray (a scheduler)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from tune_support import tiny_space, trials

from nanopet.errors import InputError
from nanopet.tune import load_search_space, run
from nanopet.tune.pruning import RankingRule, kendall_tau
from nanopet.tune.storage import open_storage, storage_url
from nanopet.tune.params import distribution
from nanopet.tune.studies import open_stage
from nanopet.tune.plan import plan

PLATEAU = [[1.2, 1.2, 0.9 - 0.1 * k, 0.8 - 0.1 * k] for k in range(5)]  # tied after epoch 1, ranked from epoch 2


def test_the_rule_waits_while_the_finished_trials_are_indistinguishable():
    rule = RankingRule(4, min_tau=0.6, n_startup_trials=5)
    assert rule.decide(0, 5.0, PLATEAU) is None  # all tied: nothing tells them apart yet, however bad the value
    assert rule.decide(1, 5.0, PLATEAU) is None
    reason = rule.decide(2, 5.0, PLATEAU)
    assert reason and "Kendall tau 1.00 >= 0.6" in reason and "5 finished trials" in reason
    assert rule.decide(2, 0.5, PLATEAU) is None  # better than the median there: goes on
    assert rule.decide(3, 5.0, PLATEAU) is None  # the last epoch is no decision: the trial is done
    assert RankingRule(4, n_startup_trials=6).decide(2, 5.0, PLATEAU) is None  # too few finished trials
    assert RankingRule(4, n_warmup_steps=3).decide(2, 5.0, PLATEAU) is None
    shuffled = [[1.0 + 0.1 * k, 1.0, 0.9 - 0.1 * ((k * 3) % 5), 0.8 - 0.1 * k] for k in range(5)]
    # epoch 0 ranks the finals backwards (tau -1), epoch 2 in a scrambled order: too little agreement either way
    assert kendall_tau([c[0] for c in shuffled], [c[-1] for c in shuffled]) == pytest.approx(-1.0)
    assert rule.decide(0, 5.0, shuffled) is None and rule.decide(2, 5.0, shuffled) is None
    assert RankingRule(4, min_tau=-1.0).decide(0, 5.0, shuffled) is not None  # any agreement will do


def test_ranking_settings_are_checked_and_named():
    base = tiny_space("/tmp/unused")
    for settings, message in (({"min_tau": 1.5}, "study.pruner.min_tau: must be between -1 and 1"),
                              ({"percentile": 120}, "study.pruner.percentile: must be between 0 and 100"),
                              ({"n_startup_trials": -1}, "study.pruner.n_startup_trials: must be >= 0"),
                              ({"min_resource": 2}, "study.pruner.min_resource: unknown key; known: type, min_tau")):
        base["study"]["pruner"] = {"type": "ranking", **settings}
        with pytest.raises(InputError, match=message):
            load_search_space(base)


def finished_earlier(space, curves) -> None:
    """Add completed trials with these curves to the (new) study of ``space``, before the search runs."""
    stage = plan(space)[0]
    study = open_stage(open_storage(storage_url(space)), space, stage, {}, None)
    for k, curve in enumerate(curves):
        learning_rate = 1.0e-3 * (1 + 0.1 * k)
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": learning_rate}, distributions={"learning_rate": distribution(space.parameters["learning_rate"])},
            value=curve[-1], intermediate_values=dict(enumerate(curve)), user_attrs={"config": {"learning_rate": learning_rate}}))


def test_optuna_prunes_only_from_the_epoch_where_the_ranking_formed(tmp_path):
    # finished trials (tiny values: every real trial is worse) tied after epochs 1 and 2, ranked from epoch 3 on
    curves = [[1e-6, 1e-6, 1e-6 * (5 - k), 1e-6 * (5 - k)] for k in range(5)]
    # the defaults trial finishes too (worse than all five everywhere): after epochs 1-2 it is the only pair that
    # differs, so tau-b is 5 / sqrt(5 * 15) = 0.58 there, below min_tau 0.7; after epoch 3 it is 1
    raw = tiny_space(tmp_path, study={"pruner": {"type": "ranking", "min_tau": 0.7, "n_startup_trials": 5}},
                     parameters={"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
                     budget={"n_trials": 8, "epochs": 4})
    space = load_search_space(raw)
    finished_earlier(space, curves)
    lines = []
    run(space, threads=1, out=lines.append)
    done = trials(tmp_path, "tiny")
    assert done[0].user_attrs["role"] == "defaults" and done[0].state == TrialState.COMPLETE  # never pruned
    searched = done[len(curves) + 1:]
    assert len(searched) == 2
    for t in searched:
        assert t.state == TrialState.PRUNED and sorted(t.intermediate_values) == [0, 1, 2]  # not after epoch 1 or 2
        assert t.user_attrs["reason"].startswith("pruned after epoch 3/4 by the ranking pruner")
        assert "6 finished trials" in t.user_attrs["reason"] and "Kendall tau 1.00 >= 0.7" in t.user_attrs["reason"]


def test_ray_scheduler_takes_the_same_decision_and_says_why(tmp_path):
    pytest.importorskip("ray")
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from nanopet.tune.ray_driver import names, search

    space = load_search_space(tiny_space(tmp_path, study={"pruner": {"type": "ranking", "n_startup_trials": 5}},
                                         budget={"n_trials": 8, "epochs": 4}, driver={"type": "ray"}))
    defaults = {"learning_rate": 3.0e-3}
    scheduler = search.ranking_scheduler(space, defaults, PLATEAU[:4])  # four recorded before this experiment

    def report(trial, epoch, value):
        return scheduler.on_trial_result(None, trial, {names.TIME_ATTR: epoch, names.OBJECTIVE: value})

    fifth, bad, default = (Trial("nanopet", config=c, stub=True) for c in
                           ({"learning_rate": 5e-3}, {"learning_rate": 1e-6}, defaults))
    for epoch, value in enumerate(PLATEAU[4], start=1):  # the fifth finished trial, from this experiment
        assert report(fifth, epoch, value) == TrialScheduler.CONTINUE
    assert report(bad, 1, 5.0) == TrialScheduler.CONTINUE and report(bad, 2, 5.0) == TrialScheduler.CONTINUE  # tied there
    assert report(default, 1, 5.0) == TrialScheduler.CONTINUE and report(default, 3, 5.0) == TrialScheduler.CONTINUE
    assert report(bad, 3, 5.0) == TrialScheduler.STOP
    why = (tmp_path / "tiny" / "trials" / f"ray-{bad.trial_id}" / "stopped.txt").read_text()
    assert why.startswith("pruned after epoch 3/4 by the ranking pruner (val_forces_rmse 5: worse than the 50th percentile")
