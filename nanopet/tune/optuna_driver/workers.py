"""Workers: the trial loop of one process, and launching one process per GPU (or N on a CPU).

Each worker loads the data once, neighbour-listed at the search space's largest cutoff (a large dataset is
prepared on disk by the launcher before the workers start, and each worker maps that one copy), then
loops: recover stale trials, ask for a trial while the stage's budget is not used up, train it.
Staged search waits at the end of each stage until every trial of it has finished (the next
stage needs its best), then carries the best values forward.

``launch`` starts ``workers`` processes, each with ``CUDA_VISIBLE_DEVICES`` set to one GPU and
``torch.set_num_threads(cores // workers)``, all sharing the study's storage: GPU workers as new
interpreters (``python -m nanopet.tune.optuna_driver.workers``), CPU workers forked from the launcher, which has
paid the imports already (``forkable``). A worker killed mid-trial leaves a RUNNING trial behind; the other
workers (or the next run) see its process is gone, mark the trial FAIL and re-queue it, and the
launcher starts a replacement worker (up to ``MAX_RESTARTS`` per slot).

Ctrl-C (SIGINT to the launcher): every worker finishes its running epoch, marks its trial FAIL
("interrupted", re-queued) and exits; a second Ctrl-C kills them at once (their trials are then
recovered the same way). Re-running the same command resumes the study up to its budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nanopet.errors import InputError, NanoPETError

MAX_RESTARTS = 3  # replacement workers per slot after crashes
POLL_SECONDS = 0.5  # launcher polling, and stage-barrier polling
START_VARIABLE = "NANOPET_WORKER_START"  # how the launcher started a worker (fork | interpreter), for its record


class WorkersFailed(NanoPETError):
    exit_code = 2


class StopFlag:
    """Set by a signal (or by code) to end the search after the running epoch."""

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "interrupted") -> None:
        self.reason = self.reason or reason
        self.event.set()

    def __call__(self) -> bool:
        return self.event.is_set()


@contextlib.contextmanager
def study_lock(space):
    """Serialises budget checks and trial creation between the local processes of a study."""
    space.study.path.mkdir(parents=True, exist_ok=True)
    with open(space.study.path / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_metric(space, data) -> None:
    metric = space.objective.metric
    needs = {"forces": data.train.has_forces, "stress": data.train.has_stress, "virial": data.train.has_stress}
    for term, present in needs.items():
        if f"_{term}_" in metric and not present:
            raise InputError(f"objective.metric: {metric} but the training set has no {term}; use val_energy_rmse or val_loss")


# ---------------------------------------------------------------------------------------------
# One worker


def work(space, index: int = 0, count: int = 1, deadline: float | None = None, stop: StopFlag | None = None,
         data=None, out=print, launched: float | None = None) -> str:
    """Run trials until the budget is used, the deadline passes or ``stop`` is set.

    Returns "completed", "timeout" or "interrupted".
    """
    import optuna

    from nanopet.data.splits import load_data
    from nanopet.tune.optuna_driver.lease import recover
    from nanopet.tune.optuna_driver.runner import TrialInterrupted, TrialRunner
    from nanopet.tune.stages import run_stages
    from nanopet.tune.storage import open_storage, storage_url
    from nanopet.tune.studies import open_stage
    from nanopet.tune.plan import counted, remaining
    from nanopet.tune.progress import PaceLine

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = stop or StopFlag()
    prefix = f"[w{index}] " if count > 1 else ""
    launched = launched or time.time()
    storage = open_storage(storage_url(space))
    started = time.perf_counter()
    if data is None:
        data = load_data(space.options, space.base_dir, cutoff=space.max_cutoff)
    data_seconds = time.perf_counter() - started
    check_metric(space, data)
    warm_up()
    write_worker_record(space, index, launched, data_seconds, data.prepared_folders)
    pace = PaceLine(space, count, lambda message: out(prefix + message)) if index == 0 else None
    runner = TrialRunner(space, data, stop, out, prefix, pace)
    settings = space.study

    def run_stage(stage, fixed: dict, previous, until: float | None) -> tuple[str, object]:
        """``until``: the stage's share of the timeout (run_stages); after it, once the stage has a trial of its own,
        no trial starts, the running ones finish, and the stage ends with "timeout"."""
        with study_lock(space):
            study = open_stage(storage, space, stage, fixed, previous, index)
        while True:
            if stop():
                return "interrupted", study
            if deadline is not None and time.time() >= deadline:
                return "timeout", study
            recover(study, settings.grace_period, settings.max_retries, log=lambda m: out(prefix + m))
            trial, busy = None, False
            with study_lock(space):
                trials = study.get_trials(deepcopy=False)
                left = remaining(stage, trials)
                share_over = until is not None and time.time() >= until and bool(counted(trials))
                if (left is None or left > 0) and not share_over:
                    trial = study.ask()
                else:
                    busy = any(t.state.name == "RUNNING" for t in trials)
            if trial is not None:
                try:
                    runner.run(study, trial, stage, fixed)
                except (TrialInterrupted, KeyboardInterrupt):
                    return "interrupted", study
            elif busy and stage.index < stage.count:
                time.sleep(POLL_SECONDS)  # the next stage starts from this one's best: wait for its last trials
            elif share_over and (left is None or left > 0):
                return "timeout", study
            else:
                if stage.enumerated and index == 0:
                    out(f"{prefix}{stage.label}: {stage.used_up}")
                return "completed", study

    return run_stages(space, run_stage, (lambda message: out(prefix + message)) if index == 0 else None, deadline)


def warm_up() -> None:
    """Pay once per worker what the first trial would otherwise pay: the optimizer's lazy imports (~1 s)."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def write_worker_record(space, index: int, launched: float, data_seconds: float, prepared: list[str] = ()) -> None:
    """``studies/<name>/workers/<host>-<pid>.json``: start-up costs, for the overhead benchmark, and the prepared
    data folders the worker maps (none: data in its memory)."""
    from nanopet.tune.optuna_driver.lease import HOST

    folder = space.study.path / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"index": index, "pid": os.getpid(), "host": HOST, "launched": launched, "ready": time.time(),
              "startup_s": time.time() - launched, "data_s": data_seconds, "threads": _torch_threads(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": os.environ.get(START_VARIABLE, "in process"),
              "prepared": list(prepared)}
    (folder / f"{HOST}-{os.getpid()}.json").write_text(json.dumps(record, indent=1) + "\n")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# ---------------------------------------------------------------------------------------------
# Launching


@dataclass
class Launch:
    status: str  # completed | timeout | interrupted
    workers: int
    restarts: int = 0


def launch(space, workers: int | None = None, gpus: list[int] | None = None, threads: int | None = None,
           out=print) -> Launch:
    """Run the search on ``workers`` processes (default: one per GPU, else 1 in this process)."""
    deadline = time.time() + space.budget.timeout if space.budget.timeout else None
    if gpus is None and workers is None:
        gpus = detect_gpus()
    if gpus:
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--gpus {','.join(map(str, gpus))}: no CUDA device is visible; use --workers N on a CPU")
    count = workers or (len(gpus) if gpus else 1)
    if count < 1:
        raise InputError(f"--workers: must be at least 1, got {count}")
    threads = threads or threads_per_worker(count)
    if count == 1 and not gpus:
        return Launch(in_process(space, deadline, threads, out, launched=time.time()), 1)
    from nanopet.data.splits import prepare_data

    prepare_data(space.options, space.base_dir, space.max_cutoff)  # here, once: the workers then map one copy
    return processes(space, count, gpus or [], threads, deadline, out)


def detect_gpus() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    import torch

    if not torch.cuda.is_available():
        return []
    if visible:
        return [int(v) for v in visible.split(",") if v.strip().isdigit()][: torch.cuda.device_count()]
    return list(range(torch.cuda.device_count()))


def in_process(space, deadline, threads: int, out, launched: float | None = None) -> str:
    import torch

    stop = StopFlag()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    restore = _install_handlers(stop, out, escalate=True) if threading.current_thread() is threading.main_thread() else None
    try:
        return work(space, 0, 1, deadline, stop, out=out, launched=launched)
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        torch.set_num_threads(previous_threads)
        if restore:
            restore()


def _install_handlers(stop: StopFlag, out, escalate: bool):
    """First SIGINT/SIGTERM: stop after the running epoch; a second SIGINT (escalate): stop now."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if stop() and escalate and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not stop():
            out("stopping: the running epoch finishes, then its trial is marked interrupted and re-queued "
                "(Ctrl-C again to stop now)")
        stop.request("interrupted")

    for s in previous:
        signal.signal(s, handler)
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


def forkable(gpus: list[int]) -> bool:
    """Whether the workers can be forked from this process, which has imported torch, Optuna and the trainer
    already (a worker then starts at once instead of paying ~2 s of imports), rather than each started as a new
    interpreter: on Linux, for CPU workers of a torch built without CUDA or ROCm. A process forked from one that
    has touched CUDA cannot use it, so GPU workers always start afresh."""
    import torch

    return sys.platform.startswith("linux") and not gpus and not torch.backends.cuda.is_built() and torch.version.hip is None


class _Forked:
    """A worker forked from the launcher, with the two ``subprocess.Popen`` calls the launcher makes."""

    def __init__(self, arguments: str, env: dict, quiet: bool):
        import multiprocessing

        self.process = multiprocessing.get_context("fork").Process(target=_forked_main, args=(arguments, env, quiet))
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode  # -N when killed by signal N, as Popen.poll

    def send_signal(self, signum) -> None:
        os.kill(self.pid, signum)


def _forked_main(arguments: str, env: dict, quiet: bool) -> None:
    os.environ.update(env)
    if quiet:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(worker_main([arguments]))


def processes(space, count: int, gpus: list[int], threads: int, deadline, out, stdout=None, fork: bool | None = None) -> Launch:
    """Run ``count`` worker processes to the end of the search. ``fork``: fork them from this process (default: where
    ``forkable``); ``stdout``: theirs (None: this process's, ``subprocess.DEVNULL``: none)."""
    payload = {"raw": space.raw, "base_dir": str(space.base_dir), "source": str(space.source) if space.source else None,
               "name": space.study.name, "count": count, "deadline": deadline, "threads": threads}
    children: dict[int, subprocess.Popen | _Forked] = {}
    restarts = {k: 0 for k in range(count)}
    fork = forkable(gpus) if fork is None else fork
    prepared = time.time()
    if fork:
        warm_up()  # once, here: every forked worker inherits it (counted in each worker's start-up time)

    def start(k: int, launched: float | None = None) -> None:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), START_VARIABLE: "fork" if fork else "interpreter"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[k % len(gpus)])
        arguments = json.dumps({**payload, "index": k, "launched": launched or time.time()})
        if fork:
            children[k] = _Forked(arguments, env, quiet=stdout == subprocess.DEVNULL)
        else:
            children[k] = subprocess.Popen([sys.executable, "-m", "nanopet.tune.optuna_driver.workers", arguments], env={**os.environ, **env},
                                           stdout=stdout)

    stop = StopFlag()
    presses = []

    def handler(signum, frame):
        presses.append(signum)
        if len(presses) == 1:
            out("stopping: each worker finishes its running epoch, marks its trial interrupted and re-queues it "
                "(Ctrl-C again to stop now)")
            stop.request("interrupted")
            for child in children.values():
                _signal(child, signal.SIGTERM)
        else:
            for child in children.values():
                _signal(child, signal.SIGKILL)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    for s in previous:
        signal.signal(s, handler)
    where = f"GPUs {','.join(str(gpus[k % len(gpus)]) for k in range(count))}" if gpus else f"{threads} CPU thread(s) each"
    out(f"starting {count} workers ({where}) on study {space.study.name}")
    failed = []
    try:
        for k in range(count):
            start(k, prepared)
        while children:
            time.sleep(POLL_SECONDS)
            for k, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                del children[k]
                if code < 0 and not stop():
                    name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
                    if restarts[k] < MAX_RESTARTS and (deadline is None or time.time() < deadline):
                        restarts[k] += 1
                        out(f"worker {k} (pid {child.pid}) was killed ({name}); its trial is retried; starting a replacement")
                        start(k)
                    else:
                        out(f"worker {k} (pid {child.pid}) was killed ({name}); not restarted")
                elif code not in (0, 130) and not stop():
                    failed.append((k, code))
                    for other in children.values():
                        _signal(other, signal.SIGTERM)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if len(presses) > 1:
        _recover_all(space, out)
    if failed:
        raise WorkersFailed(f"worker {failed[0][0]} stopped with exit code {failed[0][1]} (its error is printed above)")
    status = "interrupted" if stop() else ("timeout" if deadline is not None and time.time() >= deadline else "completed")
    return Launch(status, count, sum(restarts.values()))


def _signal(child: subprocess.Popen | _Forked, signum) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)


def _recover_all(space, out) -> None:
    """After killing the workers: mark their trials interrupted and re-queue them now."""
    from nanopet.tune.optuna_driver.lease import recover
    from nanopet.tune.storage import open_storage, storage_url
    from nanopet.tune.studies import created_stages

    for _, study in created_stages(space, open_storage(storage_url(space))):
        recover(study, space.study.grace_period, space.study.max_retries, log=out)


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process (started by ``launch``)."""
    argv = sys.argv[1:] if argv is None else argv
    payload = json.loads(argv[0])
    threads = int(payload["threads"])
    import torch

    torch.set_num_threads(threads)
    from nanopet.tune.space import parse

    stop = StopFlag()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C and forwards SIGTERM
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.request("interrupted"))
    source = Path(payload["source"]) if payload["source"] else None
    try:
        space = parse(payload["raw"], Path(payload["base_dir"]), source, default_name=payload["name"])
        status = work(space, payload["index"], payload["count"], payload["deadline"], stop, launched=payload["launched"],
                      out=lambda message: print(message, flush=True))
    except NanoPETError as error:
        print(f"nanopet-tune: error: [w{payload['index']}] {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return 130 if status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(worker_main())
