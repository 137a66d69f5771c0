"""Several worker processes through the real command line: sharing a study, SIGKILL and resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState
from tune_support import cli, cli_env, tiny_space, trials, write_space

from nanopet.tune import load_search_space
from nanopet.tune.plan import counted
from nanopet.tune.optuna_driver.workers import forkable, processes


def start(path, *args, cwd):
    return subprocess.Popen([sys.executable, "-m", "nanopet.cli", str(path), *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(condition, directory, timeout=90.0):
    """Poll the study until ``condition(trials)`` returns something truthy; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = condition(trials(directory, "tiny"))
        except Exception:  # noqa: BLE001 - the study may not exist yet
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the study")


def running_mid_trial(done, after=-1):
    """A RUNNING trial (number > after) that reported at least one epoch."""
    return next((t for t in done if t.state == TrialState.RUNNING and t.number > after and t.intermediate_values
                 and "worker" in t.user_attrs), None)


def test_two_workers_share_one_study(tmp_path):
    path = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies", budget={"n_trials": 8, "epochs": 3}))
    result = cli(path, "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "lock" not in result.stderr.lower()
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 8 and len(counted(done)) == 8
    assert all(t.state == TrialState.COMPLETE for t in done)
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2  # both workers ran trials ...
    assert len({(t.params["learning_rate"], t.params["cutoff"]) for t in done if "duplicate_of" not in t.user_attrs}) == \
        len([t for t in done if "duplicate_of" not in t.user_attrs])  # ... distinct ones
    records = [json.loads(p.read_text()) for p in (tmp_path / "studies" / "tiny" / "workers").glob("*.json")]
    assert len(records) == 2 and all(r["threads"] == max(1, os.cpu_count() // 2) for r in records)
    assert {r["start"] for r in records} == {"fork" if forkable([]) else "interpreter"}  # forked where it can be
    assert "[w0] trial" in result.stdout and "[w1] trial" in result.stdout


def test_workers_started_as_new_interpreters_share_one_study(tmp_path):
    """The way GPU workers start (a forked process could not use CUDA once the launcher touched it), on CPU."""
    assert not forkable([0])
    space = load_search_space(tiny_space(tmp_path / "studies", budget={"n_trials": 4, "epochs": 2}))
    launch = processes(space, 2, [], 1, None, out=lambda line: None, stdout=subprocess.DEVNULL, fork=False)
    assert launch.status == "completed" and launch.workers == 2 and launch.restarts == 0
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 4 and all(t.state == TrialState.COMPLETE for t in done)
    records = [json.loads(p.read_text()) for p in (tmp_path / "studies" / "tiny" / "workers").glob("*.json")]
    assert [r["start"] for r in records] == ["interpreter"] * 2 and len({r["pid"] for r in records}) == 2
    assert {t.user_attrs["worker"]["pid"] for t in done} <= {r["pid"] for r in records}


def test_a_worker_waits_for_a_running_trial_with_the_same_parameters(tmp_path):
    # one configuration (the defaults), two workers: the second trial must not train it again at the same time
    raw = tiny_space(tmp_path / "studies", budget={"n_trials": 3, "epochs": 24},  # long enough for the second worker to start
                     parameters={"learning_rate": {"type": "categorical", "choices": [3.0e-3]}},
                     strategy={"type": "joint", "enumerate": False})  # repeats wanted: the sampler proposes them
    result = cli(write_space(tmp_path / "space.yaml", raw), "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 3 and all(t.state == TrialState.COMPLETE for t in done)
    assert [t.user_attrs.get("duplicate_of") for t in done] == [None, 0, 0]
    assert len({t.value for t in done}) == 1
    assert sorted(p.name for p in (tmp_path / "studies" / "tiny" / "trials").iterdir()) == ["0"]  # trained once
    assert "same parameters as trial 0, running now: waiting for its result" in result.stdout


def test_a_trial_waits_for_an_earlier_trial_still_suggesting_its_parameters(tmp_path):
    """Workers that start together ask for trials within milliseconds: when the later trial looks for a running
    twin, the earlier one may have no parameters yet. The later one must see them first (here: the same) and
    then take that trial's result, not train the same configuration again."""
    import threading

    import optuna

    from nanopet.data.splits import load_data
    from nanopet.tune import load_search_space
    from nanopet.tune.optuna_driver.runner import TrialRunner

    space = load_search_space(tiny_space(tmp_path))
    runner = TrialRunner(space, load_data(space.options, space.base_dir, cutoff=space.max_cutoff), out=lambda m: None)
    study = optuna.create_study()
    for value in (3.0e-3, 3.0e-3, 1.0e-3, 3.0e-3):
        study.enqueue_trial({"learning_rate": value})

    def suggest(trial):
        trial.suggest_categorical("learning_rate", [3.0e-3, 1.0e-3])

    earlier, later = study.ask(), study.ask()  # the earlier one: asked by another worker, parameters not yet set
    suggest(later)
    found = {}
    looking = threading.Thread(target=lambda: found.update(twin=runner.wait_for_twin(study, later)))
    looking.start()
    time.sleep(0.5)
    assert looking.is_alive()  # waiting, not training
    suggest(earlier)
    study.tell(earlier, 0.25)
    looking.join(timeout=30)
    assert not looking.is_alive() and found["twin"].number == earlier.number
    # an earlier running trial that settled on other parameters is not waited for
    other, last = study.ask(), study.ask()
    suggest(other)
    suggest(last)
    assert other.params != last.params
    started = time.perf_counter()
    assert runner.wait_for_twin(study, last).number == earlier.number and time.perf_counter() - started < 0.5


def test_sigkill_of_a_worker_then_of_everything_and_resume(tmp_path):
    studies = tmp_path / "studies"
    raw = tiny_space(studies, budget={"n_trials": 6, "epochs": 16})  # trials long enough to be killed mid-way under load
    path = write_space(tmp_path / "space.yaml", raw)

    # a worker killed mid-trial: its trial is failed and retried, a replacement worker starts, the budget is met
    search = start(path, "--workers", "2", cwd=tmp_path)
    pid = wait_for(running_mid_trial, studies).user_attrs["worker"]["pid"]
    os.kill(pid, signal.SIGKILL)
    output, _ = search.communicate(timeout=120)
    assert search.returncode == 0, output
    assert "was killed (SIGKILL)" in output
    done = trials(studies, "tiny")
    victim = next(t for t in done if t.state == TrialState.FAIL)  # the trial its worker was running
    assert victim.user_attrs["worker"]["pid"] == pid and "died" in victim.user_attrs["reason"]
    retry = next(t for t in done if t.user_attrs.get("retry_of") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert len(counted(done)) == 6 and not [t for t in done if t.state == TrialState.RUNNING]

    # everything killed mid-trial, then the same command resumes the study up to its (larger) budget
    search = start(path, "--workers", "2", "--n-trials", 9, cwd=tmp_path)
    wait_for(lambda d: running_mid_trial(d, after=len(done) - 1), studies)
    os.killpg(search.pid, signal.SIGKILL)
    search.communicate(timeout=30)
    killed = trials(studies, "tiny")
    before = {t.number: t.values for t in killed if t.state == TrialState.COMPLETE}
    stale = [t.number for t in killed if t.state == TrialState.RUNNING]
    assert stale  # left RUNNING: nobody could mark them
    resumed = cli(path, "--workers", "2", "--n-trials", 9, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = trials(studies, "tiny")
    assert {t.number: t.values for t in done if t.number in before} == before  # nothing completed is lost
    for number in stale:
        assert done[number].state == TrialState.FAIL and "died" in done[number].user_attrs["reason"]
        assert any(t.user_attrs.get("retry_of") == number for t in done)
    assert len(counted(done)) == 9 and not [t for t in done if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("workers", [2])
def test_ctrl_c_finishes_the_epoch_marks_trials_and_prints_how_to_resume(tmp_path, workers):
    studies = tmp_path / "studies"
    path = write_space(tmp_path / "space.yaml", tiny_space(studies, budget={"n_trials": 6, "epochs": 6}))
    search = start(path, "--workers", workers, cwd=tmp_path)
    wait_for(running_mid_trial, studies)
    os.kill(search.pid, signal.SIGINT)
    output, _ = search.communicate(timeout=60)
    assert search.returncode == 130, output
    assert f"resume with: nanopet-tune search {path} --workers {workers}" in output
    done = trials(studies, "tiny")
    interrupted = [t for t in done if t.state == TrialState.FAIL]
    assert interrupted and all("interrupted by the user" in t.user_attrs["reason"] for t in interrupted)
    assert not [t for t in done if t.state == TrialState.RUNNING]
    resumed = cli(path, "--workers", workers, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = trials(studies, "tiny")
    assert len(counted(done)) == 6 and all(t.state == TrialState.COMPLETE for t in counted(done))
