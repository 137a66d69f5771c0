"""Who runs a trial, and what happens to trials whose worker is gone.

A worker claims each trial it runs with user attributes ``worker`` ({host, pid, start}) and
``heartbeat`` (renewed every ``heartbeat_interval`` seconds by a thread). A RUNNING trial is stale
when its worker's process is gone (same host: checked by pid and process start time, at once)
or its lease is older than ``grace_period`` (another machine). This works for every storage:
Optuna's own heartbeat exists only for RDB storages, and the journal file has none.

A stale trial is marked FAIL with the reason and re-queued (WAITING, same parameters, user
attributes ``retry_of`` and ``attempt``) up to ``max_retries`` times; the failure then no
longer counts against the budget, its retry does.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

HOST = socket.gethostname()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def identity() -> dict:
    return {"host": HOST, "pid": os.getpid(), "start": process_start(os.getpid())}


def alive(owner: dict) -> bool | None:
    """Whether the worker process ``owner`` still runs; None when it is on another machine."""
    if owner.get("host") != HOST:
        return None
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    start = process_start(pid)
    if start is not None and owner.get("start") is not None and start != owner["start"]:
        return False  # the pid was reused by another process
    if _is_zombie(pid):
        return False
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _storage(study: optuna.Study):
    return study._storage  # writing to another worker's trial needs the storage (Optuna has no public call)


def claim(study: optuna.Study, trial: optuna.Trial) -> None:
    trial.set_user_attr("worker", identity())
    trial.set_user_attr("heartbeat", time.time())


class Lease:
    """Renews a running trial's ``heartbeat`` from a background thread until stopped."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float):
        self._storage, self._trial_id, self._interval = _storage(study), trial._trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="nanopet-lease", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.set_trial_user_attr(self._trial_id, "heartbeat", time.time())
            except Exception:  # noqa: BLE001 - finished meanwhile, or storage hiccup: the next renewal retries
                if self._stop.is_set():
                    return


def stale_reason(trial: FrozenTrial, grace_period: float, now: float | None = None) -> str | None:
    now = time.time() if now is None else now
    owner = trial.user_attrs.get("worker")
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    if owner is None:  # created, never claimed: the worker died between ask and claim (or is claiming now)
        return f"no worker claimed it for {now - started:.0f} s" if now - started > max(grace_period, 60) else None
    state = alive(owner)
    if state is False:
        return f"its worker (pid {owner.get('pid')} on {owner.get('host')}) died"
    if state is None:
        age = now - float(trial.user_attrs.get("heartbeat", started))
        if age > grace_period:
            return f"its worker (pid {owner.get('pid')} on {owner.get('host')}) renewed no lease for {age:.0f} s"
    return None


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retries: int, count_attempt: bool = True) -> str:
    """Mark a RUNNING trial FAIL with ``reason`` and re-queue its parameters.

    Returns "retried", "failed" (retries exhausted) or "" when another process got there first.
    """
    storage = _storage(study)
    attempt = int(trial.user_attrs.get("attempt", 1))
    retry = not count_attempt or attempt <= max_retries
    try:
        storage.set_trial_user_attr(trial._trial_id, "reason", reason + ("; re-queued" if retry else f"; not retried after {attempt} attempts"))
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except (UpdateFinishedTrialError, RuntimeError, KeyError):
        return ""
    if not retry:
        return "failed"
    keep = {k: v for k, v in trial.user_attrs.items() if k in ("role", "config")}
    study.enqueue_trial(dict(trial.params), user_attrs={**keep, "retry_of": trial.number,
                                                         "attempt": attempt + 1 if count_attempt else attempt})
    return "retried"


def recover(study: optuna.Study, grace_period: float, max_retries: int, log=None) -> int:
    """Fail and re-queue every stale RUNNING trial of ``study``; returns how many were found."""
    found = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker") or {}
        if owner.get("host") == HOST and owner.get("pid") == os.getpid():
            continue
        reason = stale_reason(trial, grace_period)
        if reason is None:
            continue
        outcome = fail_and_retry(study, trial, f"interrupted: {reason}", max_retries)
        if outcome:
            found += 1
            if log is not None:
                log(f"trial {trial.number} of {study.study_name}: {reason}; "
                    + ("re-queued" if outcome == "retried" else f"not retried ({max_retries} retries used)"))
    return found
