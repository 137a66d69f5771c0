"""What proposes and stops a stage's Ray trials: ``StudySearch`` (Optuna's sampler of ``study.sampler``, told what the
study recorded before, holding back repeats of running trials), ASHA that never stops the defaults trial, the ranking
rule of nanopet/tune/pruning.py as a Ray scheduler, the ``TuneConfig`` of a stage, and the progress lines.""" 

from __future__ import annotations

import json
import time
from typing import Callable

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from nanopet.tune.pruning import RankingRule, finished_curves
from nanopet.tune.space import SearchSpace
from nanopet.tune.studies import defaults_point, stage_sampler
from nanopet.tune.params import decode, distribution, encode
from nanopet.tune.text import short
from nanopet.tune.trial import DEFAULTS, finished_twin, finite, protected, RAY_PREFIX, STOPPED_FILE, trial_folder
from nanopet.tune.progress import copied_line, epoch_line, progress_due
from nanopet.tune.text import share_text
from nanopet.tune.ray_driver.names import (COST, DUPLICATE, HELD_AT_MOST, OBJECTIVE, TIME_ATTR)

_DEADLINE: list = [None]  # in the driver process: when the searcher stops proposing trials (budget.timeout)


def tune_config(space: SearchSpace, stage, study: optuna.Study, workers: int, n_trials: int | None, points: list[dict] | None):
    from ray import tune

    distributions = {name: distribution(space.parameters[name]) for name in stage.parameters}
    defaults = defaults_point(space, stage)  # first (later stages start from the carried-in best, already in the study)
    first = [defaults] if defaults is not None else []
    first += [{k: encode(v) for k, v in point.items()} for point in points or []]
    tried = [t.params for t in study.get_trials(deepcopy=False)]
    first = [point for point in first if point not in tried]  # after a timeout, the next experiment skips them
    defaults = defaults if defaults in first else None
    objective = space.objective
    metric, mode = ([OBJECTIVE, COST], ["min", "min"]) if objective.n_values > 1 else (OBJECTIVE, "min")
    searcher = StudySearch(space=distributions, metric=metric, mode=mode, sampler=stage_sampler(space, stage, len(study.trials)),
                           points_to_evaluate=first or None, history=history(study, stage))
    scheduler = None  # `pruner: {type: none}` (and two-objective fronts): every trial runs all epochs
    if space.study.pruner["type"] == "ranking":
        scheduler = ranking_scheduler(space, defaults, finished_curves(study, space.budget.epochs))
    elif space.study.pruner["type"] != "none":
        grace, factor = asha_settings(space)
        scheduler = asha(defaults, time_attr=TIME_ATTR, metric=OBJECTIVE, mode="min", max_t=space.budget.max_resource,
                         grace_period=grace, reduction_factor=factor)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1 if n_trials is None else n_trials,
                           max_concurrent_trials=workers, reuse_actors=True)


def history(study: optuna.Study, stage) -> list[tuple]:
    """(params, values, state, intermediate values, number) of the stage's finished trials, to tell the searcher
    of a new experiment what earlier ones (and the carried-in best) found; failed ones too, so an enumerated
    stage does not propose their configurations again."""
    told = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if set(t.params) != set(stage.parameters):
            continue
        if t.state == TrialState.PRUNED and not t.intermediate_values:
            continue
        values = t.values if t.state == TrialState.COMPLETE else None
        told.append(({k: t.params[k] for k in stage.parameters}, values, t.state, dict(t.intermediate_values), t.number))
    return told


class ProgressLines(Callback):
    """A line when a trial starts, every few epochs, and when it ends (as the Optuna driver prints)."""

    def __init__(self, label: str, epochs: int, metric: str, out: Callable[[str], None],
                 pace: Callable[[float], None] | None = None, pruned_by: str = "ASHA",
                 derived: Callable[[dict], dict] | None = None, shares: bool = False):
        self.label, self.epochs, self.metric, self.out, self.pace = label, epochs, metric, out, pace
        self.pruned_by, self.derived, self.shares = pruned_by, derived or (lambda params: {}), shares  # shares: one result each
        self.last: dict = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        params = {k: decode(v) for k, v in (trial.config or {}).items() if k != DUPLICATE}
        shown = ", ".join(f"{k}={short(v)}" for k, v in {**params, **self.derived(params)}.items())
        self.out(f"trial {trial.trial_id} [{self.label}] {shown}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get(TIME_ATTR, 0))
        self.last[trial.trial_id] = result
        share = float(result.get("share", 1.0)) if self.shares and finite(result.get("share")) else 1.0
        if self.pace is not None and finite(result.get("epoch_time")):
            self.pace(float(result["epoch_time"]) / share)  # an epoch on all the training set
        if self.shares and finite(result.get(OBJECTIVE)):  # one result per share, at its best epoch
            self.out(f"trial {trial.trial_id} share {share_text(share)} of the training set: {self.metric} "
                     f"{float(result[OBJECTIVE]):.4g} at its best val_loss")
        elif progress_due(epoch, self.epochs):
            metric = result.get(self.metric)
            if finite(metric):
                self.out(epoch_line(trial.trial_id, epoch, self.epochs, self.metric, float(metric), float(result[OBJECTIVE])))

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = self.last.pop(trial.trial_id, {})
        epoch = int(result.get(TIME_ATTR, 0))
        if result.get(DUPLICATE):
            twin = json.loads(result[DUPLICATE])
            which = f"trial {twin['ray_trial_id']}" if "ray_trial_id" in twin else f"trial {twin['number']} of the study"
            self.out(copied_line(trial.trial_id, which, None if twin["pruned"] else f"{float(result[OBJECTIVE]):.4g}"))
        elif result.get("finished"):
            self.out(f"trial {trial.trial_id} COMPLETE {float(result[OBJECTIVE]):.4g} (best epoch {result.get('best_epoch')})")
        elif self.shares:
            share = float(result.get("share", 1.0)) if finite(result.get("share")) else 1.0
            self.out(f"trial {trial.trial_id} PRUNED: stopped by {self.pruned_by} after the share {share_text(share)} of the training set")
        else:
            self.out(f"trial {trial.trial_id} PRUNED: stopped by {self.pruned_by} after epoch {epoch}/{self.epochs}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.out(f"trial {trial.trial_id} failed after epoch {int(self.last.get(trial.trial_id, {}).get(TIME_ATTR, 0))}; "
                 "Ray retries it from its newest checkpoint while retries are left")


class StudySearch(OptunaSearch):
    """OptunaSearch that (a) knows the trials earlier experiments of the stage ran (``history``), (b) proposes
    nothing after the search's deadline (running trials finish, as with the Optuna driver), (c) tells the
    sampler that a trial ASHA stopped was pruned and a failed one failed (OptunaSearch tells their last value
    as a complete result), (d) marks a proposal that repeats a finished (completed or stopped) trial's
    parameters: the trainable then reports that trial's result instead of training again (training is
    deterministic; small discrete stages propose repeats often), and the recorded trial copies it, as the
    Optuna driver does, and (e) holds back a proposal that repeats a running trial until that trial ends
    (then it is such a copy, or trains if that trial failed), asking for other proposals meanwhile: free
    slots train other configurations, or wait if every proposal is a repeat."""

    def __init__(self, *args, history: list | None = None, **kwargs):
        self._history = history or []
        self._ended: dict[int, dict] = {}  # number in the searcher's study -> the finished trial in Ray or the storage
        self._held: list[tuple] = []  # (proposal, Ray id of the running trial it repeats)
        self._reported: dict[str, set] = {}  # Ray trial id -> the iterations told to the sampler's trial
        super().__init__(*args, **kwargs)

    def on_trial_result(self, trial_id: str, result: dict):
        # a trial Ray restarted from its checkpoint (its worker died) reports the iterations after that checkpoint
        # again; the sampler's trial keeps the first report of each (training resumes exactly: the same value),
        # without Optuna's "already reported" warning for every repeated one
        reported = self._reported.setdefault(trial_id, set())
        if result.get(TRAINING_ITERATION) in reported:
            return
        reported.add(result.get(TRAINING_ITERATION))
        super().on_trial_result(trial_id, result)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        single = not isinstance(mode, list)
        for params, values, state, intermediate, number in self._history:
            self._ot_study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self._space, values=values, state=state,
                intermediate_values=intermediate if single else None))
            if state != TrialState.FAIL:  # a repeat of a failed trial trains (as with the Optuna driver)
                self._ended[len(self._ot_study.get_trials(deepcopy=False)) - 1] = {"number": number}

    def suggest(self, trial_id: str):
        if _DEADLINE[0] is not None and time.time() >= _DEADLINE[0]:
            return Searcher.FINISHED
        for k, (proposed, running) in enumerate(self._held):  # a held repeat whose twin has ended goes first
            if running in self._completed_trials:
                del self._held[k]
                self._ot_trials[trial_id] = proposed
                return self._copy_of_ended(super().suggest(trial_id), proposed)
        while len(self._held) < HELD_AT_MOST:
            config = super().suggest(trial_id)
            proposed = self._ot_trials[trial_id]
            marked = self._copy_of_ended(config, proposed)
            running = next((other_id for other_id, other in self._ot_trials.items() if other_id not in self._completed_trials
                            and other.number != proposed.number and other.params == proposed.params), None)
            if marked is not config or running is None:
                return marked
            self._held.append((proposed, running))
            del self._ot_trials[trial_id]
        return None  # every proposal repeats a running trial: ask again when one ends

    def _copy_of_ended(self, config: dict, proposed) -> dict:
        """``config``, marked as a copy if a finished trial had the same parameters (a completed one first)."""
        twin = finished_twin(self._ot_study, proposed.number, proposed.params, among=self._ended)
        if twin is None:
            return config
        curve = twin.intermediate_values
        return {**config, DUPLICATE: json.dumps({**self._ended[twin.number], "values": twin.values, "pruned": twin.state == TrialState.PRUNED,
                                                 "last": curve[max(curve)] if curve else None, "epochs": len(curve),
                                                 "step": max(curve) if curve else 0})}  # the last step: data shares

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        finished = bool(result and result.get("finished")) and not error
        super().on_trial_complete(trial_id, result=result if finished else None, error=error)
        if result and not error and trial_id in self._ot_trials:  # completed, or stopped by ASHA
            self._ended[self._ot_trials[trial_id].number] = {"ray_trial_id": trial_id}


def asha(defaults: dict | None, **settings):
    """Ray's ASHA scheduler, except that it never stops the defaults trial (its parameters: ``defaults``) early: the
    study measures its gain over the defaults from it, as the Optuna driver, which never prunes it either. Its
    results still count in the rungs the other trials are compared with."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class KeepDefaults(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and protected(role_of(trial, defaults)) and result.get(TIME_ATTR, 0) < settings["max_t"]:
                self._num_stopped -= 1
                return TrialScheduler.CONTINUE
            return action

    return KeepDefaults(**settings)


def pruned_by(space: SearchSpace) -> str:
    """Who stops Ray trials early, for the progress lines."""
    return "the ranking pruner" if space.study.pruner["type"] == "ranking" else "ASHA"


def role_of(trial, defaults: dict | None) -> str | None:
    """DEFAULTS for the Ray trial with the defaults' parameters (``defaults``: None when no trial has them)."""
    return role_in(trial.config or {}, defaults)


def role_in(config: dict, defaults: dict | None) -> str | None:
    """DEFAULTS for a trial config with the defaults' parameters (as stored), else None."""
    return DEFAULTS if defaults is not None and {k: config.get(k) for k in defaults} == defaults else None


def ranking_scheduler(space: SearchSpace, defaults: dict | None, finished: list[list[float]]):
    """``pruner: {type: ranking}`` as a Ray scheduler: ``RankingRule.decide`` (nanopet/tune/pruning.py) after every
    epoch of every trial but the defaults, against the curves of the trials that ran all epochs (``finished``:
    those recorded before, from earlier experiments of the stage). Why it stopped a trial goes into the
    trial's ``stopped.txt``, which its record reads."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    rule, epochs = RankingRule.of(space.study.pruner, space.budget.epochs), space.budget.epochs

    class Ranking(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.curves, self.finished = {}, [list(curve) for curve in finished]

        def on_trial_result(self, tune_controller, trial, result):
            if result.get(DUPLICATE) or not finite(result.get(OBJECTIVE)):
                return TrialScheduler.CONTINUE
            epoch = int(result.get(TIME_ATTR, 0)) - 1
            curve = self.curves.setdefault(trial.trial_id, [])
            del curve[epoch:]  # a trial restored from its checkpoint reports those epochs again
            curve.append(float(result[OBJECTIVE]))
            if len(curve) >= epochs:
                self.finished.append(curve)
                return TrialScheduler.CONTINUE
            reason = None if protected(role_of(trial, defaults)) else rule.decide(epoch, curve[-1], self.finished)
            if reason is None:
                return TrialScheduler.CONTINUE
            folder = trial_folder(space.study.path, RAY_PREFIX + trial.trial_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STOPPED_FILE).write_text(f"pruned after epoch {epoch + 1}/{epochs} by the ranking pruner "
                                               f"({space.objective.metric} {curve[-1]:.4g}: {reason})\n")
            return TrialScheduler.STOP

    return Ranking()


def asha_settings(space: SearchSpace) -> tuple[int, int]:
    """ASHA's grace period (epochs, or under budget.data_shares a share's step) and reduction factor, from the space's
    pruner settings."""
    pruner = space.study.pruner
    grace = pruner.get("min_resource", pruner.get("n_warmup_steps", 1))
    grace = min(max(1, int(grace if isinstance(grace, (int, float)) else 1)), space.budget.max_resource)
    return grace, max(2, int(pruner.get("reduction_factor", 2)))
