"""TPE that compares pruned and completed trials at one common epoch (``study.sampler.rank_at: rung``).

Optuna's TPE splits the finished trials into a "good" and a "bad" group by ranking every completed trial by its
final value ahead of every pruned one (those by the last epoch they reached, then by their value there). Under a
successive-halving or hyperband pruner the first trials complete whatever they are worth (the pruner promotes a
trial while it is the best of fewer than ``reduction_factor`` at a rung), so on data with a plateau (the built-in
molecules: most learning rates sit at the force RMSE of zero forces for the first epochs) the good group is the few
completed trials, plateau ones included, and TPE goes on proposing plateau configurations while better ones, pruned
at a later rung, count as bad.

``RungTPESampler`` shows TPE the same trials ranked at one epoch instead: the deepest epoch that at least
``rung_trials`` finished trials reached (all of them, while fewer have finished). A trial that reached it counts as
completed with its value there; one pruned before it stays pruned (ranked below all of those). Parameters, their
distributions and the running trials (for the constant liar) are unchanged; with no pruned trial it is plain TPE.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUNG_TRIALS = 8  # default `rung_trials`: enough trials at the rung for TPE's good group (a tenth) and bad one


def rung_step(trials: list, rung_trials: int) -> int | None:
    """The deepest step (0-based epoch) reported by at least ``rung_trials`` of these trials (by all of them, while
    there are fewer); None where no step qualifies."""
    need = min(rung_trials, len(trials))
    counts: dict[int, int] = {}
    for trial in trials:
        for step in trial.intermediate_values:
            counts[step] = counts.get(step, 0) + 1
    steps = [step for step, count in counts.items() if count >= need]
    return max(steps) if need and steps else None


class RungTPESampler(optuna.samplers.BaseSampler):
    """``tpe`` (an ``optuna.samplers.TPESampler``) fed the study's trials ranked at their common rung."""

    def __init__(self, tpe: optuna.samplers.TPESampler, rung_trials: int = RUNG_TRIALS):
        self._tpe = tpe
        self._rung_trials = rung_trials

    def _ranked(self, study, trial):
        """(study, trial), or an in-memory copy of both in which each trial that reached the rung is completed with its
        value there. The copy keeps every trial at its number (TPE's constant liar tells the current one by it) and the
        running trials' shared parameters."""
        if len(study.directions) > 1:
            return study, trial
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in FINISHED and t.number != trial.number]
        if not any(t.state == TrialState.PRUNED for t in finished):
            return study, trial
        step = rung_step(finished, self._rung_trials)
        if step is None:
            return study, trial
        storage = optuna.storages.InMemoryStorage()
        storage.create_new_study(directions=study.directions, study_name="rung")
        view = optuna.Study(study_name="rung", storage=storage)
        copies = []
        for t in trials:
            value = t.intermediate_values.get(step)
            if t.state in FINISHED and value is not None and math.isfinite(value):  # reached the rung: its value there
                copies.append(optuna.trial.create_trial(state=TrialState.COMPLETE, value=value, params=t.params,
                                                        distributions=t.distributions))
            else:  # pruned before the rung (or diverged there), below every trial that reached it; running; failed
                state = TrialState.PRUNED if t.state in FINISHED else t.state
                copies.append(optuna.trial.create_trial(
                    state=state, params=t.params, distributions=t.distributions, system_attrs=t.system_attrs,
                    intermediate_values=dict(t.intermediate_values)))
        view.add_trials(copies)
        return view, view.get_trials(deepcopy=False)[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)  # which parameters, not their values

    def sample_relative(self, study, trial, search_space):
        view, copy = self._ranked(study, trial)
        params = self._tpe.sample_relative(view, copy, search_space)
        if view is not study:  # what TPE shared with the other workers (constant liar), onto the real trial
            shared = view._storage.get_trial(copy._trial_id).system_attrs
            for key, value in shared.items():
                if key not in copy.system_attrs:
                    study._storage.set_trial_system_attr(trial._trial_id, key, value)
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        view, copy = self._ranked(study, trial)
        return self._tpe.sample_independent(view, copy, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()
