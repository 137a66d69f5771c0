"""The Ray Tune driver: ``nanopet-tune SPACE.yaml --driver ray [--address auto|HOST:PORT]``.

The same search-space file as the Optuna driver, run as a Ray Tune experiment:

- trainable: one trial = ``nanopet.train.train`` on data loaded once per Ray worker process
  (neighbour lists at the space's largest cutoff), reporting every epoch with its checkpoint
  (``ray.tune.report``) and resuming from ``ray.tune.get_checkpoint()`` after a failure;
- searcher: ``OptunaSearch`` over the space's Optuna distributions, the sampler of ``study.sampler``,
  the defaults as the first trial; scheduler: ASHA on the objective value (grace period from the
  pruner's ``min_resource`` / ``n_warmup_steps``, else 1 epoch), none for ``pruner: {type: none}``;
- results: every Ray trial is written into the study's Optuna storage (COMPLETE, PRUNED when ASHA
  stopped it before the last epoch, FAIL), so ``report``, ``retrain`` and ``dashboard`` work unchanged.

Ray state lives in ``studies/<name>/ray/<name>/``; running the command again restores an interrupted
experiment from there. ``ray`` is imported only in this module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from nanopet.errors import InputError, NonFiniteLossError
from nanopet.tune.space import SearchSpace
from nanopet.tune.study import (check_resumable, decode, distribution, encode, make_sampler, masked, open_storage, plan,
                                record_storage, storage_url)

OBJECTIVE = "objective"  # the reported key ASHA and the searcher minimise
TIME_ATTR = "epoch"  # epochs trained (1-based), ASHA's time axis
CONNECT_TIMEOUT = 5.0  # s to reach a cluster given by --address
GCS_WAIT = "RAY_gcs_server_port_wait_time_s"  # ray.init's retries (about 1 s each) to reach the cluster's GCS
_DATA: dict = {}  # per Ray worker process: data loaded once, keyed by dataset options + cutoff
_SPACES: dict = {}


def run(space: SearchSpace, workers: int | None = None, address: str | None = None, out: Callable[[str], None] = print,
        cpus_per_trial: float = 1.0, gpus_per_trial: float | None = None, points: list[dict] | None = None):
    """Run (or restore) the Ray experiment of ``space``, then record its trials in the Optuna storage.

    ``workers``: trials at once (default: the CPUs, or GPUs, the cluster has per trial). ``points``: configs
    (parameter name -> value) tried right after the defaults. Returns a ``SearchResult``.
    """
    import ray
    from ray import tune

    from nanopet.tune.results import report_lines, summarize

    if space.strategy.type != "joint" or len(plan(space)) > 1:
        raise InputError("staged strategy with --driver ray is not supported yet; use strategy: joint")
    if space.objective.n_values > 1:
        raise InputError("objective.cost: front (two objectives) with --driver ray is not supported yet; use cost: none or penalty")
    if space.budget.n_trials is None:
        raise InputError("budget.n_trials: needed with --driver ray (a timeout alone is not supported yet)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ctrl-C raises KeyboardInterrupt out of fit(): Ray's own handler would end running trials as TERMINATED,
    # indistinguishable from trials ASHA stopped
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # one checkpoint per epoch is intended
    started_ray = connect(address)  # first: a bad --address fails before anything is written
    try:
        check_resumable(space)
        record_storage(space)
        storage = open_storage(storage_url(space))
        open_study(storage, space)
        resources = ray.cluster_resources()
        cluster_gpus = float(resources.get("GPU", 0))
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if cluster_gpus >= 1 else 0.0
        request = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        for name, key in (("cpu", "CPU"), ("gpu", "GPU")):
            if request[name] > float(resources.get(key, 0)):
                raise InputError(f"a trial needs {request[name]:g} {key} but the Ray cluster has {resources.get(key, 0):g}; "
                                 f"add nodes with `ray start --address=...` or ask for fewer per trial")
        if workers is None:
            per = (cluster_gpus / gpus_per_trial) if gpus_per_trial else (float(resources.get("CPU", 1)) / cpus_per_trial)
            workers = max(1, int(per))

        trainable = tune.with_resources(tune.with_parameters(trainable_fn, payload=payload(space)), request)
        root = (space.study.path / "ray").resolve()
        experiment = root / space.study.name
        if experiment.exists() and tune.Tuner.can_restore(str(experiment)):
            out(f"restoring the Ray experiment in {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, tune_config=tune_config(space, workers, points),
                               run_config=tune.RunConfig(name=space.study.name, storage_path=str(root), verbose=0,
                                                         failure_config=tune.FailureConfig(max_failures=2),
                                                         checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        out(f"Ray Tune: {space.budget.n_trials} trials, {workers} at once, {request['cpu']:g} CPU"
            + (f" + {request['gpu']:g} GPU" if request["gpu"] else "") + " each")
        try:
            results = tuner.fit()
        except KeyboardInterrupt:  # Ray's state (snapshot at every report) is kept; nothing is recorded
            out(f"interrupted: run the same command again to resume the Ray experiment in {experiment}")
            return summarize(space, "interrupted")
        written, unfinished = record_results(storage, space, results)
        out(f"recorded {written} Ray trials in {masked(storage_url(space))} (study {space.study.name})")
    finally:
        if started_ray:
            ray.shutdown()
    result = summarize(space, "interrupted" if unfinished else "completed")
    for line in report_lines(result, space):
        out(line)
    if unfinished:
        out(f"interrupted: {unfinished} Ray trials unfinished; run the same command again to resume them from {experiment}")
    return result


# ---------------------------------------------------------------------------------------------
# Connecting


def connect(address: str | None) -> bool:
    """Start a local Ray runtime (returns True: ours to shut down) or join a cluster (False)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                             os.environ.get("PYTHONPATH")])),
                                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}}
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
        return True
    if address != "auto":
        host, _, port = address.replace("ray://", "").rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"--address {address}: expected auto or HOST:PORT (the head's `ray start --head --port PORT`)")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
        except OSError as error:
            raise InputError(f"--address {address}: no Ray cluster reachable ({error.strerror or type(error).__name__}); "
                             f"start one with `ray start --head --port {port}` or leave out --address") from None
    wait = os.environ.get(GCS_WAIT)
    os.environ[GCS_WAIT] = wait or str(int(CONNECT_TIMEOUT))  # Ray's default: ~20 one-second retries
    try:
        with quiet_stderr() as said:  # Ray's C++ client logs every failed retry on stderr
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
            except Exception:
                said.clear()
                raise
    except Exception as error:  # noqa: BLE001 - ConnectionError, RuntimeError, ... from ray
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--address {address}: cannot join the Ray cluster ({first}); "
                         "start one with `ray start --head` or leave out --address") from None
    finally:
        if wait is None:
            os.environ.pop(GCS_WAIT, None)
    return False


@contextlib.contextmanager
def quiet_stderr():
    """Hold what is written to file descriptor 2 (C++ logs included); it is replayed unless the list
    the block gets is cleared."""
    sys.stderr.flush()
    saved = os.dup(2)
    said = ["replay"]
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if said:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


# ---------------------------------------------------------------------------------------------
# Searcher and scheduler


def tune_config(space: SearchSpace, workers: int, points: list[dict] | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    distributions = {name: distribution(p) for name, p in space.parameters.items()}
    defaults = space.defaults()
    first = [{k: encode(defaults[k]) for k in space.parameters if k in defaults}] if len(defaults) == len(space.parameters) else []
    first += [{k: encode(v) for k, v in point.items()} for point in points or []]
    searcher = OptunaSearch(space=distributions, metric=OBJECTIVE, mode="min", sampler=make_sampler(space.study.sampler),
                            points_to_evaluate=first or None)
    epochs = space.budget.epochs
    grace, factor = asha_settings(space)
    scheduler = None  # `pruner: {type: none}`: every trial runs all epochs
    if space.study.pruner["type"] != "none":
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, metric=OBJECTIVE, mode="min", max_t=epochs, grace_period=grace,
                                  reduction_factor=factor)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.budget.n_trials,
                           max_concurrent_trials=workers, reuse_actors=True)


def asha_settings(space: SearchSpace) -> tuple[int, int]:
    """ASHA's grace period (epochs) and reduction factor, from the space's pruner settings."""
    pruner = space.study.pruner
    grace = pruner.get("min_resource", pruner.get("n_warmup_steps", 1))
    grace = min(max(1, int(grace if isinstance(grace, (int, float)) else 1)), space.budget.epochs)
    return grace, max(2, int(pruner.get("reduction_factor", 2)))


# ---------------------------------------------------------------------------------------------
# The trainable (runs in Ray worker processes)


def payload(space: SearchSpace) -> dict:
    return {"raw": space.raw, "base_dir": str(Path(space.base_dir).resolve()), "name": space.study.name,
            "source": str(space.source) if space.source else None, "study_dir": str(space.study.path.resolve())}


def space_of(payload: dict) -> SearchSpace:
    key = json.dumps(payload, sort_keys=True, default=str)
    if key not in _SPACES:
        from nanopet.tune.space import parse

        source = Path(payload["source"]) if payload["source"] else None
        _SPACES[key] = parse(payload["raw"], Path(payload["base_dir"]), source, default_name=payload["name"])
    return _SPACES[key]


def data_of(space: SearchSpace):
    """The space's data at its largest cutoff, loaded once per process."""
    from nanopet.train import load_data

    options = space.resolved
    key = json.dumps([{k: options.get(k) for k in ("training_set", "validation_set", "test_set", "seed")},
                      str(space.base_dir), space.max_cutoff], sort_keys=True, default=str)
    if key not in _DATA:
        _DATA.clear()  # one dataset per process
        _DATA[key] = load_data(space.options, space.base_dir, cutoff=space.max_cutoff)
    return _DATA[key]


def trainable_fn(config: dict, payload: dict) -> None:
    from ray import tune

    from nanopet.train import train

    started = time.perf_counter()
    space = space_of(payload)
    objective = space.objective
    values = {name: decode(config[name]) for name in space.parameters if name in config}
    trial_id = tune.get_context().get_trial_id()
    folder = Path(payload["study_dir"]) / "trials" / f"ray-{trial_id}"
    folder.mkdir(parents=True, exist_ok=True)
    options = space.options_for(values)
    training = options["architecture"]["training"]
    training["log_interval"] = 1
    training["checkpoint_interval"] = 1
    data = data_of(space).at_cutoff(options["architecture"]["model"]["cutoff"])
    setup = time.perf_counter() - started
    cost = None
    if objective.needs_cost:
        from nanopet.tune.objective import TrialRunner

        cost = TrialRunner(space, data, out=lambda m: None).cost(options, data)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = folder / "resume.ckpt"
            shutil.copy(Path(directory) / "model.ckpt", resume)
    so_far = {"val_loss": math.inf, "metric": math.inf, "epoch": None}
    if resume is not None:  # the value so far counts the epochs before the interruption too
        from nanopet.train import load_checkpoint

        for row in load_checkpoint(resume)["history"]:
            if row["val_loss"] < so_far["val_loss"] and row.get(objective.metric) is not None:
                so_far.update(val_loss=row["val_loss"], metric=row[objective.metric], epoch=row["epoch"])

    def on_epoch(epoch: int, metrics: dict) -> bool:
        metric = metrics.get(objective.metric)
        if metric is None or not math.isfinite(metric):
            raise NonFiniteLossError(f"{objective.metric} is {metric} at epoch {epoch}", epoch)
        if metrics["val_loss"] < so_far["val_loss"]:
            so_far.update(val_loss=metrics["val_loss"], metric=metric, epoch=epoch)
        report = {OBJECTIVE: objective.value(so_far["metric"], cost), TIME_ATTR: epoch + 1, "best_epoch": so_far["epoch"],
                  "finished": epoch + 1 >= space.budget.epochs, "cost": cost, "setup_time": setup,
                  **{k: v for k, v in metrics.items() if k.startswith(("val_", "train_")) or k in ("epoch_time", "learning_rate")}}
        saved = folder / "checkpoints" / f"model_{epoch}.ckpt"
        if report["finished"]:  # ASHA stops every trial at max_t inside this report: keep the trainer's model.ckpt now
            shutil.copy(saved, folder / "model.ckpt")
        with tempfile.TemporaryDirectory() as directory:
            shutil.copy(saved, Path(directory) / "model.ckpt")
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
        for old in (folder / "checkpoints").glob("model_*.ckpt"):  # Ray keeps the reported copy
            old.unlink(missing_ok=True)
        return False

    log_file = open(folder / "train.log", "a")
    try:
        result = train(options, on_epoch=on_epoch, output_dir=folder, data=data, resume=resume,
                       log=lambda message: (log_file.write(message + "\n"), log_file.flush()))
    finally:
        log_file.close()
    if result.stopped == "learning_rate":  # the trainer stopped early: the trial is complete nonetheless
        tune.report({OBJECTIVE: objective.value(so_far["metric"], cost), TIME_ATTR: space.budget.epochs, "finished": True,
                     "best_epoch": result.best_epoch, "cost": cost, "setup_time": setup})


# ---------------------------------------------------------------------------------------------
# Recording Ray trials in the Optuna storage


def open_study(storage, space: SearchSpace) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=space.study.name, direction="minimize", load_if_exists=True)
    if "fingerprint" not in study.user_attrs:
        for key, value in {"fingerprint": space.fingerprint(), "search": space.study.name, "stage": 1, "stages": 1,
                           "parameters": list(space.parameters), "fixed": {}, "metric": space.objective.metric,
                           "objective": vars(space.objective), "source": str(space.source) if space.source else None,
                           "driver": "ray"}.items():
            study.set_user_attr(key, value)
    return study


def record_results(storage, space: SearchSpace, results) -> tuple[int, int]:
    """Add every finished Ray trial not yet in the study as an Optuna trial; returns (added, unfinished).
    Unfinished trials (an interrupted experiment) are left to the run that restores it."""
    study = open_study(storage, space)
    done = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    distributions = {name: distribution(p) for name, p in space.parameters.items()}
    statuses = [trial.status for trial in results._experiment_analysis.trials]  # ResultGrid keeps this order
    added = unfinished = 0
    for result, status in zip(results, statuses):
        if status not in ("TERMINATED", "ERROR"):
            unfinished += 1
            continue
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        if trial_id in done or not all(name in config for name in space.parameters):
            continue
        frozen = ray_trial(space, study, result, trial_id, config, distributions)
        study.add_trial(frozen)
        shutil.rmtree(space.study.path / "trials" / f"ray-{trial_id}" / "checkpoints", ignore_errors=True)  # Ray keeps them
        added += 1
    return added, unfinished


def ray_trial(space: SearchSpace, study, result, trial_id: str, config: dict, distributions: dict):
    rows = []
    frame = result.metrics_dataframe
    if frame is not None and OBJECTIVE in frame:
        rows = [row for row in frame.to_dict("records") if _finite(row.get(OBJECTIVE))]
    by_epoch = {int(row[TIME_ATTR]): row for row in rows if TIME_ATTR in row}
    intermediate = {epoch - 1: float(row[OBJECTIVE]) for epoch, row in sorted(by_epoch.items())}
    last = rows[-1] if rows else {}
    number = len(study.get_trials(deepcopy=False))
    folder = space.study.path / "trials" / f"ray-{trial_id}"
    attrs = {"driver": "ray", "ray_trial_id": trial_id, "trial": f"{study.study_name}#{number}",
             "config": {name: decode(config[name]) for name in space.parameters}, "epochs": len(by_epoch),
             "timing": {"wall": float(last.get("time_total_s", 0.0) or 0.0), "setup": float(last.get("setup_time", 0.0) or 0.0),
                        "filter": 0.0, "epochs": float(sum(float(r.get("epoch_time", 0.0) or 0.0) for r in by_epoch.values()))}}
    if folder.is_dir():
        attrs["artifacts"] = str(folder.resolve())
    best_epoch = last.get("best_epoch")
    if best_epoch is not None and _finite(best_epoch):
        attrs["best_epoch"] = int(best_epoch)
        best = by_epoch.get(int(best_epoch) + 1, last)
        attrs["metrics"] = {k: float(v) for k, v in best.items() if (k.startswith("val_") or k == "train_loss") and _finite(v)}
    if last.get("cost") is not None and _finite(last.get("cost")):
        attrs["cost"] = float(last["cost"])
    params = {name: config[name] for name in space.parameters}
    if result.error is not None:
        state, value = TrialState.FAIL, None
        message = str(result.error).strip().splitlines()
        attrs["reason"] = f"{type(result.error).__name__}: {message[-1] if message else ''}"
    elif last.get("finished"):
        state, value = TrialState.COMPLETE, float(last[OBJECTIVE])
    elif rows:
        state, value = TrialState.PRUNED, None
        attrs["reason"] = f"stopped by ASHA after epoch {len(by_epoch)}/{space.budget.epochs} ({space.objective.metric} " \
                          f"{float(last[OBJECTIVE]):.4g}: not in the top fraction at this rung)"
    else:
        state, value = TrialState.FAIL, None
        attrs["reason"] = "no epoch reported (stopped or interrupted before the first epoch)"
    return optuna.trial.create_trial(params=params, distributions=distributions, value=value, state=state,
                                     intermediate_values=intermediate, user_attrs=attrs)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
