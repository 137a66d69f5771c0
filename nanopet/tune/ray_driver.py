"""The Ray Tune driver: ``nanopet-tune SPACE.yaml --driver ray [--address auto|HOST:PORT]``.

The same search-space file as the Optuna driver, run as a Ray Tune experiment:

- trainable: one trial = ``nanopet.train.train`` on data loaded once per Ray worker process
  (neighbour lists at the space's largest cutoff), reporting every epoch with its checkpoint
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
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from nanopet.errors import InputError
from nanopet.tune.pruning import RankingRule, finished_curves
from nanopet.tune.space import SearchSpace
from nanopet.tune.storage import masked, open_storage, record_storage, storage_url
from nanopet.tune.study import (check_resumable, counted, decode, defaults_point, distribution, encode, open_stage, remaining, short,
                                stage_sampler)
from nanopet.tune.trial import (DEFAULTS, RAY_PREFIX, STOPPED_FILE, EpochBudget, PaceLine, Stopped, TrialData, TrialEpochs, TrialRecord,
                                best_metrics, copied_line,
                                epoch_line, finished_twin, finite, measure_cost, progress_due, protected, repeat_of, share_text, timing,
                                train_trial, trial_folder, user_attrs)

OBJECTIVE = "objective"  # the reported key ASHA and the searcher minimise
COST = "cost"  # the second objective of a two-objective front
LAST_CHECKPOINT = "last.ckpt"  # a Ray trial's newest epoch checkpoint, in its folder
MARKER = "epoch.json"  # what a Ray checkpoint holds: the epoch and the path of last.ckpt
RECORDED = ".recorded"  # written into a Ray experiment's folder once its trials are in the Optuna storage
DUPLICATE = "duplicate_of"  # config and result key of a proposal that repeats a finished trial (JSON: which, its result)
TIME_ATTR = "epoch"  # the budget's steps reached (1-based: epochs trained, unless budget.equal sizes the epochs), ASHA's time axis
TRAINED_EPOCH = "trained_epoch"  # the trial's own epoch (0-based) of a report
HELD_AT_MOST = 8  # proposals the searcher holds back at once because they repeat a running trial
CONNECT_TIMEOUT = 5.0  # s to reach a cluster given by --address
GCS_WAIT = "RAY_gcs_server_port_wait_time_s"  # ray.init's retries (about 1 s each) to reach the cluster's GCS
_DATA: dict = {}  # per Ray worker process: data loaded once, keyed by dataset options + cutoff
_SPACES: dict = {}
_DEADLINE: list = [None]  # in the driver process: when the searcher stops proposing trials (budget.timeout)


def run(space: SearchSpace, workers: int | None = None, out: Callable[[str], None] = print, points: list[dict] | None = None,
        resume_command: str | None = None, started: float | None = None):
    """Run (or resume) the Ray experiments of ``space`` (one per stage), recording their trials in the Optuna storage.

    ``workers``: trials at once (default: as many as the cluster's CPUs, or GPUs, allow). ``points``: configs
    (parameter name -> value) tried right after the defaults in the first stage. Cluster and resources come
    from ``space.driver`` (address, cpus_per_trial, gpus_per_trial). Returns a ``SearchResult``; ``started``: when the
    search began (``time.time()``), for its last line, the time taken.
    """
    import ray

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


def connect(address: str | None) -> bool:
    """Start a local Ray runtime (returns True: ours to shut down) or join a cluster (False)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                             os.environ.get("PYTHONPATH")])),
                                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}}
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
                 logging_level=logging.WARNING)
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


# ---------------------------------------------------------------------------------------------
# The trainable (runs in Ray worker processes)


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


# ---------------------------------------------------------------------------------------------
# Recording Ray trials in the Optuna storage


def record_results(study: optuna.Study, space: SearchSpace, stage, fixed: dict, results) -> tuple[int, int]:
    """Add every finished Ray trial not yet in the stage's study as an Optuna trial; returns (added, unfinished).
    Unfinished trials (an interrupted experiment) are left to the run that restores it."""
    done = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    statuses = [trial.status for trial in results._experiment_analysis.trials]  # ResultGrid keeps this order
    added = unfinished = 0
    for result, status in zip(results, statuses):
        if status not in ("TERMINATED", "ERROR"):
            unfinished += 1
            continue
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        if trial_id in done or not all(name in config for name in stage.parameters):
            continue
        study.add_trial(ray_trial(space, stage, fixed, study, result, trial_id, config))
        folder = trial_folder(space.study.path, RAY_PREFIX + trial_id)  # finished: model.ckpt (complete trials) is what stays
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        (folder / LAST_CHECKPOINT).unlink(missing_ok=True)
        added += 1
    return added, unfinished


def ray_trial(space: SearchSpace, stage, fixed: dict, study: optuna.Study, result, trial_id: str, config: dict):
    """The Optuna trial of one finished Ray trial: params, per-epoch values, state and the attributes the
    Optuna driver's trials carry (config, options, metrics, best_epoch, artifacts, timing, reason)."""
    rows = []
    frame = result.metrics_dataframe
    if frame is not None and OBJECTIVE in frame:
        rows = [row for row in frame.to_dict("records") if finite(row.get(OBJECTIVE))]
    by_epoch = {int(row[TIME_ATTR]): row for row in rows if TIME_ATTR in row}  # epochs 1, 2, ..., or the shares' steps
    shares = bool(space.budget.data_shares)
    intermediate = {step if shares else step - 1: float(row[OBJECTIVE]) for step, row in sorted(by_epoch.items())}
    last = rows[-1] if rows else {}
    earlier = study.get_trials(deepcopy=False)
    folder = trial_folder(space.study.path, RAY_PREFIX + trial_id)
    params = {name: config[name] for name in stage.parameters}
    values = space.trial_values(fixed, {name: decode(v) for name, v in params.items()})
    wall = float(last.get("time_total_s", 0.0) or 0.0)
    by_trained = {int(row[TRAINED_EPOCH]): row for row in rows if finite(row.get(TRAINED_EPOCH))}  # each epoch trained (a trial whose
    # budget.equal gives it fewer epochs than budget.epochs reports several steps in one epoch)
    record = TrialRecord(driver="ray", ray_trial_id=trial_id, trial=f"{study.study_name}#{len(earlier)}", config=values,
                         options=space.options_for(values), epochs=None if shares else len(by_trained) or len(by_epoch),
                         timing=timing(wall, float(last.get("setup_time", 0.0) or 0.0), 0.0,
                                       float(sum(float(r.get("epoch_time", 0.0) or 0.0) for r in (by_trained or by_epoch).values()))))
    if finite(last.get("epoch_budget")):
        record.epoch_budget = int(last["epoch_budget"])
    if finite(last.get("measured_epoch_seconds")):
        record.epoch_seconds = float(last["measured_epoch_seconds"])
    if folder.is_dir():
        record.artifacts = str(folder.resolve())
    best_epoch = last.get("best_epoch")
    if best_epoch is not None and finite(best_epoch):
        record.best_epoch = int(best_epoch)
        record.metrics = best_metrics(last if shares else by_trained.get(int(best_epoch), by_epoch.get(int(best_epoch) + 1, last)))
    if shares and finite(last.get("compute")):
        record.compute = float(last["compute"])
    if last.get("cost") is not None and finite(last.get("cost")):
        record.cost = float(last["cost"])
    if params == defaults_point(space, stage) and not any(protected(t.user_attrs.get("role")) for t in earlier):
        record.role = DEFAULTS  # the study's gain over defaults is measured from it
    twin = duplicated(earlier, last)
    if twin is not None:  # recorded as the Optuna driver records a repeat: the twin's result, not trained again
        outcome = repeat_of(twin)
        record.epochs = None
        for key, value in outcome.attrs.items():
            setattr(record, key, value)
        state, value, intermediate = outcome.state, outcome.values, outcome.intermediate
    elif result.error is not None:
        state, value = TrialState.FAIL, None
        message = str(result.error).strip().splitlines()
        record.reason = f"{type(result.error).__name__}: {message[-1] if message else ''}"
    elif last.get("finished"):
        state = TrialState.COMPLETE
        if shares and finite(last.get("share_epochs")):
            record.epochs = int(last["share_epochs"])  # on all the training set, the last share
        value = [float(last[OBJECTIVE]), float(last[COST])] if space.objective.n_values > 1 else [float(last[OBJECTIVE])]
    elif rows:
        state, value = TrialState.PRUNED, None
        stopped = folder / STOPPED_FILE
        where = (f"the share {share_text(float(last.get('share', 0.0)) or 1.0)} of the training set" if shares
                 else f"epoch {len(by_epoch)}/{space.budget.epochs}")
        record.reason = stopped.read_text().strip() if stopped.is_file() else \
            f"stopped by ASHA after {where} ({space.objective.metric} {float(last[OBJECTIVE]):.4g}: not in the top fraction at this rung)"
    else:
        state, value = TrialState.FAIL, None
        record.reason = "no epoch reported (stopped or interrupted before the first epoch)"
    attrs = user_attrs(record)
    distributions = {name: distribution(space.parameters[name]) for name in stage.parameters}
    frozen = optuna.trial.create_trial(params=params, distributions=distributions, values=value, state=state,
                                       intermediate_values=intermediate if space.objective.n_values == 1 else None,
                                       user_attrs=attrs)
    end = last.get("clock", last.get("timestamp"))  # Ray's own timestamp has whole seconds only
    if finite(end):  # when it ran, not when it was recorded (timelines, trials per hour)
        frozen.datetime_complete = datetime.fromtimestamp(float(end))
        frozen.datetime_start = frozen.datetime_complete - timedelta(seconds=attrs["timing"]["wall"])
    return frozen


def duplicated(earlier: list, last: dict):
    """The recorded trial a duplicate's result (``last``) names, or None."""
    if not last.get(DUPLICATE):
        return None
    twin = json.loads(last[DUPLICATE])
    for t in earlier:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and \
                (t.user_attrs.get("ray_trial_id") == twin.get("ray_trial_id", "") or t.number == twin.get("number")):
            return t
    return None

