"""The data-size fidelity (budget.data_shares): trials train on nested shares of the training set in turn, the
pruner decides after each, the last share is a plain trial, and the report reads the ranking over the shares."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.trial import TrialState

from nanopet.data.splits import load_data
from nanopet.errors import InputError
from nanopet.report.collect import collect
from nanopet.report.figures import learning_curves
from nanopet.report.ranking import early_ranking
from nanopet.train import train
from nanopet.tune import load_search_space, run
from nanopet.tune.trial import BestSoFar
from tune_support import tiny_space, trials

SHARES = [0.25, 0.5, 1]


def shares_space(tmp_path, pruner: dict, n_trials: int = 8) -> dict:
    raw = tiny_space(tmp_path, budget={"n_trials": n_trials, "epochs": 2, "data_shares": SHARES},
                     training_set={"systems": {"builtin": "emt-alloy", "n": 40, "seed": 0}})
    raw["study"]["pruner"] = pruner
    return raw


@pytest.mark.parametrize("shares, message", [
    ([0.5], "at least two increasing shares"),
    ([0.5, 0.25, 1], "must increase and end at 1"),
    ([0.25, 0.5], "must increase and end at 1"),
    ([0.3, 0.45, 1], "whole multiple of the first"),
    ("half", "at least two increasing shares"),
])
def test_data_shares_are_checked(tmp_path, shares, message):
    raw = tiny_space(tmp_path, budget={"n_trials": 4, "epochs": 2, "data_shares": shares})
    with pytest.raises(InputError, match=message):
        load_search_space(raw)


def test_data_shares_take_pruners_that_decide_on_shares(tmp_path):
    raw = tiny_space(tmp_path, budget={"n_trials": 4, "epochs": 2, "data_shares": [0.125, 0.25, 0.5, 1]})
    del raw["study"]["pruner"]
    space = load_search_space(raw)  # no pruner named: successive halving keeping the top half after each share
    assert space.study.pruner == {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2}
    assert space.budget.rung_steps == (1, 2, 4, 8) and space.budget.max_resource == 8
    raw["study"]["pruner"] = {"type": "ranking"}
    with pytest.raises(InputError, match="study.pruner.type: ranking decides on epochs"):
        load_search_space(raw)
    raw["study"]["pruner"] = {"type": "hyperband", "max_resource": 9}
    with pytest.raises(InputError, match="exceeds the last share's step \\(8\\)"):
        load_search_space(raw)
    # a space without data_shares keeps its fingerprint (studies from before them still resume)
    plain = tiny_space(tmp_path)
    with_shares = tiny_space(tmp_path, budget={"data_shares": [0.5, 1]})
    assert load_search_space(plain).fingerprint() != load_search_space(with_shares).fingerprint()


def test_training_shares_are_nested_and_leave_validation_alone(tmp_path):
    raw = tiny_space(tmp_path, training_set={"systems": {"builtin": "emt-alloy", "n": 40, "seed": 0}})
    data = load_data(load_search_space(raw).options)
    quarter, half = data.training_share(0.25, 0), data.training_share(0.5, 0)
    assert (len(quarter.train), len(half.train)) == (round(0.25 * len(data.train)), round(0.5 * len(data.train)))
    ids = lambda dataset: {id(s) for s in dataset.structures}  # noqa: E731
    assert ids(quarter.train) < ids(half.train) < ids(data.train)
    assert quarter.val is data.val and data.training_share(1.0, 0) is data
    assert ids(data.training_share(0.25, 1).train) != ids(quarter.train)  # another seed, another draw
    assert np.array_equal(quarter.train.max_neighbors, [g.max_neighbors for g in quarter.train.graphs])


def test_trials_train_on_each_share_and_the_pruner_decides_after_each(tmp_path):
    raw = shares_space(tmp_path, {"type": "successive_halving", "reduction_factor": 2})
    result = run(load_search_space(raw), threads=1, out=lambda line: None)
    assert result.status == "completed"
    done = trials(tmp_path, "tiny")
    defaults, others = done[0], done[1:]
    # the defaults trial trains on all the data only (never stopped); the others report after each share they trained
    assert defaults.user_attrs["role"] == "defaults" and sorted(defaults.intermediate_values) == [4]
    assert defaults.user_attrs["compute"] == 2.0
    pruned = [t for t in others if t.state == TrialState.PRUNED]
    complete = [t for t in others if t.state == TrialState.COMPLETE]
    assert pruned and complete
    for t in complete:
        assert sorted(t.intermediate_values) == [1, 2, 4] and t.user_attrs["compute"] == pytest.approx(2 * sum(SHARES))
    for t in pruned:
        reached = max(t.intermediate_values)
        assert sorted(t.intermediate_values) == [1, 2, 4][: [1, 2, 4].index(reached) + 1]
        assert t.user_attrs["compute"] == pytest.approx(2 * sum(SHARES[: len(t.intermediate_values)]))
        share = {1: "1/4", 2: "1/2"}[reached]
        assert t.user_attrs["reason"].startswith(f"pruned after the share {share} of the training set by the successive_halving")
    # a smaller share keeps its curve, not its weights; all the data trains in the trial's folder as ever
    folder = tmp_path / "tiny" / "trials" / str(complete[0].number)
    assert (folder / "share-0.25" / "metrics.csv").is_file() and not (folder / "share-0.25" / "model.ckpt").exists()
    assert (folder / "model.ckpt").is_file() and (folder / "metrics.csv").is_file()
    # the last share is a plain trial: the same options trained on all the data give the same value
    best = complete[0]
    options = best.user_attrs["options"]
    metric, chosen = BestSoFar("val_forces_rmse"), None
    space = load_search_space(raw)
    data = load_data(space.options_for(best.user_attrs["config"]), cutoff=space.max_cutoff)
    train(options, on_epoch=lambda epoch, metrics: metric.update(epoch, metrics) and False,
          data=data.at_cutoff(options["architecture"]["model"]["cutoff"]), log=lambda line: None)
    assert best.value == pytest.approx(metric.value, rel=1e-6)


def test_the_report_reads_the_ranking_over_the_shares(tmp_path):
    raw = shares_space(tmp_path, {"type": "none"}, n_trials=6)
    run(load_search_space(raw), threads=1, out=lambda line: None)
    data = collect("tiny", tmp_path)
    assert data.data_shares == tuple(SHARES)
    caption, figure = early_ranking(data)
    assert "at each share of the training set" in caption and "over 5 completed trials of 3 shares" in caption
    assert list(figure.data[0].x) == ["share 1/4", "share 1/2"]
    caption, figure = learning_curves(data)
    assert "per share of the training set" in caption
    assert sorted({x for trace in figure.data for x in trace.x}) == [0.25, 0.5, 1.0]
    assert data.trials["compute"].tolist() == pytest.approx([2.0] + [3.5] * 5)
