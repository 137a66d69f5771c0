"""One trial: parameters -> options -> ``trial.train_trial`` (the trainer, on each data share with
``budget.data_shares``) with an ``on_epoch`` that reports and prunes.

The trial's value is the metric at the best-validation-loss epoch, whose weights ``model.ckpt``
holds (times ``cost ** cost_weight`` for a cost-aware objective). Every epoch reports that value
as it stands so far, so pruners compare what each trial would deliver if stopped now, and one
noisy epoch does not prune a trial. An error ends the trial only:

- pruned: state PRUNED, ``reason`` says by whom and at which epoch; curve kept (intermediate
  values in the storage, every epoch in ``metrics.csv``);
- non-finite loss, CUDA out of memory, invalid combination, any other exception: state FAIL with
  ``reason`` (and ``error.txt`` with the traceback in the trial folder);
- Ctrl-C: the running epoch finishes, then the trial is marked FAIL ("interrupted") and re-queued,
  so re-running the command trains it again.

Artifacts: ``<study dir>/trials/<prefix><number>/`` with model.ckpt (completed trials),
metrics.csv, train.log and trial.json.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from nanopet.data.splits import Data
from nanopet.errors import InputError, NonFiniteLossError
from nanopet.tune.optuna_driver.lease import claim, fail_and_retry, Lease, recover
from nanopet.tune.space import SearchSpace
from nanopet.tune.plan import Stage
from nanopet.tune.text import short
from nanopet.tune.params import suggest
from nanopet.tune.trial import best_metrics, EpochBudget, finished_twin, measure_cost, repeat_of, Stopped, timing, train_trial, trial_folder, TrialData, TrialEpochs, TrialRecord, user_attrs
from nanopet.tune.progress import copied_line, describe_values, epoch_line, pace_line, PaceLine, progress_due

PRUNE_REASONS = {
    "median": "worse than the median of earlier trials at this epoch",
    "hyperband": "not in the top fraction of its Hyperband bracket at this rung",
    "successive_halving": "not in the top fraction at this successive-halving rung",
}


WAIT_SECONDS = 1.0  # polling while a trial waits for another worker's trial with the same parameters
SETTLING_SECONDS = 30.0  # an earlier trial asked longer ago than this has suggested all its parameters
SETTLING_POLL_SECONDS = 0.1
__all__ = ["TrialRunner", "TrialInterrupted", "PaceLine", "pace_line", "epoch_line", "trial_dir", "keep_best_checkpoints"]


class TrialInterrupted(Exception):
    """Raised between epochs when a stop was requested (Ctrl-C / SIGTERM)."""


def trial_dir(space: SearchSpace, stage: Stage, number: int) -> Path:
    return trial_folder(space.study.path, f"{stage.trial_prefix}{number}")


class OptunaEngine:
    """The trial layer's ``Engine`` on an Optuna trial: ``trial.report`` and the study's pruner (one objective)."""

    def __init__(self, trial: optuna.Trial, space: SearchSpace):
        self.trial, self.space = trial, space
        self.single = space.objective.n_values == 1

    def report(self, epoch: int, value: float, metrics: dict, best) -> None:
        if self.single:
            self.trial.report(value, epoch)

    def should_stop(self, epoch: int, value: float, where: str | None = None) -> str | None:
        if not (self.single and self.trial.should_prune()):
            return None
        kind, space = self.space.study.pruner["type"], self.space
        why = getattr(self.trial.study.pruner, "reasons", {}).pop(self.trial.number, None)  # the ranking pruner says why
        return (f"pruned {where or f'after epoch {epoch + 1}/{space.budget.epochs}'} by the {kind} pruner "
                f"({space.objective.metric} {value:.4g}: {why or PRUNE_REASONS.get(kind, 'pruned')})")


class TrialRunner:
    """Runs trials of one worker on its preloaded data (neighbour lists at the space's largest cutoff)."""

    def __init__(self, space: SearchSpace, data: Data, stop_requested: Callable[[], bool] = lambda: False,
                 out: Callable[[str], None] = print, prefix: str = "", pace: PaceLine | None = None):
        self.space, self.data, self.stop_requested, self.out, self.prefix = space, data, stop_requested, out, prefix
        self.pace = pace
        self.trial_data = TrialData(data)
        self.epoch_budget = EpochBudget(space)

    # -----------------------------------------------------------------------------------------

    def run(self, study: optuna.Study, trial: optuna.Trial, stage: Stage, fixed: dict) -> optuna.trial.FrozenTrial:
        space, objective = self.space, self.space.objective
        started = time.perf_counter()
        claim(study, trial)
        values = space.trial_values(fixed, {name: suggest(trial, space.parameters[name]) for name in stage.parameters})
        moved = {k: v for k, v in values.items() if k not in stage.parameters and v != fixed.get(k, v)}  # learning_rate_scaling
        shown = ", ".join(f"{k}={short(v)}" for k, v in {**{k: values[k] for k in stage.parameters}, **moved}.items())
        role = trial.user_attrs.get("role")
        self.out(f"{self.prefix}trial {trial.number} [{stage.label}] {shown}" + (f" ({role})" if role else "")
                 + (f" (retry of {trial.user_attrs['retry_of']})" if "retry_of" in trial.user_attrs else ""))
        twin = self.wait_for_twin(study, trial)
        if twin is not None:
            return self.copy_result(study, trial, twin, values)
        folder = trial_dir(space, stage, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        for old in ("metrics.csv", "train.log", "model.ckpt", "error.txt"):  # a reused folder (e.g. a fresh study)
            (folder / old).unlink(missing_ok=True)
        record = TrialRecord(trial=f"{study.study_name}#{trial.number}", config=values, artifacts=str(folder))
        self._set(trial, record)
        written = {"number": trial.number, "study": study.study_name, "stage": stage.index, "config": values}
        state, result_values, reason, epochs = TrialState.FAIL, None, None, None

        with Lease(study, trial, space.study.heartbeat_interval), open(folder / "train.log", "a") as log_file:
            try:
                record.options = space.options_for(values)  # as searched: retrain needs only the storage
                self._set(trial, record)
                options = space.options_for(values)
                options["architecture"]["training"]["log_interval"] = 1  # metrics.csv keeps every epoch
                written["options"] = options
                data = self.trial_data.for_options(options)
                if objective.needs_cost:
                    record.cost = measure_cost(space, options, data, self.trial_data.atomic_types)
                given, record.epoch_seconds, note = self.epoch_budget(options, data)
                options["architecture"]["training"]["num_epochs"] = record.epoch_budget = given
                self._set(trial, record)
                if note:
                    self.out(f"{self.prefix}trial {trial.number}: {note}")

                def between(epoch: int, metric: float, value: float) -> None:
                    if progress_due(epoch + 1, given):
                        self.out(self.prefix + epoch_line(trial.number, epoch + 1, given, objective.metric,
                                                          metric, epochs.best.value, epochs.share))
                    if self.stop_requested():
                        raise TrialInterrupted(f"interrupted by the user after epoch {epoch + 1}")

                epochs = TrialEpochs(space, OptunaEngine(trial, space), record.cost, role, between, self.pace, epochs=given)

                def log(message: str) -> None:
                    log_file.write(message + "\n")
                    log_file.flush()

                result = train_trial(space, options, data, epochs, folder, log)
                best = next(row for row in result.history if row["epoch"] == result.best_epoch)
                result_values = objective.values(best[objective.metric], record.cost)
                record.best_epoch, record.epochs, record.metrics = result.best_epoch, len(result.history), best_metrics(best)
                state = TrialState.COMPLETE
            except Stopped as pruned:
                state, reason = TrialState.PRUNED, str(pruned) or "pruned"
            except (TrialInterrupted, KeyboardInterrupt) as stop:
                reason = str(stop) or "interrupted by the user"
                record.timing = self._timing(started, epochs)
                self._set(trial, record)
                fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], reason, space.study.max_retries,
                               count_attempt=False)
                self._write(folder, written, "FAIL", None, reason)
                self.out(f"{self.prefix}trial {trial.number} FAIL: {reason}; re-queued for the next run")
                raise
            except NonFiniteLossError as error:
                reason = f"non-finite loss: {error}"
            except InputError as error:
                reason = f"invalid configuration: {error}"
            except torch.cuda.OutOfMemoryError as error:
                reason = f"CUDA out of memory: {str(error).splitlines()[0]}"
                torch.cuda.empty_cache()
            except Exception as error:  # noqa: BLE001 - any trial error ends that trial only
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                (folder / "error.txt").write_text(traceback.format_exc())

        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # model.ckpt holds what a trial keeps
        record.timing, record.reason = self._timing(started, epochs), reason
        record.compute = epochs.compute if epochs is not None and epochs.compute else None
        self._set(trial, record)
        frozen = study.tell(trial, result_values, state=state)
        self._write(folder, written, frozen.state.name, frozen.values, reason)
        if frozen.state == TrialState.COMPLETE and space.study.keep_checkpoints is not None:
            keep_best_checkpoints(study, space.study.keep_checkpoints)
        text = {TrialState.COMPLETE: f"COMPLETE {describe_values(space, frozen.values)} (best epoch {record.best_epoch})",
                TrialState.PRUNED: f"PRUNED: {reason}", TrialState.FAIL: f"FAIL: {reason}"}[frozen.state]
        self.out(f"{self.prefix}trial {trial.number} {text} in {time.perf_counter() - started:.1f} s")
        return frozen

    @staticmethod
    def _set(trial: optuna.Trial, record: TrialRecord) -> None:
        """Write the record's attributes that changed (the storage sees a running trial's as they come)."""
        attrs = trial.user_attrs
        for key, value in user_attrs(record).items():
            if key not in attrs or attrs[key] != value:
                trial.set_user_attr(key, value)

    # -----------------------------------------------------------------------------------------
    def wait_for_twin(self, study: optuna.Study, trial: optuna.Trial):
        """While an earlier trial with the same parameters runs on another worker, wait for it (training them
        again would end later with the same result; the sampler proposes repeats in small discrete stages, most
        often with several workers). Returns the twin if it completed or was pruned, None if it failed (then this
        trial trains). Earlier trials only: two workers never wait for each other."""
        def earlier_running():
            """Earlier running trials with these parameters, and earlier ones another worker asked for a moment
            ago and may still be suggesting parameters to (workers starting together ask within milliseconds)."""
            twins, settling, now = [], [], datetime.datetime.now()
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.number >= trial.number:
                    continue
                if t.params == trial.params:
                    twins.append(t)
                elif not set(trial.params) <= set(t.params) and t.datetime_start is not None \
                        and (now - t.datetime_start).total_seconds() < SETTLING_SECONDS:
                    settling.append(t)
            return twins, settling

        settings, waited = self.space.study, None
        with contextlib.ExitStack() as held:
            while True:
                twin, (running, settling) = finished_twin(study, trial.number, trial.params), earlier_running()
                if twin is not None or not (running or settling):
                    return twin
                if not running:  # see the parameters of the earlier trial first
                    time.sleep(SETTLING_POLL_SECONDS)
                    continue
                if waited is None:  # other workers must see this trial's worker alive while it waits
                    held.enter_context(Lease(study, trial, settings.heartbeat_interval))
                if waited != running[0].number:
                    waited = running[0].number
                    self.out(f"{self.prefix}trial {trial.number}: same parameters as trial {waited}, running now: waiting for its result")
                if self.stop_requested():
                    reason = f"interrupted by the user while waiting for trial {waited}"
                    fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], reason, settings.max_retries,
                                   count_attempt=False)
                    self.out(f"{self.prefix}trial {trial.number} FAIL: {reason}; re-queued for the next run")
                    raise TrialInterrupted(reason)
                time.sleep(WAIT_SECONDS)
                recover(study, settings.grace_period, settings.max_retries, log=lambda m: self.out(self.prefix + m))

    def copy_result(self, study, trial, twin, values: dict):
        """Record ``trial`` as a repeat of the finished ``twin``: its result, not trained again."""
        outcome = repeat_of(twin)
        for key, value in {"config": values, **outcome.attrs}.items():
            trial.set_user_attr(key, value)
        for step, value in outcome.intermediate.items():
            trial.report(value, step)
        if outcome.state == TrialState.PRUNED:
            frozen = study.tell(trial, state=TrialState.PRUNED)
            self.out(f"{self.prefix}trial {trial.number} PRUNED: {outcome.attrs['reason']}")
            return frozen
        frozen = study.tell(trial, outcome.values)
        self.out(self.prefix + copied_line(trial.number, f"trial {twin.number}", describe_values(self.space, frozen.values)))
        return frozen

    def _timing(self, started: float, epochs: TrialEpochs | None) -> dict:
        wall = time.perf_counter() - started
        first = epochs.first_epoch_at if epochs is not None else None
        setup = (first - started) if first is not None else wall
        return timing(wall, setup, self.trial_data.filter_seconds, epochs.epochs_time if epochs is not None else 0.0)

    @staticmethod
    def _write(folder: Path, record: dict, state: str, values, reason) -> None:
        record = {**record, "state": state, "values": values, "reason": reason}
        (folder / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def keep_best_checkpoints(study: optuna.Study, keep: int) -> None:
    """Delete model.ckpt of completed trials outside the best ``keep`` (two objectives: outside the front)."""
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("role") != "carried" and "artifacts" in t.user_attrs]
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        drop = [t for t in completed if t.number not in front]
    else:
        drop = sorted(completed, key=lambda t: t.values[0])[keep:]
    for t in drop:
        (Path(t.user_attrs["artifacts"]) / "model.ckpt").unlink(missing_ok=True)


