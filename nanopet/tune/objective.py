"""One trial: parameters -> options -> ``nanopet.train.train`` with an ``on_epoch`` that reports and prunes.

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
import math
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from nanopet.errors import InputError, NonFiniteLossError
from nanopet.model import NanoPET
from nanopet.train import Data, train
from nanopet.tune.lease import Lease, claim, fail_and_retry, recover
from nanopet.tune.space import SearchSpace
from nanopet.tune.study import Stage, copied_reason, finished_twin, plural, result_attrs, short, suggest

PRUNE_REASONS = {
    "median": "worse than the median of earlier trials at this epoch",
    "hyperband": "not in the top fraction of its Hyperband bracket at this rung",
    "successive_halving": "not in the top fraction at this successive-halving rung",
}


WAIT_SECONDS = 1.0  # polling while a trial waits for another worker's trial with the same parameters
SETTLING_SECONDS = 30.0  # an earlier trial asked longer ago than this has suggested all its parameters
SETTLING_POLL_SECONDS = 0.1


class TrialInterrupted(Exception):
    """Raised between epochs when a stop was requested (Ctrl-C / SIGTERM)."""


def trial_dir(space: SearchSpace, stage: Stage, number: int) -> Path:
    return space.study.path / "trials" / f"{stage.trial_prefix}{number}"


def span(seconds: float) -> str:
    """45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def pace_line(space: SearchSpace, epoch_seconds: float, workers: int) -> str:
    """What the budget costs at the pace of a first epoch, e.g. ``pace: 48 s an epoch, 80 min a trial of 100
    epochs; 60 trials: about 3.3 days on 1 worker (less with pruning and repeats)``. Other trials'
    sizes and cutoffs change their pace, so this is an order of magnitude, said early."""
    budget = space.budget
    trial = epoch_seconds * budget.epochs
    text = f"pace: {epoch_seconds:.3g} s an epoch, {span(trial)} a trial of {plural(budget.epochs, 'epoch')}"
    if budget.n_trials:
        text += (f"; {plural(budget.n_trials, 'trial')}: about {span(trial * budget.n_trials / workers)} on "
                 f"{plural(workers, 'worker')} (less with pruning and repeats)")
    if budget.timeout:
        text += f"; budget.timeout ends the search after {span(budget.timeout)}"
    return text


def epoch_line(trial, epoch: int, epochs: int, metric: str, value: float, at_best: float) -> str:
    """A trial's progress line: this epoch's metric, and the metric at its best validation loss so far (what the
    trial would deliver if it stopped now)."""
    return f"trial {trial} epoch {epoch}/{epochs}: {metric} {value:.4g}, {at_best:.4g} at the best val_loss so far"


class PaceLine:
    """Says ``pace_line`` once, at the first epoch trained (either driver)."""

    def __init__(self, space: SearchSpace, workers: int, out: Callable[[str], None]):
        self.space, self.workers, self.out, self.told = space, workers, out, False

    def __call__(self, epoch_seconds: float) -> None:
        if not self.told:
            self.told = True
            self.out(pace_line(self.space, epoch_seconds, self.workers))


class TrialRunner:
    """Runs trials of one worker on its preloaded data (neighbour lists at the space's largest cutoff)."""

    def __init__(self, space: SearchSpace, data: Data, stop_requested: Callable[[], bool] = lambda: False,
                 out: Callable[[str], None] = print, prefix: str = "", pace: PaceLine | None = None):
        self.space, self.data, self.stop_requested, self.out, self.prefix = space, data, stop_requested, out, prefix
        self.pace = pace
        structures = data.train.structures + data.val.structures + data.test.structures
        self.atomic_types = sorted({int(z) for s in structures for z in s.numbers})
        self._at_cutoff: dict[float, Data] = {}
        self._filter_seconds = 0.0
        self.every = max(1, space.budget.epochs // 5)  # progress lines per trial

    def data_at(self, cutoff: float) -> Data:
        """The data restricted to ``cutoff`` by distance filtering (cached: the same cutoff is reused)."""
        key = round(float(cutoff), 9)
        if key not in self._at_cutoff:
            started = time.perf_counter()
            if len(self._at_cutoff) >= 2:  # memory: each holds neighbour lists
                self._at_cutoff.pop(next(iter(self._at_cutoff)))
            self._at_cutoff[key] = self.data.at_cutoff(cutoff)
            self._filter_seconds = time.perf_counter() - started
        return self._at_cutoff[key]

    # -----------------------------------------------------------------------------------------

    def run(self, study: optuna.Study, trial: optuna.Trial, stage: Stage, fixed: dict) -> optuna.trial.FrozenTrial:
        space, objective = self.space, self.space.objective
        started = time.perf_counter()
        claim(study, trial)
        values = dict(fixed)
        for name in stage.parameters:
            values[name] = suggest(trial, space.parameters[name])
        shown = ", ".join(f"{k}={short(v)}" for k, v in values.items() if k in stage.parameters)
        role = trial.user_attrs.get("role")
        self.out(f"{self.prefix}trial {trial.number} [{stage.label}] {shown}" + (f" ({role})" if role else "")
                 + (f" (retry of {trial.user_attrs['retry_of']})" if "retry_of" in trial.user_attrs else ""))
        twin = self.wait_for_twin(study, trial)
        if twin is not None:
            return self.copy_result(study, trial, twin, values, started)
        folder = trial_dir(space, stage, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        for old in ("metrics.csv", "train.log", "model.ckpt", "error.txt"):  # a reused folder (e.g. a fresh study)
            (folder / old).unlink(missing_ok=True)
        trial.set_user_attr("config", values)
        trial.set_user_attr("artifacts", str(folder))
        trial.set_user_attr("trial", f"{study.study_name}#{trial.number}")
        record = {"number": trial.number, "study": study.study_name, "stage": stage.index, "config": values}
        state, result_values, reason, epochs_time = TrialState.FAIL, None, None, 0.0
        first_epoch_at, self._filter_seconds = None, 0.0

        with Lease(study, trial, space.study.heartbeat_interval), open(folder / "train.log", "a") as log_file:
            try:
                options = space.options_for(values)
                trial.set_user_attr("options", space.options_for(values))  # as searched: retrain needs only the storage
                options["architecture"]["training"]["log_interval"] = 1  # metrics.csv keeps every epoch
                record["options"] = options
                data = self.data_at(options["architecture"]["model"]["cutoff"])
                cost = self.cost(options, data) if objective.needs_cost else None
                if cost is not None:
                    trial.set_user_attr("cost", cost)

                so_far = {"val_loss": math.inf, "metric": math.inf}

                def on_epoch(epoch: int, metrics: dict) -> bool:
                    nonlocal epochs_time, first_epoch_at
                    if first_epoch_at is None:
                        first_epoch_at = time.perf_counter() - metrics["epoch_time"]
                    epochs_time += metrics["epoch_time"]
                    if self.pace is not None:
                        self.pace(metrics["epoch_time"])
                    metric = metrics.get(objective.metric)
                    if metric is None or not math.isfinite(metric):
                        raise NonFiniteLossError(f"{objective.metric} is {metric} at epoch {epoch}", epoch)
                    if metrics["val_loss"] < so_far["val_loss"]:  # the trainer's rule for the epoch model.ckpt keeps
                        so_far.update(val_loss=metrics["val_loss"], metric=metric)
                    if objective.n_values == 1:  # what the trial's value would be if it stopped now
                        trial.report(objective.value(so_far["metric"], cost), epoch)
                    if epoch % self.every == 0 or epoch == space.budget.epochs - 1:
                        self.out(self.prefix + epoch_line(trial.number, epoch + 1, space.budget.epochs, objective.metric,
                                                          metric, so_far["metric"]))
                    if self.stop_requested():
                        raise TrialInterrupted(f"interrupted by the user after epoch {epoch + 1}")
                    if objective.n_values == 1 and role != "defaults" and trial.should_prune():  # the gain is measured from it
                        why = PRUNE_REASONS.get(space.study.pruner["type"], "pruned")
                        raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}/{space.budget.epochs} by the {space.study.pruner['type']} pruner "
                                                 f"({objective.metric} {so_far['metric']:.4g}: {why})")
                    return False

                def log(message: str) -> None:
                    log_file.write(message + "\n")
                    log_file.flush()

                result = train(options, on_epoch=on_epoch, output_dir=folder, data=data, log=log)
                best = next(row for row in result.history if row["epoch"] == result.best_epoch)
                result_values = objective.values(best[objective.metric], cost)
                trial.set_user_attr("best_epoch", result.best_epoch)
                trial.set_user_attr("epochs", len(result.history))
                trial.set_user_attr("metrics", {k: v for k, v in best.items() if k.startswith("val_") or k == "train_loss"})
                state = TrialState.COMPLETE
            except optuna.TrialPruned as pruned:
                state, reason = TrialState.PRUNED, str(pruned) or "pruned"
            except (TrialInterrupted, KeyboardInterrupt) as stop:
                reason = str(stop) or "interrupted by the user"
                self._timing(trial, started, first_epoch_at, epochs_time)
                fail_and_retry(study, study.get_trials(deepcopy=False)[trial.number], reason, space.study.max_retries,
                               count_attempt=False)
                self._write(folder, record, "FAIL", None, reason)
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
        self._timing(trial, started, first_epoch_at, epochs_time)
        if reason is not None:
            trial.set_user_attr("reason", reason)
        frozen = study.tell(trial, result_values, state=state)
        self._write(folder, record, frozen.state.name, frozen.values, reason)
        if frozen.state == TrialState.COMPLETE and space.study.keep_checkpoints is not None:
            keep_best_checkpoints(study, space.study.keep_checkpoints)
        text = {TrialState.COMPLETE: f"COMPLETE {self._describe(frozen.values)} (best epoch {trial.user_attrs.get('best_epoch')})",
                TrialState.PRUNED: f"PRUNED: {reason}", TrialState.FAIL: f"FAIL: {reason}"}[frozen.state]
        self.out(f"{self.prefix}trial {trial.number} {text} in {time.perf_counter() - started:.1f} s")
        return frozen

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

    def copy_result(self, study, trial, twin, values: dict, started: float):
        trial.set_user_attr("config", values)
        trial.set_user_attr("duplicate_of", twin.number)
        for key, value in result_attrs(twin).items():
            trial.set_user_attr(key, value)
        for step, value in twin.intermediate_values.items():
            trial.report(value, step)
        if twin.state == TrialState.PRUNED:
            reason = copied_reason(twin)
            trial.set_user_attr("reason", reason)
            frozen = study.tell(trial, state=TrialState.PRUNED)
            self.out(f"{self.prefix}trial {trial.number} PRUNED: {reason}")
            return frozen
        frozen = study.tell(trial, twin.values)
        self.out(f"{self.prefix}trial {trial.number} COMPLETE {self._describe(frozen.values)}: same parameters as trial "
                 f"{twin.number}, result copied (training is deterministic)")
        return frozen

    def cost(self, options: dict, data: Data) -> float:
        """Inference cost: parameters, or seconds per atom of an energy+forces evaluation (median of 3)."""
        hypers = options["architecture"]["model"]
        model = NanoPET(hypers, self.atomic_types)
        if self.space.objective.cost_measure == "parameters":
            return float(sum(p.numel() for p in model.parameters()))
        from nanopet.train import select_device

        device = select_device(str(options["device"]))
        dtype = torch.float64 if options["base_precision"] == 64 else torch.float32
        model.to(device=device, dtype=dtype)
        dataset = data.val if len(data.val) else data.train
        batch = dataset.batch(list(range(min(16, len(dataset)))), dtype=dtype).to(device)
        atoms = int(batch.n_atoms.sum())
        times = []
        for repeat in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(batch, forces=True, with_composition=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat:
                times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] / atoms

    def _timing(self, trial, started: float, first_epoch_at: float | None, epochs_time: float) -> None:
        wall = time.perf_counter() - started
        setup = (first_epoch_at - started) if first_epoch_at is not None else wall
        trial.set_user_attr("timing", {"wall": wall, "setup": setup, "filter": self._filter_seconds, "epochs": epochs_time})

    def _describe(self, values) -> str:
        objective = self.space.objective
        if values is None:
            return ""
        if objective.cost == "front":
            return f"{objective.metric} {values[0]:.4g}, cost {values[1]:.4g}"
        name = objective.metric if objective.cost == "none" else f"{objective.metric} x cost^{objective.cost_weight:g}"
        return f"{name} {values[0]:.4g}"

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


