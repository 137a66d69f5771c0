"""The trainable, which runs in Ray worker processes: one trial = the trial layer's training on data loaded once per
process (a large dataset prepared on disk once and memory-mapped), reporting every epoch with its checkpoint
(``RayEngine``) and resuming from it after a failure; under ``budget.data_shares`` one report per share.""" 

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable


from nanopet.tune.ray_driver.search import role_in
from nanopet.tune.space import SearchSpace
from nanopet.tune.params import decode
from nanopet.tune.trial import EpochBudget, measure_cost, RAY_PREFIX, Stopped, STOPPED_FILE, train_trial, trial_folder, TrialData, TrialEpochs
from nanopet.tune.ray_driver.names import (COST, DUPLICATE, LAST_CHECKPOINT, MARKER, OBJECTIVE, TIME_ATTR, TRAINED_EPOCH)


_DATA: dict = {}  # per Ray worker process: data loaded once, keyed by dataset options + cutoff


_SPACES: dict = {}


def derived(space: SearchSpace, fixed: dict) -> Callable[[dict], dict]:
    """A stage's values that its parameters move (the learning rate under strategy.learning_rate_scaling)."""
    def moved(params: dict) -> dict:
        values = space.trial_values(fixed, params)
        return {k: v for k, v in values.items() if k not in params and v != fixed.get(k, v)}
    return moved


def payload(space: SearchSpace, fixed: dict, defaults: dict | None = None) -> dict:
    """What a trial needs besides its config: the space (re-read once per worker process), the stage's fixed
    values (earlier stages' best), the defaults trial's parameters (as stored; None in a later stage)."""
    return {"raw": space.raw, "base_dir": str(Path(space.base_dir).resolve()), "name": space.study.name,
            "source": str(space.source) if space.source else None, "study_dir": str(space.study.path.resolve()),
            "fixed": fixed, "defaults": defaults}


def space_of(payload: dict) -> SearchSpace:
    key = json.dumps({k: v for k, v in payload.items() if k not in ("fixed", "defaults")}, sort_keys=True, default=str)
    if key not in _SPACES:
        from nanopet.tune.space import parse

        source = Path(payload["source"]) if payload["source"] else None
        _SPACES[key] = parse(payload["raw"], Path(payload["base_dir"]), source, default_name=payload["name"])
    return _SPACES[key]


def data_of(space: SearchSpace) -> TrialData:
    """The space's data at its largest cutoff, loaded once per process."""
    from nanopet.data.splits import load_data

    options = space.resolved
    key = json.dumps([{k: options.get(k) for k in ("training_set", "validation_set", "test_set", "seed")},
                      str(space.base_dir), space.max_cutoff], sort_keys=True, default=str)
    if key not in _DATA:
        _DATA.clear()  # one dataset per process
        _DATA[key] = TrialData(load_data(space.options, space.base_dir, cutoff=space.max_cutoff), keep=1)
    return _DATA[key]


class RayEngine:
    """The trial layer's ``Engine`` in a Ray trainable: ``tune.report`` of every epoch with a marker naming its
    checkpoint. The scheduler (ASHA) stops a trial inside that report, so ``should_stop`` never does. Under
    budget.data_shares one report per share, at its step (ASHA's time axis), without a checkpoint."""

    def __init__(self, space: SearchSpace, folder: Path, cost: float | None, setup: float, epoch_budget: int | None = None,
                 epoch_seconds: float | None = None):
        self.space, self.folder, self.cost, self.setup = space, folder, cost, setup
        self.epoch_budget, self.epoch_seconds = epoch_budget, epoch_seconds

    def report(self, epoch: int, value: float, metrics: dict, best) -> None:
        from ray import tune

        shares = bool(self.space.budget.data_shares)
        done = epoch if shares else epoch + 1  # a share's step, or epochs trained
        report = {OBJECTIVE: value, TIME_ATTR: done, "best_epoch": best.epoch,
                  "finished": done >= self.space.budget.max_resource, "cost": self.cost, "setup_time": self.setup, "clock": time.time(),
                  "epoch_budget": self.epoch_budget, "measured_epoch_seconds": self.epoch_seconds,
                  **{k: v for k, v in metrics.items() if k.startswith(("val_", "train_"))
                     or k in ("epoch_time", "learning_rate", "share", "share_epochs", "compute")},
                  TRAINED_EPOCH: metrics.get("epoch")}
        if shares:  # the trainer wrote each share's model.ckpt already; a restarted trial trains from its first share
            tune.report(report)
            return
        last = self.folder / LAST_CHECKPOINT
        if report["finished"]:  # ASHA stops every trial at max_t inside this report: keep the trainer's model.ckpt now
            shutil.copy(last, self.folder / "model.ckpt")
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / MARKER).write_text(json.dumps({"epoch": int(metrics.get("epoch", epoch)), "checkpoint": str(last)}))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))

    def should_stop(self, epoch: int, value: float, where: str | None = None) -> str | None:
        return None


def trainable_fn(config: dict, payload: dict) -> None:
    from ray import tune

    from nanopet.checkpoints import load_checkpoint
    from nanopet.train import train

    started = time.perf_counter()
    space = space_of(payload)
    if DUPLICATE in config:  # a finished trial's parameters: its result, reported at once (copied when recorded)
        twin = json.loads(config[DUPLICATE])
        if twin["pruned"]:
            reached = twin["step"] if space.budget.data_shares else twin["epochs"]
            tune.report({OBJECTIVE: twin["last"], TIME_ATTR: reached, "finished": False, DUPLICATE: config[DUPLICATE],
                         "clock": time.time()})
        else:
            values = twin["values"]
            tune.report({OBJECTIVE: values[0], COST: values[1] if len(values) > 1 else None, TIME_ATTR: space.budget.max_resource,
                         "finished": True, DUPLICATE: config[DUPLICATE], "clock": time.time()})
        return
    values = space.trial_values(payload["fixed"], {name: decode(config[name]) for name in space.parameters if name in config})
    trial_id = tune.get_context().get_trial_id()
    folder = trial_folder(payload["study_dir"], RAY_PREFIX + trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    options = space.options_for(values)
    training = options["architecture"]["training"]
    training["log_interval"] = 1
    trial_data = data_of(space)
    data = trial_data.for_options(options)
    setup = time.perf_counter() - started
    cost = measure_cost(space, options, data, trial_data.atomic_types) if space.objective.needs_cost else None
    if space.budget.data_shares:
        role = role_in(config, payload["defaults"])
        train_shares(space, options, data, folder, TrialEpochs(space, RayEngine(space, folder, cost, setup), cost, role), trial_id)
        return
    training["checkpoint_interval"] = 1

    # The trial's newest epoch checkpoint is one file in its folder (replaced atomically every epoch); what
    # Ray keeps per report is a small marker naming it. Ray deletes old checkpoints of its own and may
    # restore an experiment snapshot that names one it already deleted: with markers kept (tiny) and the
    # model in one file of ours, a restored or retried trial always resumes from its newest epoch.
    last = folder / LAST_CHECKPOINT
    resume = last if last.is_file() else None
    marker = tune.get_checkpoint()
    lost = marker is not None and resume is None  # e.g. another node without the shared studies/ folder
    given, epoch_seconds, note = EpochBudget(space)(options, data)
    training["num_epochs"] = given
    epochs = TrialEpochs(space, RayEngine(space, folder, cost, setup, given, epoch_seconds), cost, epochs=given)

    def on_epoch(epoch: int, metrics: dict) -> bool:
        os.replace(folder / "checkpoints" / f"model_{epoch}.ckpt", last)
        return epochs(epoch, metrics)

    log_file = open(folder / "train.log", "a")
    import ray

    log_file.write(f"ray trial {trial_id}: host {socket.gethostname()} pid {os.getpid()} gpus [{', '.join(map(str, ray.get_gpu_ids()))}]"
                   + (f", resuming from its checkpoint of epoch {len(load_checkpoint(resume)['history'])}" if resume else "")
                   + (f", its checkpoint {last} is missing: starting again from epoch 0" if lost else "") + "\n")
    log_file.flush()
    if resume is not None:  # epochs trained since the restored snapshot: Ray has not seen them (or lost them)
        reported = -1
        if marker is not None:
            with marker.as_directory() as directory:
                reported = json.loads((Path(directory) / MARKER).read_text())["epoch"]
        for row in load_checkpoint(resume)["history"]:
            if row["epoch"] > reported:
                epochs(row["epoch"], row)
            else:
                epochs.catch_up(row["epoch"], row)
    try:
        result = train(options, on_epoch=on_epoch, output_dir=folder, data=data, resume=resume,
                       log=lambda message: (log_file.write(message + "\n"), log_file.flush()))
    except Stopped as stopped:  # a rule of the trial layer (the scheduler's stops end the trainable inside tune.report)
        (folder / STOPPED_FILE).write_text(f"{stopped}\n")
        return
    finally:
        log_file.close()
    if result.stopped == "learning_rate":  # the trainer stopped early: the trial is complete nonetheless
        tune.report({OBJECTIVE: epochs.value, TIME_ATTR: space.budget.epochs, "finished": True,
                     "best_epoch": result.best_epoch, "cost": cost, "setup_time": setup})


def train_shares(space: SearchSpace, options: dict, data, folder: Path, epochs: TrialEpochs, trial_id: str) -> None:
    """A Ray trial under budget.data_shares: the trial layer's ``train_trial``, each share reported at its step (ASHA
    stops a trial inside that report). No epoch checkpoints: a trial Ray restarts trains again from its first share."""
    import ray

    with open(folder / "train.log", "a") as log_file:
        log_file.write(f"ray trial {trial_id}: host {socket.gethostname()} pid {os.getpid()} gpus "
                       f"[{', '.join(map(str, ray.get_gpu_ids()))}], shares {list(space.budget.data_shares)}\n")
        log_file.flush()
        try:
            train_trial(space, options, data, epochs, folder, lambda message: (log_file.write(message + "\n"), log_file.flush()))
        except Stopped as stopped:  # a rule of the trial layer (ASHA's stops end the trainable inside tune.report)
            (folder / STOPPED_FILE).write_text(f"{stopped}\n")
