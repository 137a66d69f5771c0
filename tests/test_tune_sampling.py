"""TPE ranking trials at their common rung (nanopet/tune/sampling.py, ``study.sampler.rank_at: rung``): where a
pruner completed plateau trials early and pruned better ones at a later rung, Optuna's TPE takes the completed
plateau trials for its good group; ranked at the rung, TPE proposes near the trials that were better there."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from tune_support import tiny_space, trials

from nanopet.tune import load_search_space, run
from nanopet.tune.sampling import RungTPESampler, rung_step
from nanopet.tune.studies import make_sampler

X = FloatDistribution(0.0, 1.0)


def curve(epochs: int, start: float, end: float) -> dict:
    return {k: start + (end - start) * k / 26 for k in range(epochs)}


def plateau_study() -> optuna.Study:
    """Two plateau trials (x ~ 0.9) completed all 27 epochs; eight better ones (x ~ 0.2) were pruned after epoch 9,
    twenty (x from 0.3 to 0.7) after epoch 3, all of those also on the plateau there."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    made = [optuna.trial.create_trial(params={"x": x}, distributions={"x": X}, value=1.47,
                                      intermediate_values=curve(27, 1.47, 1.47)) for x in (0.88, 0.92)]
    made += [optuna.trial.create_trial(params={"x": 0.16 + 0.01 * k}, distributions={"x": X}, state=TrialState.PRUNED,
                                       intermediate_values=curve(9, 1.47, 0.4)) for k in range(8)]
    made += [optuna.trial.create_trial(params={"x": 0.3 + 0.02 * k}, distributions={"x": X}, state=TrialState.PRUNED,
                                       intermediate_values=curve(3, 1.47, 1.47)) for k in range(20)]
    study.add_trials(made)
    return study


def proposals(sampler, study, n: int = 30) -> list:
    study.sampler = sampler
    values = []
    for _ in range(n):
        trial = study.ask()
        values.append(trial.suggest_float("x", 0.0, 1.0))
        study.tell(trial, state=TrialState.FAIL)  # not a finished trial: the next proposal sees the same history
    return values


def test_rung_step_is_the_deepest_epoch_enough_trials_reached():
    made = [optuna.trial.create_trial(params={}, distributions={}, state=TrialState.PRUNED, intermediate_values=curve(e, 1, 0))
            for e in (27, 27, 9, 9, 9, 3, 3, 3)]
    assert rung_step(made, 2) == 26
    assert rung_step(made, 3) == 8 and rung_step(made, 5) == 8
    assert rung_step(made, 6) == 2 and rung_step(made, 100) == 2  # fewer trials than asked: the step all reached
    assert rung_step([], 8) is None


def test_ranked_at_the_rung_tpe_proposes_near_the_trials_better_there():
    settings = {"type": "tpe", "seed": 0, "n_startup_trials": 3}
    final = statistics.median(proposals(make_sampler(settings), plateau_study()))
    rung = statistics.median(proposals(make_sampler({**settings, "rank_at": "rung"}), plateau_study()))
    assert final > 0.6  # Optuna's ranking: the completed plateau trials are its good group
    assert rung < 0.3, rung  # ranked after epoch 9: by the eight pruned there (x 0.16-0.23), better than the plateau two


def test_no_pruned_trial_is_plain_tpe_and_the_constant_liar_still_shares():
    settings = {"type": "tpe", "seed": 3, "n_startup_trials": 2, "multivariate": True, "constant_liar": True}
    ours, theirs = (optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=sampler)
                    for sampler in (make_sampler({**settings, "rank_at": "rung"}), make_sampler(settings)))
    assert isinstance(ours.sampler, RungTPESampler)
    for study in (ours, theirs):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2, n_trials=8)
    assert [t.params for t in ours.trials] == [t.params for t in theirs.trials]  # nothing pruned: the same proposals
    study = plateau_study()
    study.sampler = make_sampler({**settings, "rank_at": "rung"})
    running = study.ask()
    running.suggest_float("x", 0.0, 1.0)
    shared = study._storage.get_trial(running._trial_id).system_attrs
    assert any(key.startswith("tpe:relative_params") for key in shared), shared  # the other workers see its parameters


def test_a_search_with_rank_at_rung_runs_and_prunes(tmp_path):
    raw = tiny_space(tmp_path, study={"sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2, "rank_at": "rung",
                                                  "rung_trials": 2},
                                      "pruner": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2}},
                     parameters={"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
                     budget={"n_trials": 6, "epochs": 4})
    space = load_search_space(raw)
    assert space.study.sampler["rank_at"] == "rung"
    run(space, threads=1, out=lambda line: None)
    done = trials(tmp_path, "tiny")
    assert len(done) == 6 and any(t.state == TrialState.PRUNED for t in done)


@pytest.mark.parametrize("settings,message", [
    ({"rank_at": "first"}, "study.sampler.rank_at: must be final (Optuna's: completed trials ahead of pruned ones) or rung"),
    ({"rung_trials": 0}, "study.sampler.rung_trials: must be >= 1, got 0"),
])
def test_rank_at_settings_are_checked(tmp_path, settings, message):
    from nanopet.errors import InputError

    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_search_space(tiny_space(tmp_path, study={"sampler": {"type": "tpe", **settings}}))


def test_the_ray_searcher_ranks_its_history_at_the_rung_too():
    """The Ray driver's searcher (an OptunaSearch) uses the same sampler of ``study.sampler``; its history (the
    trials of earlier experiments, pruned ones with their epochs) is ranked at the rung."""
    from nanopet.tune.ray_driver import names, search

    history = [(t.params, t.values, t.state, t.intermediate_values, t.number) for t in plateau_study().trials]
    medians = {}
    for rank in ("final", "rung"):
        searcher = search.StudySearch(space={"x": X}, metric=names.OBJECTIVE, mode="min", history=history,
                                          sampler=make_sampler({"type": "tpe", "seed": 0, "n_startup_trials": 3, "rank_at": rank}))
        medians[rank] = statistics.median(searcher.suggest(f"t{k}")["x"] for k in range(15))
    assert medians["final"] > 0.6 and medians["rung"] < 0.3, medians
