"""The Ray Tune driver: ``nanopet-tune SPACE.yaml --driver ray [--address auto|HOST:PORT]``.

The same search-space file as the Optuna driver, run as a Ray Tune experiment:

- trainable: one trial = ``nanopet.train.train`` on data loaded once per Ray worker process
  (neighbour lists at the space's largest cutoff; a large dataset is prepared on disk once by the driver and
  memory-mapped by every trial process on the node), reporting every epoch with its checkpoint
  (``ray.tune.report``) and resuming from ``ray.tune.get_checkpoint()`` after a failure;
- searcher: ``OptunaSearch`` over the space's Optuna distributions, the sampler of ``study.sampler``,
  the defaults as the first trial; scheduler: ASHA on the objective value (grace period from the
  pruner's ``min_resource`` / ``n_warmup_steps``, else 1 epoch), the ranking rule of nanopet/tune/pruning.py for
  ``pruner: {type: ranking}``, none for ``pruner: {type: none}``;
- results: every Ray trial is written into the study's Optuna storage (COMPLETE, PRUNED when ASHA
  stopped it before the last epoch, FAIL), so ``report``, ``retrain`` and ``dashboard`` work unchanged;
  a proposal repeating a finished trial's parameters is not trained again but recorded as its copy, one
  repeating a running trial is held back until that trial ends.

Staged search runs one Ray experiment per stage (earlier stages' best values fixed, the previous best carried
in as in the Optuna driver). Ray state lives in ``studies/<name>/ray/<study of the stage>[-k]/``: running
the command again restores an interrupted experiment from there; after a timeout it starts the next
experiment of the stage, told what the earlier ones found. ``ray`` is imported only in this module.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import optuna

from nanopet.errors import InputError
from nanopet.tune.ray_driver.cluster import connect
from nanopet.tune.ray_driver.names import RECORDED
from nanopet.tune.ray_driver.records import record_results
from nanopet.tune.ray_driver.search import _DEADLINE, ProgressLines, pruned_by, tune_config
from nanopet.tune.ray_driver.trainable import derived, payload, trainable_fn
from nanopet.tune.space import SearchSpace
from nanopet.tune.storage import masked, open_storage, record_storage, storage_url
from nanopet.tune.studies import check_resumable, defaults_point, open_stage
from nanopet.tune.plan import counted, remaining
from nanopet.tune.progress import PaceLine


def run(space: SearchSpace, workers: int | None = None, out: Callable[[str], None] = print, points: list[dict] | None = None,
        resume_command: str | None = None, started: float | None = None):
    """Run (or resume) the Ray experiments of ``space`` (one per stage), recording their trials in the Optuna storage.

    ``workers``: trials at once (default: as many as the cluster's CPUs, or GPUs, allow). ``points``: configs
    (parameter name -> value) tried right after the defaults in the first stage. Cluster and resources come
    from ``space.driver`` (address, cpus_per_trial, gpus_per_trial). Returns a ``SearchResult``; ``started``: when the
    search began (``time.time()``), for its last line, the time taken.
    """
    import ray

    from nanopet.data.splits import prepare_data
    from nanopet.tune.stages import finish, run_stages

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ctrl-C raises KeyboardInterrupt out of fit(): Ray's own handler would end running trials as TERMINATED,
    # indistinguishable from trials ASHA stopped
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # one checkpoint per epoch is intended
    # the experiment snapshot a resume starts from: at most this old (Ray's "auto" is 10 s or more), so an
    # interrupted run resumes with the trials and results of its last second
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing: our lines only
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # not a line per experiment-state write
    started_ray = connect(space.driver.address)  # first: a bad address fails before anything is written
    status = "completed"
    try:
        request, workers = resources(space, workers)
        check_resumable(space)
        record_storage(space)
        prepare_data(space.options, space.base_dir, space.max_cutoff)  # once, here: the trial processes map it
        storage = open_storage(storage_url(space))
        _DEADLINE[0] = time.time() + space.budget.timeout if space.budget.timeout else None
        out(f"Ray Tune: {workers} trials at once, {request['cpu']:g} CPU" + (f" + {request['gpu']:g} GPU" if request["gpu"] else "")
            + " each" + (f", timeout {space.budget.timeout:g} s" if space.budget.timeout else ""))
        pace = PaceLine(space, workers, out)

        deadline = _DEADLINE[0]

        def one_stage(stage, fixed: dict, previous, until: float | None) -> tuple[str, optuna.Study]:
            study = open_stage(storage, space, stage, fixed, previous, enqueue_defaults=False)
            study.set_user_attr("driver", "ray")
            _DEADLINE[0] = until  # the stage's share of the timeout: the searcher stops proposing after it
            try:
                return run_stage(space, stage, study, fixed, request, workers, points if stage.index == 1 else None, out,
                                 pace), study
            finally:
                _DEADLINE[0] = deadline

        status = run_stages(space, one_stage, out, deadline)
    finally:
        _DEADLINE[0] = None
        if started_ray:
            ray.shutdown()
    return finish(space, status, out, resume_command,
                  f" (run it again to resume the Ray experiment in {space.study.path / 'ray'}: running trials continue from their "
                  "last epoch checkpoint)", started)

def resources(space: SearchSpace, workers: int | None) -> tuple[dict, int]:
    """What one trial asks of the cluster, and how many run at once; a cluster that cannot hold one trial
    is an error now, not a hang."""
    import ray

    available = ray.cluster_resources()
    cluster_gpus = float(available.get("GPU", 0))
    gpus = space.driver.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    request = {"cpu": space.driver.cpus_per_trial, "gpu": gpus}
    for name, key in (("cpu", "CPU"), ("gpu", "GPU")):
        if request[name] > float(available.get(key, 0)):
            raise InputError(f"a trial needs {request[name]:g} {key} (driver.{name}s_per_trial) but the Ray cluster has "
                             f"{available.get(key, 0):g}; add nodes with `ray start --address=...` or ask for fewer per trial")
    if workers is None:
        fits = [float(available.get("CPU", 1)) / request["cpu"]] + ([cluster_gpus / gpus] if gpus else [])
        workers = max(1, int(min(fits) + 1e-9))
    return request, workers


def run_stage(space: SearchSpace, stage, study: optuna.Study, fixed: dict, request: dict, workers: int,
              points: list[dict] | None, out: Callable[[str], None], pace: Callable[[float], None] | None = None) -> str:
    """One stage as Ray experiments: restore the last one if it was interrupted, else start one for the trials
    its budget still has (a later invocation after a timeout starts the next, told what ran before).
    Returns completed | timeout | interrupted."""
    from ray import tune

    root = (space.study.path / "ray").resolve()
    runs = sorted((path for path in root.glob(f"{glob.escape(stage.study_name)}*/") if experiment_index(stage, path) > 0),
                  key=lambda path: experiment_index(stage, path))
    trainable = tune.with_resources(tune.with_parameters(trainable_fn, payload=payload(space, fixed, defaults_point(space, stage))),
                                    request)
    last = runs[-1] if runs else None
    if last is not None and not (last / RECORDED).exists() and tune.Tuner.can_restore(str(last)):
        out(f"{stage.label}: restoring the Ray experiment in {last}")
        tuner = tune.Tuner.restore(str(last), trainable=trainable, resume_errored=True)
        experiment = last
    else:
        trials = study.get_trials(deepcopy=False)
        done, left = len(counted(trials)), remaining(stage, trials)
        if left is not None and left <= 0:
            out(f"{stage.label}: {stage.used_up}; nothing to run")
            return "completed"
        if _DEADLINE[0] is not None and time.time() >= _DEADLINE[0]:
            return "timeout"
        name = stage.study_name if not runs else f"{stage.study_name}-{len(runs) + 1}"
        experiment = root / name
        planned = "trials until the timeout" if left is None else f"{left} trials"
        out(f"{stage.label}: {planned}" + (f" ({done} recorded before)" if done else ""))
        tuner = tune.Tuner(trainable, tune_config=tune_config(space, stage, study, workers, left, points),
                           run_config=tune.RunConfig(name=name, storage_path=str(root), verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=space.study.max_retries),
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # markers: tiny
                                                     callbacks=[ProgressLines(stage.label, space.budget.epochs,
                                                                              space.objective.metric, out, pace,
                                                                              pruned_by(space), derived(space, fixed),
                                                                              bool(space.budget.data_shares))]))
    try:
        with ctrl_c_raises():
            results = tuner.fit()
    except KeyboardInterrupt:  # Ray's experiment snapshot (at most a second old) is kept; nothing is recorded
        return "interrupted"
    written, unfinished = record_results(study, space, stage, fixed, results)
    out(f"{stage.label}: recorded {written} Ray trials in {masked(storage_url(space))} (study {stage.study_name})")
    if unfinished:
        return "interrupted"
    (experiment / RECORDED).write_text(f"{written}\n")
    left = remaining(stage, study.get_trials(deepcopy=False))
    if left is not None and left <= 0:
        return "completed"
    return "timeout"  # the searcher stopped proposing at the deadline


@contextlib.contextmanager
def ctrl_c_raises():
    """While ``Tuner.fit()`` runs, Ctrl-C (SIGINT) raises KeyboardInterrupt, however the process started.
    Python installs that handler only if SIGINT was not ignored at start-up, and a background job of a
    non-interactive shell (``nanopet-tune ... &`` in a script, ``nohup``) starts with it ignored: SIGINT then
    did nothing and the experiment ran to its end. (The Optuna driver's launcher installs its own handler.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def experiment_index(stage, path: Path) -> int:
    """1 for ``<study>``, k for ``<study>-k``, -1 for another stage's folder."""
    if path.name == stage.study_name:
        return 1
    head, _, tail = path.name.rpartition("-")
    return int(tail) if head == stage.study_name and tail.isdigit() else -1


# ---------------------------------------------------------------------------------------------
# Connecting


# ---------------------------------------------------------------------------------------------
# Searcher and scheduler


# ---------------------------------------------------------------------------------------------
# The trainable (runs in Ray worker processes)


# ---------------------------------------------------------------------------------------------
# Recording Ray trials in the Optuna storage


