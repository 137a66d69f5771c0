"""One trial, whichever driver runs it: what it records, how it reports its epochs, when it may be stopped.

Both drivers (``objective``: Optuna workers; ``ray_driver``: Ray Tune) train a trial through this layer;
each adapts only its engine: ``Engine.report`` (Optuna ``trial.report``; Ray ``tune.report``, whose
scheduler stops a trial inside it) and ``Engine.should_stop`` (Optuna ``trial.should_prune``; Ray: never,
its scheduler ends the trainable).

- ``TrialRecord``: the user attributes a trial carries in the storage, the set defined here
  (``TRIAL_ATTRS``); ``user_attrs(record)`` is the one way from a record to them, and ``report.collect``
  reads the same names.
- ``BestSoFar``: the metric at the best validation loss so far (the trainer's rule for the epoch
  ``model.ckpt`` keeps): the value a trial would deliver if it stopped now.
- ``TrialEpochs``: a trial's ``on_epoch``: checks the metric, tracks the best so far, reports the
  objective value and asks whether to stop (never for the protected defaults trial): first the engine's
  pruner, then ``stop_rules(space)``, the driver-neutral rules that need no other trial. A pruner that compares
  trials is a decision written once in ``pruning`` (e.g. ``RankingRule``), which each engine calls (an Optuna
  pruner, a Ray scheduler); a new per-epoch value is written in ``TrialEpochs.value``.
- ``TrialData``: a trial's data, from the data loaded once at the space's largest cutoff.
- ``train_trial``: one trial's training: all its epochs on all the training set, or with ``budget.data_shares`` (a
  data-size fidelity) on each share in turn, from scratch, the engine's pruner deciding after each share.
- ``trial_folder``, ``measure_cost``, ``repeat_of`` (a repeat takes its twin's result), the progress lines.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol

from nanopet.data.splits import cutoff_of
from nanopet.errors import NonFiniteLossError
from nanopet.train import train
from nanopet.tune.space import SearchSpace
from nanopet.tune.text import share_text

STOPPED_FILE = "stopped.txt"  # in a trial's folder: why the trial layer stopped it (read when a Ray trial is recorded)
TRIALS_FOLDER = "trials"  # <study dir>/trials/<label>/: model.ckpt, metrics.csv, train.log, trial.json
RAY_PREFIX = "ray-"  # a Ray trial's folder: ray-<Ray trial id>
DEFAULTS = "defaults"  # role of a study's first trial: the gain is measured from it, so it is never stopped early
CARRIED = "carried"  # role of a later stage's first trial: the previous stage's best, not trained again


# ---------------------------------------------------------------------------------------------
# What a trial records


@dataclass
class TrialRecord:
    """A trial's user attributes in the storage (either driver), read by ``report``, ``retrain`` and
    ``compare-losses``. None means "not recorded"."""

    trial: str | None = None  # "<study>#<number>"
    config: dict | None = None  # parameter name -> value, earlier stages' fixed values included
    options: dict | None = None  # the full options as searched (retrain needs only the storage)
    artifacts: str | None = None  # the trial's folder
    cost: float | None = None  # inference cost (parameters, or s per atom)
    best_epoch: int | None = None  # the epoch model.ckpt holds
    epochs: int | None = None  # epochs trained (on all the training set)
    epoch_budget: int | None = None  # epochs the trial was given (budget.equal: steps | time size them per trial)
    epoch_seconds: float | None = None  # training seconds per epoch (measured before training under budget.equal: time)
    compute: float | None = None  # training compute in epochs on all the training set: sum of epochs x share trained
    metrics: dict | None = None  # validation metrics and train_loss at the best epoch
    timing: dict | None = None  # s: wall, setup, filter, epochs
    reason: str | None = None  # why it was pruned or failed
    role: str | None = None  # defaults | carried
    retry_of: int | None = None  # the failed trial it re-runs
    duplicate_of: int | None = None  # the trial with the same parameters whose result it took
    driver: str | None = None  # "ray" for trials of the Ray driver
    ray_trial_id: str | None = None


TRIAL_ATTRS = tuple(f.name for f in fields(TrialRecord))
RESULT_ATTRS = ("metrics", "best_epoch", "epochs", "cost", "artifacts")  # what a carried-in or repeated trial copies


def user_attrs(record: TrialRecord) -> dict:
    """The user attributes of ``record`` (those recorded, in ``TRIAL_ATTRS`` order)."""
    return {name: getattr(record, name) for name in TRIAL_ATTRS if getattr(record, name) is not None}


def record_of(attrs: dict) -> TrialRecord:
    """A stored trial's record, from its user attributes (unknown ones are ignored)."""
    return TrialRecord(**{name: attrs.get(name) for name in TRIAL_ATTRS})


def result_attrs(trial) -> dict:
    """A finished trial's result besides its values and curve: what a carried-in or duplicate trial copies."""
    return {k: trial.user_attrs[k] for k in RESULT_ATTRS if k in trial.user_attrs}


def best_metrics(row: dict) -> dict:
    """The validation metrics and train_loss of one epoch's row (finite ones)."""
    return {k: float(v) for k, v in row.items() if (k.startswith("val_") or k == "train_loss") and finite(v)}


def timing(wall: float, setup: float, filtering: float, epochs: float) -> dict:
    return {"wall": wall, "setup": setup, "filter": filtering, "epochs": epochs}


def finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def trial_folder(study_dir: str | Path, label: str) -> Path:
    """``<study dir>/trials/<label>``: ``<stage prefix><number>`` (Optuna driver) or ``ray-<id>`` (Ray driver)."""
    return Path(study_dir) / TRIALS_FOLDER / label


def protected(role: str | None) -> bool:
    """The defaults trial runs all its epochs: the study's gain over the defaults is measured from it."""
    return role == DEFAULTS


# ---------------------------------------------------------------------------------------------
# Repeats: training is deterministic, so a trial with a finished trial's parameters takes its result


@dataclass
class Outcome:
    """How a trial ends in the storage: state, values, curve and the attributes it adds."""

    state: object  # optuna TrialState
    values: list | None
    intermediate: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


def copied_reason(twin) -> str:
    """The reason a repeat of the pruned trial ``twin`` is recorded PRUNED without training."""
    return f"same parameters as trial {twin.number}, not trained again; there: {twin.user_attrs.get('reason', 'pruned')}"


def repeat_of(twin) -> Outcome:
    """The outcome of a trial that repeats the finished trial ``twin``: its state, values, curve and result."""
    from optuna.trial import TrialState

    attrs = {**result_attrs(twin), "duplicate_of": twin.number}
    if twin.state == TrialState.PRUNED:
        return Outcome(TrialState.PRUNED, None, dict(twin.intermediate_values), {**attrs, "reason": copied_reason(twin)})
    return Outcome(twin.state, twin.values, dict(twin.intermediate_values), attrs)


def finished_twin(study, number: int, params: dict, among=None):
    """A finished trial of ``study`` (other than trial ``number``) with the same ``params``: a completed one,
    else a pruned one with a curve; None if there is none. Small discrete stages propose repeats often.
    ``among``: only trials with these numbers."""
    from optuna.trial import TrialState

    twins = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
             if t.number != number and t.params == params and (among is None or t.number in among)
             and (t.values or t.intermediate_values)]
    return min(twins, key=lambda t: t.state != TrialState.COMPLETE, default=None)


# ---------------------------------------------------------------------------------------------
# Epochs: the value so far, reported to the engine, which may stop the trial


class BestSoFar:
    """The objective metric at the best validation loss so far (the epoch ``model.ckpt`` keeps), and that epoch's
    metrics (``row``)."""

    def __init__(self, metric: str):
        self.metric, self.val_loss, self.value, self.epoch, self.row = metric, math.inf, math.inf, None, {}

    def update(self, epoch: int, metrics: dict) -> float:
        """Take one epoch's metrics; returns that epoch's metric (non-finite: ``NonFiniteLossError``)."""
        metric = metrics.get(self.metric)
        if metric is None or not math.isfinite(metric):
            raise NonFiniteLossError(f"{self.metric} is {metric} at epoch {epoch}", epoch)
        if metrics["val_loss"] < self.val_loss:
            self.val_loss, self.value, self.epoch, self.row = metrics["val_loss"], metric, epoch, metrics
        return metric


class Engine(Protocol):
    """A driver's engine as a trial sees it."""

    def report(self, epoch: int, value: float, metrics: dict, best: BestSoFar) -> None:
        """Tell the engine the trial's objective value after ``epoch`` (0-based); ``metrics``: the epoch's,
        ``best``: where the value comes from."""

    def should_stop(self, epoch: int, value: float, where: str | None = None) -> str | None:
        """A reason to stop the trial now, or None. ``where``: the point reached, when it is not the end of epoch
        ``epoch`` (e.g. "after the share 1/8 of the training set")."""


StopRule = Callable[[int, float, BestSoFar], "str | None"]  # (epoch, value so far, best) -> a reason to stop, or None


def stop_rules(space: SearchSpace) -> list[StopRule]:
    """The stopping rules of ``space`` that the trial layer applies itself, under either driver (the pruner
    of ``study.pruner`` is the engine's own: Optuna's pruner, Ray's scheduler, both fed by ``pruning``). None yet:
    a rule that needs only the trial itself goes here, e.g. one that stops a trial whose value cannot catch up."""
    return []


class Stopped(Exception):
    """Raised by ``TrialEpochs`` when the engine stops a trial; the message says by whom and why."""


class TrialEpochs:
    """A trial's ``on_epoch``: the best so far, the value reported, the question whether to stop.

    ``between(epoch, metric, value)`` runs after the report and before the question (progress lines, a
    requested interrupt); ``pace(epoch_seconds)`` at every epoch. Under a data-size fidelity the trial trains in
    rungs (``start_rung``): each epoch is only tracked, and ``end_rung`` reports the rung's value at its step and
    asks the question. ``compute`` adds up epochs x share of the training set."""

    def __init__(self, space: SearchSpace, engine: Engine, cost: float | None = None, role: str | None = None,
                 between: Callable[[int, float, float], None] | None = None, pace: Callable[[float], None] | None = None,
                 rules: list[StopRule] | None = None, epochs: int | None = None):
        self.space, self.engine, self.cost, self.role, self.between, self.pace = space, engine, cost, role, between, pace
        self.rules = stop_rules(space) if rules is None else rules
        self.epochs = epochs or space.budget.epochs  # the trial's own (budget.equal: steps | time size them)
        self.reported = -1  # the last budget step reported
        self.best = BestSoFar(space.objective.metric)
        self.epochs_time, self.first_epoch_at = 0.0, None
        self.share, self.step, self.compute = 1.0, None, 0.0  # the rung: share of the training set, step reported
        self.share_epochs = 0  # epochs trained on the share

    def start_rung(self, share: float, step: int) -> None:
        """The trial trains on ``share`` of the training set from now on, from scratch, reported at ``step``."""
        self.share, self.step, self.best, self.share_epochs = share, step, BestSoFar(self.space.objective.metric), 0

    def end_rung(self) -> None:
        """The rung's value reported at its step, with the metrics of its best epoch, its ``share`` and the trial's
        ``compute`` so far; raises ``Stopped`` if the engine stops the trial here."""
        value = self.value
        self.engine.report(self.step, value, {**self.best.row, "share": self.share, "share_epochs": self.share_epochs,
                                              "compute": self.compute}, self.best)
        if not protected(self.role) and self.share < 1.0:  # after the last share the trial is done: complete
            reason = self.engine.should_stop(self.step, value, f"after the share {share_text(self.share)} of the training set")
            if reason:
                raise Stopped(reason)

    @property
    def value(self) -> float:
        """The objective value if the trial stopped now."""
        return self.space.objective.value(self.best.value, self.cost)

    def budget_step(self, epoch: int) -> int:
        """The step of the budget (the base hypers' epoch) that the end of ``epoch`` reaches: the epoch itself when the
        trial has ``budget.epochs`` epochs; else the share of its epochs done, in base epochs, rounded down (so only
        the last epoch reaches the last step); -1 before the first."""
        budget = self.space.budget.epochs
        return epoch if self.epochs == budget else (epoch + 1) * budget // self.epochs - 1

    def __call__(self, epoch: int, metrics: dict) -> bool:
        if self.first_epoch_at is None and "epoch_time" in metrics:
            self.first_epoch_at = time.perf_counter() - metrics["epoch_time"]
        self.epochs_time += metrics.get("epoch_time", 0.0)
        self.compute += self.share
        self.share_epochs += 1
        if self.pace is not None and "epoch_time" in metrics:
            self.pace(metrics["epoch_time"] / self.share)  # an epoch on all the training set
        metric = self.best.update(epoch, metrics)
        value = self.value
        step = self.budget_step(epoch) if self.step is None else self.reported
        new_steps = range(self.reported + 1, step + 1)
        for reached in new_steps:  # a trial with fewer epochs than the budget reaches several steps in one epoch
            self.engine.report(reached, value, metrics, self.best)
        self.reported = max(self.reported, step)
        if self.between is not None:
            self.between(epoch, metric, value)
        if new_steps and not protected(self.role) and step < self.space.budget.epochs - 1:  # done at the last: complete
            where = None if self.epochs == self.space.budget.epochs else \
                f"after epoch {epoch + 1}/{self.epochs} ({step + 1}/{self.space.budget.epochs} of the budget)"
            reason = self.engine.should_stop(step, value, where)
            for rule in self.rules:
                reason = reason or rule(step, value, self.best)
            if reason:
                raise Stopped(reason)
        return False

    def catch_up(self, epoch: int, metrics: dict) -> None:
        """An epoch trained before a restart that the engine has seen already: tracked, not reported."""
        self.best.update(epoch, metrics)
        self.reported = max(self.reported, self.budget_step(epoch))


class TrialData:
    """A worker's data, loaded once at the space's largest cutoff; ``for_options`` gives one trial's (the
    neighbour lists restricted to its cutoff, cached: the same cutoff is reused)."""

    def __init__(self, data, keep: int = 2):
        self.data, self.keep = data, keep
        self.atomic_types = data.atomic_types
        self._at_cutoff: dict = {}
        self.filter_seconds = 0.0  # the last restriction's cost (0 when cached)

    def for_options(self, options: dict):
        cutoff = cutoff_of(options)
        key = round(cutoff, 9)
        self.filter_seconds = 0.0
        if key not in self._at_cutoff:
            started = time.perf_counter()
            if len(self._at_cutoff) >= self.keep:  # memory: each holds neighbour lists
                self._at_cutoff.pop(next(iter(self._at_cutoff)))
            self._at_cutoff[key] = self.data.at_cutoff(cutoff)
            self.filter_seconds = time.perf_counter() - started
        return self._at_cutoff[key]


def train_trial(space: SearchSpace, options: dict, data, epochs: TrialEpochs, folder: Path, log: Callable[[str], None]):
    """Train one trial with ``epochs`` as its ``on_epoch``; returns the trainer's result on all the training set.

    With ``budget.data_shares`` the trial trains all its epochs on each share in turn (the first share of a
    permutation drawn from the options' seed, so the shares are nested; from scratch each time), and
    ``epochs.end_rung`` lets the engine's pruner stop it after each; a share below 1 trains in
    ``folder/share-<share>/`` (its metrics.csv is kept). The defaults trial trains on all the data only: it is
    never stopped, and its value is the one the others are measured against. Raises ``Stopped``."""
    budget = space.budget
    rungs = list(zip(budget.data_shares, budget.rung_steps)) if budget.data_shares else [(1.0, None)]
    if protected(epochs.role):
        rungs = rungs[-1:]
    for share, step in rungs:
        if step is not None:
            epochs.start_rung(share, step)
        output = folder if share >= 1.0 else folder / f"share-{share:g}"
        result = train(options, on_epoch=epochs, output_dir=output, data=data.training_share(share, int(options["seed"])), log=log)
        if output != folder:  # only the curve of a smaller share is kept
            shutil.rmtree(output / "checkpoints", ignore_errors=True)
            (output / "model.ckpt").unlink(missing_ok=True)
        if step is not None:
            epochs.end_rung()
    return result


def measure_cost(space: SearchSpace, options: dict, data, atomic_types: list[int]) -> float:
    """Inference cost: parameters, or seconds per atom of an energy+forces evaluation (median of 3)."""
    import torch

    from nanopet.model import NanoPET
    from nanopet.runtime import select_device

    model = NanoPET(options["architecture"]["model"], atomic_types)
    if space.objective.cost_measure == "parameters":
        return float(sum(p.numel() for p in model.parameters()))
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


MAX_EPOCH_FACTOR = 10  # budget.equal: steps | time gives a trial at most this many times budget.epochs


class EpochBudget:
    """The epochs of each trial under ``budget.equal``: ``epochs``, every trial ``budget.epochs``; ``steps``, as many
    optimizer steps as the base hypers take in ``budget.epochs`` epochs; ``time``, as much training time, measured
    before the trial: a step of each in turn, a few times, in the same process (``nanopet.train.epoch_seconds_pair``:
    their ratio is what counts, so a busy machine slows both alike), once per step cost (``step_cost``) in a process,
    so the trials of a stage that share it (e.g. its learning rates) train the same epochs. A trial whose steps cost
    the base hypers' (``same_step_cost``) trains ``budget.epochs`` unmeasured. Between 1 and ``MAX_EPOCH_FACTOR`` x
    ``budget.epochs``; the base hypers themselves (the defaults trial) always get ``budget.epochs``. ``measure``:
    seconds of an epoch of resolved options on the data, instead of the paired measurement."""

    def __init__(self, space: SearchSpace, measure: Callable | None = None):
        self.space, self.measure = space, measure
        self.base = space.resolved
        self.measured: dict[str, tuple] = {}  # step cost -> (base, trial) seconds per epoch

    def __call__(self, options: dict, data) -> tuple[int, float | None, str]:
        """(the trial's epochs, its seconds per epoch where measured, a note for its start line or "")."""
        from nanopet.train import batches_per_epoch, epoch_seconds_pair

        budget = self.space.budget
        if budget.equal == "epochs" or same_hypers(options, self.base):
            return budget.epochs, None, ""
        if budget.equal == "steps":
            steps = budget.epochs * batches_per_epoch(len(data.train), self.base["architecture"]["training"]["batch_size"])
            per_epoch = batches_per_epoch(len(data.train), options["architecture"]["training"]["batch_size"])
            epochs = self._clamp(round(steps / per_epoch))
            return epochs, None, f"{epochs} epochs: the base hypers' {steps} optimizer steps"
        if same_step_cost(options, self.base):  # e.g. another learning rate: its steps cost the base hypers' own
            return budget.epochs, None, f"{budget.epochs} epochs: the base hypers' steps, at their cost"
        key = f"{step_cost(options)}|{len(data.train)}"
        if key not in self.measured:
            self.measured[key] = ((self.measure(self.base, data), self.measure(options, data)) if self.measure else
                                  epoch_seconds_pair(self.base, options, data))
        base, trial = self.measured[key]
        epochs = self._clamp(round(budget.epochs * base / trial))
        return epochs, trial, (f"{epochs} epochs: the base hypers' training time ({base:.3g} s an epoch x {budget.epochs}) "
                               f"at {trial:.3g} s an epoch")

    def _clamp(self, epochs: int) -> int:
        return int(min(max(1, epochs), MAX_EPOCH_FACTOR * self.space.budget.epochs))


STEP_COST_SETTINGS = ("batch_size", "atoms_per_pass", "rotational_augmentation")  # training hypers a step's cost depends on


def step_cost(options: dict) -> str:
    """What an optimizer step's cost depends on, of resolved ``options``: the model (cutoff included), the precision
    and ``STEP_COST_SETTINGS``; not the learning rate, loss, schedule or initialisation."""
    training = options["architecture"]["training"]
    return json.dumps([options["architecture"]["model"], options["base_precision"],
                       [training[key] for key in STEP_COST_SETTINGS]], sort_keys=True, default=str)


def same_step_cost(options: dict, base: dict) -> bool:
    """Whether resolved ``options`` take optimizer steps at the base hypers' cost: then equal steps are equal time,
    with none of the noise of timing a few steps."""
    return step_cost(options) == step_cost(base)


def same_hypers(options: dict, base: dict) -> bool:
    """Whether resolved ``options`` train the base hypers (num_epochs and run settings aside)."""
    def hypers(o):
        training = {k: v for k, v in o["architecture"]["training"].items() if k not in ("num_epochs", "log_interval", "checkpoint_interval")}
        return o["architecture"]["model"], training

    return hypers(options) == hypers(base)


# ---------------------------------------------------------------------------------------------
# Progress lines (both drivers)


