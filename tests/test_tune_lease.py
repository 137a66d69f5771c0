"""Stale-trial detection and retry (unit level: fake owners, no training)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from nanopet.tune.optuna_driver.lease import alive, fail_and_retry, HOST, identity, recover, stale_reason
from nanopet.tune.storage import open_storage
from nanopet.tune.plan import counted


def study_with_running_trial(tmp_path, owner, heartbeat=None):
    study = optuna.create_study(study_name="s", storage=open_storage(str(tmp_path / "journal.log")))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    if owner is not None:
        trial.set_user_attr("worker", owner)
    trial.set_user_attr("heartbeat", time.time() if heartbeat is None else heartbeat)
    return study, study.get_trials(deepcopy=False)[trial.number]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_alive_checks_pid_and_start_time():
    me = identity()
    assert alive(me) is True
    assert alive({**me, "start": "1"}) is False  # same pid, another process (pid reuse)
    assert alive({"host": HOST, "pid": dead_pid(), "start": None}) is False
    assert alive({"host": "elsewhere", "pid": 1}) is None


def test_stale_when_the_process_died_or_the_lease_expired(tmp_path):
    _, trial = study_with_running_trial(tmp_path / "a", {"host": HOST, "pid": dead_pid(), "start": None})
    assert "died" in stale_reason(trial, grace_period=300)
    _, trial = study_with_running_trial(tmp_path / "b", {"host": "elsewhere", "pid": 1}, heartbeat=time.time() - 1000)
    assert "renewed no lease for" in stale_reason(trial, grace_period=300)
    _, trial = study_with_running_trial(tmp_path / "c", {"host": "elsewhere", "pid": 1})
    assert stale_reason(trial, grace_period=300) is None
    _, trial = study_with_running_trial(tmp_path / "d", identity())
    assert stale_reason(trial, grace_period=300) is None


def test_recover_fails_and_requeues_once_then_gives_up(tmp_path):
    study, trial = study_with_running_trial(tmp_path, {"host": HOST, "pid": dead_pid(), "start": None})
    assert recover(study, grace_period=300, max_retries=1) == 1
    assert recover(study, grace_period=300, max_retries=1) == 0  # already handled
    failed, retry = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and "died" in failed.user_attrs["reason"]
    assert retry.state == TrialState.WAITING and retry.user_attrs == {"retry_of": 0, "attempt": 2}
    assert counted([failed, retry]) == []  # the failure does not use the budget; its retry will
    second = study.ask()  # the retry runs (same parameters) and its worker dies too
    assert second.suggest_float("x", 0, 1) == trial.params["x"]
    second.set_user_attr("worker", {"host": HOST, "pid": dead_pid(), "start": None})
    frozen = study.get_trials(deepcopy=False)[second.number]
    assert fail_and_retry(study, frozen, "died again", max_retries=1) == "failed"  # attempt 2 > max_retries 1
    assert len(study.get_trials(deepcopy=False)) == 2 and len(counted(study.get_trials(deepcopy=False))) == 1
    assert fail_and_retry(study, frozen, "late", max_retries=1) == ""  # finished meanwhile: nothing happens


def test_own_running_trial_is_never_recovered(tmp_path):
    study, _ = study_with_running_trial(tmp_path, identity())
    assert recover(study, grace_period=0.0, max_retries=2) == 0
    assert os.getpid() == identity()["pid"]
