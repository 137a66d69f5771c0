"""The Ray Tune driver on tiny data (CPU, one local Ray runtime of 2 CPUs for the module): trials land
in the Optuna storage with the right states, ASHA stops a bad trial, re-running records nothing twice,
bad --address values are one-line errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")
os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"

from optuna.trial import TrialState  # noqa: E402
from tune_support import cli, cli_env, merge, tiny_space, trials, write_space  # noqa: E402

from nanopet.errors import InputError  # noqa: E402
from nanopet.tune import load_search_space  # noqa: E402
from nanopet.tune import ray_driver  # noqa: E402

GOOD, BAD = 3.0e-3, 1.0e-6  # learning rates: the bad one hardly moves in 3 epochs


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def ray_space(directory, **sections):
    raw = tiny_space(directory, budget={"n_trials": 4, "epochs": 3},
                     parameters={"learning_rate": {"type": "categorical", "choices": [GOOD, BAD]}},
                     study={"pruner": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2}})
    raw["architecture"]["model"].update(cutoff=3.5)
    return load_search_space(merge(raw, sections))


@pytest.fixture(scope="module")
def ray_study(ray_runtime, tmp_path_factory):
    """Four trials, two at once: the defaults (good), good, bad, bad (in this order)."""
    directory = tmp_path_factory.mktemp("ray")
    space = ray_space(directory)
    lines = []
    started = time.perf_counter()
    ray_driver.run(space, workers=2, out=lines.append, points=[{"learning_rate": GOOD}, {"learning_rate": BAD},
                                                                {"learning_rate": BAD}])
    return space, directory, lines, time.perf_counter() - started


def test_four_trial_study_lands_in_the_optuna_storage(ray_study):
    space, directory, lines, seconds = ray_study
    done = trials(directory, "tiny")
    assert len(done) == 4
    assert all(t.user_attrs["driver"] == "ray" and t.user_attrs["ray_trial_id"] for t in done)
    assert len({t.user_attrs["ray_trial_id"] for t in done}) == 4
    completed = [t for t in done if t.state == TrialState.COMPLETE]
    assert completed and all(t.params["learning_rate"] == GOOD for t in completed)
    for t in completed:
        assert t.user_attrs["epochs"] == 3 and sorted(t.intermediate_values) == [0, 1, 2]
        assert t.value == pytest.approx(t.intermediate_values[2])
        assert t.user_attrs["config"] == {"learning_rate": GOOD}
        assert "val_forces_rmse" in t.user_attrs["metrics"] and t.user_attrs["best_epoch"] in (0, 1, 2)
        assert os.path.isfile(os.path.join(t.user_attrs["artifacts"], "model.ckpt"))
    assert any("recorded 4 Ray trials" in line for line in lines)
    assert (directory / "tiny" / "ray" / "tiny").is_dir()


def test_asha_stops_the_bad_trial_early_and_it_is_pruned(ray_study):
    _, directory, _, _ = ray_study
    bad = [t for t in trials(directory, "tiny") if t.params["learning_rate"] == BAD]
    assert len(bad) == 2
    for t in bad:  # never COMPLETE with a partial value
        assert t.state == TrialState.PRUNED and t.value is None
        assert t.user_attrs["epochs"] < 3 and len(t.intermediate_values) == t.user_attrs["epochs"]
        assert "ASHA" in t.user_attrs["reason"]


def test_running_again_restores_the_experiment_and_records_nothing_twice(ray_study):
    space, directory, _, _ = ray_study
    lines = []
    ray_driver.run(space, workers=2, out=lines.append)
    assert any(line.startswith("restoring the Ray experiment") for line in lines)
    assert any("recorded 0 Ray trials" in line for line in lines)
    assert len(trials(directory, "tiny")) == 4


def test_report_reads_a_ray_study(ray_study, tmp_path):
    _, directory, _, _ = ray_study
    result = cli("report", "tiny", "--studies-dir", directory, "--out", tmp_path / "reports", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tiny" in result.stdout


def test_staged_strategy_is_refused(tmp_path):
    raw = tiny_space(tmp_path, strategy={"type": "staged", "importance": ["learning_rate", "cutoff"]})
    with pytest.raises(InputError, match="strategy: joint"):
        ray_driver.run(load_search_space(raw), out=lambda m: None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "10.255.255.1:6379", "nonsense"])
def test_unreachable_address_is_a_one_line_error_within_seconds(tmp_path, address):
    space = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies"))
    started = time.perf_counter()
    result = cli(space, "--driver", "ray", "--address", address.format(port=free_port()), cwd=tmp_path, timeout=60)
    assert time.perf_counter() - started < 20
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanopet-tune: error: --address"), result.stderr


def test_address_needs_the_ray_driver(tmp_path):
    space = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies"))
    result = cli(space, "--address", "auto", cwd=tmp_path)
    assert result.returncode == 2 and "--driver ray" in result.stderr


@pytest.mark.slow
def test_search_on_a_two_node_cluster(tmp_path):
    """`ray start --head` + `ray start --address` (one CPU each, on this machine), then --address HOST:PORT."""
    if ray.is_initialized():  # `ray stop` below ends every Ray process of this machine
        ray.shutdown()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = dict(cli_env(), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_AUTH_MODE="disabled")
    port = free_port()
    space = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies", budget={"n_trials": 4, "epochs": 2}))
    try:
        for extra in (["--head", "--port", str(port), "--include-dashboard=false"], ["--address", f"127.0.0.1:{port}"]):
            started = subprocess.run([ray_bin, "start", "--num-cpus", "1", "--disable-usage-stats", *extra], env=env,
                                     capture_output=True, text=True, timeout=90)
            assert started.returncode == 0, started.stderr[-2000:]
        result = subprocess.run([sys.executable, "-m", "nanopet.cli", str(space), "--driver", "ray", "--address",
                                 f"127.0.0.1:{port}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "2 at once" in result.stdout  # both nodes' CPUs
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=60)
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 4 and all(t.user_attrs["driver"] == "ray" for t in done)
    assert all(t.state == TrialState.COMPLETE for t in done)  # pruner: none -> no ASHA


@pytest.mark.slow
def test_interrupted_run_resumes_from_ray_checkpoints(tmp_path):
    """Ctrl-C during the search records nothing; the same command again restores the Ray experiment,
    resumes the running trials from their last epoch checkpoint and records every trial once."""
    raw = tiny_space(tmp_path / "studies", budget={"n_trials": 3, "epochs": 8},
                     study={"pruner": {"type": "successive_halving", "min_resource": 2, "reduction_factor": 2}})
    space = write_space(tmp_path / "space.yaml", raw)
    command = [sys.executable, "-m", "nanopet.cli", str(space), "--driver", "ray"]
    env = dict(cli_env(), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trials_dir = tmp_path / "studies" / "tiny" / "trials"
    deadline = time.time() + 90
    while time.time() < deadline and sum(len(f.read_text().splitlines()) for f in trials_dir.glob("ray-*/metrics.csv")) < 4:
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == 130 and "run the same command again" in output, output[-2000:]
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "restoring the Ray experiment" in second.stdout
    # Not asserted: that a trial resumed from a Ray checkpoint ("resumed from" in its train.log). Whether a
    # trial is mid-run with a registered checkpoint when SIGINT lands is a race (seen failing under load in
    # CI); checkpoint resume after an interrupt is an open item of issue #4.
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 3 and len({t.user_attrs["ray_trial_id"] for t in done}) == 3
    for t in done:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert t.user_attrs["epochs"] == (8 if t.state == TrialState.COMPLETE else len(t.intermediate_values))
        assert sorted(t.intermediate_values) == list(range(t.user_attrs["epochs"]))
