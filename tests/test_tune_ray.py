"""The Ray Tune driver on tiny data (CPU, one local Ray runtime of 2 CPUs and one declared GPU for the
module, so fractional GPUs are scheduled for real while trials train on the CPU): trials land in the
Optuna storage with the right states, ASHA stops a bad trial, re-running records nothing twice, staged
search, timeout, two-objective fronts, a killed worker's trial resumes from its checkpoint, bad
--address values are one-line errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest

ray = pytest.importorskip("ray")
os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"

from optuna.trial import TrialState  # noqa: E402
from tune_support import cli, cli_env, merge, tiny_space, trials, write_space  # noqa: E402

from nanopet.tune import load_search_space  # noqa: E402
from nanopet.tune import ray_driver  # noqa: E402
from nanopet.tune.ray_driver import driver, names, search  # noqa: E402

GOOD, BAD = 3.0e-3, 1.0e-6  # learning rates: the bad one hardly moves in 3 epochs
GOOD2, BAD2 = 4.0e-3, 2.0e-6


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # a GPU in name: CUDA stays unused
    yield
    ray.shutdown()


def ray_space(directory, pruner: dict | None = None, **sections):
    """Tiny trials through the ray driver; ASHA (from successive_halving settings) unless ``pruner`` is given."""
    raw = tiny_space(directory, budget={"n_trials": 4, "epochs": 3},
                     parameters={"learning_rate": {"type": "categorical", "choices": [GOOD, BAD]}},
                     study={"pruner": pruner or {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2}},
                     driver={"type": "ray", "gpus_per_trial": 0},
                     strategy={"type": "joint", "enumerate": False})  # the tests want repeats; one test enumerates
    raw["architecture"]["model"].update(cutoff=3.5)
    return load_search_space(merge(raw, sections))


@pytest.fixture(scope="module")
def ray_study(ray_runtime, tmp_path_factory):
    """Four distinct trials (a repeat would be held and copied), two at once: the defaults (good), good, bad, bad."""
    directory = tmp_path_factory.mktemp("ray")
    space = ray_space(directory, driver={"gpus_per_trial": 0.5},  # two trials share the one GPU
                      parameters={"learning_rate": {"type": "categorical", "choices": [GOOD, GOOD2, BAD, BAD2]}})
    lines = []
    started = time.perf_counter()
    ray_driver.run(space, workers=2, out=lines.append, points=[{"learning_rate": GOOD2}, {"learning_rate": BAD},
                                                                {"learning_rate": BAD2}])
    return space, directory, lines, time.perf_counter() - started


def test_four_trial_study_lands_in_the_optuna_storage(ray_study):
    space, directory, lines, seconds = ray_study
    done = trials(directory, "tiny")
    assert len(done) == 4
    assert all(t.user_attrs["driver"] == "ray" and t.user_attrs["ray_trial_id"] for t in done)
    assert len({t.user_attrs["ray_trial_id"] for t in done}) == 4
    completed = [t for t in done if t.state == TrialState.COMPLETE]
    assert completed and all(t.params["learning_rate"] in (GOOD, GOOD2) for t in completed)
    for t in completed:
        assert t.user_attrs["epochs"] == 3 and sorted(t.intermediate_values) == [0, 1, 2]
        assert t.value == pytest.approx(t.intermediate_values[2])
        assert t.user_attrs["config"] == {"learning_rate": t.params["learning_rate"]}
        assert "val_forces_rmse" in t.user_attrs["metrics"] and t.user_attrs["best_epoch"] in (0, 1, 2)
        assert os.path.isfile(os.path.join(t.user_attrs["artifacts"], "model.ckpt"))
    assert any("recorded 4 Ray trials" in line for line in lines)
    # progress: a line per trial start and end, and epoch lines in between
    assert sum(line.startswith("trial ") and "[joint] learning_rate=" in line for line in lines) == 4
    assert sum(" COMPLETE " in line for line in lines) == len(completed)
    assert sum("PRUNED: stopped by ASHA" in line for line in lines) == 4 - len(completed)
    assert any(" epoch 3/3: val_forces_rmse " in line for line in lines)
    paces = [line for line in lines if line.startswith("pace: ")]  # once, from the first epoch reported
    assert len(paces) == 1 and "a trial of 3 epochs; 4 trials: about" in paces[0] and "on 2 workers" in paces[0]
    assert (directory / "tiny" / "ray" / "tiny").is_dir()


def test_asha_stops_the_bad_trial_early_and_it_is_pruned(ray_study):
    _, directory, _, _ = ray_study
    bad = [t for t in trials(directory, "tiny") if t.params["learning_rate"] in (BAD, BAD2)]
    assert len(bad) == 2
    for t in bad:  # never COMPLETE with a partial value
        assert t.state == TrialState.PRUNED and t.value is None
        assert t.user_attrs["epochs"] < 3 and len(t.intermediate_values) == t.user_attrs["epochs"]
        assert "ASHA" in t.user_attrs["reason"]


def test_half_a_gpu_per_trial_runs_two_trials_on_one_gpu(ray_study):
    _, directory, lines, _ = ray_study
    assert any("2 trials at once, 1 CPU + 0.5 GPU each" in line for line in lines), lines
    logs = [f.read_text() for f in (directory / "tiny" / "trials").glob("ray-*/train.log")]
    assert len(logs) == 4 and all("gpus [0]" in log for log in logs)  # Ray assigned (a share of) GPU 0 to each


def test_running_again_runs_nothing_and_records_nothing_twice(ray_study):
    space, directory, _, _ = ray_study
    lines = []
    ray_driver.run(space, workers=2, out=lines.append)
    assert any("all 4 trials recorded; nothing to run" in line for line in lines), lines
    assert len(trials(directory, "tiny")) == 4


def test_report_reads_a_ray_study(ray_study, tmp_path):
    _, directory, _, _ = ray_study
    result = cli("report", "tiny", "--studies-dir", directory, "--out", tmp_path / "reports", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tiny" in result.stdout


def test_staged_search_fixes_each_stage_best_in_the_next(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": 5, "epochs": 2}, strategy={"type": "staged", "importance": ["learning_rate", "cutoff"]},
                      parameters={"learning_rate": {"type": "categorical", "choices": [GOOD, BAD]},
                                  "cutoff": {"type": "categorical", "choices": [3.0, 3.5]}}, pruner={"type": "none"})
    lines = []
    result = ray_driver.run(space, workers=2, out=lines.append)
    assert result.status == "completed"
    first, second = (trials(tmp_path, f"tiny.stage{k}-{name}") for k, name in ((1, "learning_rate"), (2, "cutoff")))
    assert len(first) == 3 and len([t for t in second if t.user_attrs.get("role") != "carried"]) == 2  # 5 split 3 + 2
    assert [t.user_attrs.get("role") for t in first].count("defaults") == 1
    best = min((t for t in first if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    for t in second:
        assert t.user_attrs["config"]["learning_rate"] == best.params["learning_rate"]
        if t.user_attrs.get("role") != "carried":
            assert t.user_attrs["options"]["architecture"]["training"]["learning_rate"] == best.params["learning_rate"]
    carried = [t for t in second if t.user_attrs.get("role") == "carried"]
    assert len(carried) == 1 and carried[0].value == best.value  # the previous best, not trained again
    assert all(t.params["cutoff"] in (3.0, 3.5) and t.user_attrs["options"]["architecture"]["model"]["cutoff"] == t.params["cutoff"]
               for t in second if t.user_attrs.get("role") != "carried")
    assert all(t.user_attrs["driver"] == "ray" for t in first + second if t.user_attrs.get("role") != "carried")


def test_batch_size_stage_moves_the_chosen_learning_rate_by_the_square_root_rule(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": 5, "epochs": 1}, pruner={"type": "none"},
                      strategy={"type": "staged", "importance": ["learning_rate", "batch_size"], "learning_rate_scaling": "sqrt",
                                "enumerate": True},
                      parameters={"learning_rate": {"type": "categorical", "choices": [GOOD, GOOD2]},
                                  "batch_size": {"type": "categorical", "choices": [2, 6, 24]}})
    lines = []
    result = ray_driver.run(space, workers=2, out=lines.append)
    first, second = trials(tmp_path, "tiny.stage1-learning_rate"), trials(tmp_path, "tiny.stage2-batch_size")
    chosen = min((t for t in first if t.state == TrialState.COMPLETE), key=lambda t: t.value).params["learning_rate"]
    trained = [t for t in second if t.user_attrs.get("role") != "carried"]
    assert {2, 24} <= {t.params["batch_size"] for t in trained}  # Ray's stage may also train the base size 6 again
    for t in trained:
        moved = chosen * (t.params["batch_size"] / 6) ** 0.5
        assert t.user_attrs["options"]["architecture"]["training"]["learning_rate"] == pytest.approx(moved)
        assert t.user_attrs["config"]["learning_rate"] == pytest.approx(moved)
        log = (tmp_path / "tiny" / "trials" / f"ray-{t.user_attrs['ray_trial_id']}" / "train.log").read_text()
        assert f"lr {moved:.2e}" in log  # what the trial trained with, not only what was recorded
        assert any(line.endswith(f"batch_size={t.params['batch_size']}, learning_rate={moved:.4g}") for line in lines), lines
    assert result.status == "completed"


def test_a_repeated_configuration_is_copied_not_trained_again(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": 4, "epochs": 2}, pruner={"type": "none"})
    lines = []
    ray_driver.run(space, workers=1, out=lines.append, points=[{"learning_rate": GOOD}, {"learning_rate": BAD},
                                                                {"learning_rate": BAD}])
    done = trials(tmp_path, "tiny")  # one at a time: the defaults (good), good, bad, bad
    assert [t.params["learning_rate"] for t in done] == [GOOD, GOOD, BAD, BAD]
    assert all(t.state == TrialState.COMPLETE for t in done)
    for first, again in ((done[0], done[1]), (done[2], done[3])):
        assert "duplicate_of" not in first.user_attrs and again.user_attrs["duplicate_of"] == first.number
        assert again.values == first.values and again.intermediate_values == first.intermediate_values
        for key in ("metrics", "best_epoch", "epochs", "artifacts"):
            assert again.user_attrs[key] == first.user_attrs[key]
    assert done[0].values != done[2].values
    folders = sorted(p.name for p in (tmp_path / "tiny" / "trials").iterdir())
    assert folders == sorted(f"ray-{t.user_attrs['ray_trial_id']}" for t in (done[0], done[2]))  # the repeats trained nothing
    assert sum("result copied" in line for line in lines) == 2


def test_a_repeat_of_a_running_trial_is_held_until_it_ends(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": 3, "epochs": 3}, pruner={"type": "none"},
                      parameters={"learning_rate": {"type": "categorical", "choices": [GOOD]}})
    ray_driver.run(space, workers=2, out=lambda m: None)  # two slots, one configuration
    done = trials(tmp_path, "tiny")
    assert len(done) == 3 and all(t.state == TrialState.COMPLETE for t in done)
    assert [t.user_attrs.get("duplicate_of") for t in done] == [None, 0, 0]
    folders = [p.name for p in (tmp_path / "tiny" / "trials").iterdir()]
    assert folders == [f"ray-{done[0].user_attrs['ray_trial_id']}"]  # trained once, not twice side by side


def test_a_repeat_of_a_stopped_trial_is_a_pruned_copy(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": 3, "epochs": 3})  # ASHA
    lines = []
    ray_driver.run(space, workers=1, out=lines.append, points=[{"learning_rate": BAD}, {"learning_rate": BAD}])
    done = trials(tmp_path, "tiny")  # the defaults (good), bad (stopped by ASHA), bad again
    assert [t.state for t in done] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert "duplicate_of" not in done[1].user_attrs and done[2].user_attrs["duplicate_of"] == 1
    assert done[2].intermediate_values == done[1].intermediate_values
    assert "not trained again" in done[2].user_attrs["reason"] and "ASHA" in done[2].user_attrs["reason"]
    assert len(list((tmp_path / "tiny" / "trials").iterdir())) == 2
    assert any("PRUNED: same parameters as trial" in line for line in lines), lines


def test_data_shares_train_each_share_and_asha_decides_after_each(ray_runtime, tmp_path):
    """budget.data_shares under Ray: one result per share at its step (ASHA's time axis), recorded as the Optuna
    driver records them; the defaults trial trains on all the data only; a repeat of a stopped trial is copied."""
    space = ray_space(tmp_path, budget={"n_trials": 5, "epochs": 2, "data_shares": [0.25, 0.5, 1]},
                      training_set={"systems": {"builtin": "emt-alloy", "n": 40, "seed": 0}},
                      pruner={"type": "successive_halving", "reduction_factor": 2},
                      parameters={"learning_rate": {"type": "categorical", "choices": [GOOD, GOOD2, BAD, BAD2]}})
    lines = []
    ray_driver.run(space, workers=1, out=lines.append, points=[{"learning_rate": GOOD2}, {"learning_rate": BAD},
                                                                {"learning_rate": BAD2}, {"learning_rate": BAD}])
    done = trials(tmp_path, "tiny")  # one at a time: the defaults (good; all the data only), good2, bad, bad2, bad again
    assert [t.params["learning_rate"] for t in done] == [GOOD, GOOD2, BAD, BAD2, BAD]
    defaults, good2, bad, bad2, again = done
    assert defaults.state == TrialState.COMPLETE and sorted(defaults.intermediate_values) == [4]
    assert defaults.user_attrs["compute"] == 2.0 and defaults.user_attrs["epochs"] == 2
    for t in (bad, bad2):  # worse than good2 after a share below all the data: stopped there
        steps = sorted(t.intermediate_values)
        assert t.state == TrialState.PRUNED and steps in ([1], [1, 2])
        assert t.user_attrs["compute"] == pytest.approx(2 * [0.25, 0.75][len(steps) - 1])
        share = {1: "1/4", 2: "1/2"}[steps[-1]]
        assert t.user_attrs["reason"].startswith(f"stopped by ASHA after the share {share} of the training set")
    assert good2.state == TrialState.COMPLETE and sorted(good2.intermediate_values) == [1, 2, 4]
    assert good2.user_attrs["compute"] == pytest.approx(3.5) and good2.user_attrs["epochs"] == 2
    assert good2.value == pytest.approx(good2.intermediate_values[4]) and "val_forces_rmse" in good2.user_attrs["metrics"]
    folder = tmp_path / "tiny" / "trials" / f"ray-{good2.user_attrs['ray_trial_id']}"
    assert (folder / "model.ckpt").is_file() and (folder / "share-0.25" / "metrics.csv").is_file()
    assert again.state == TrialState.PRUNED and again.user_attrs["duplicate_of"] == bad.number
    assert again.intermediate_values == bad.intermediate_values
    assert any("share 1/2 of the training set: val_forces_rmse" in line for line in lines), lines
    assert any("PRUNED: stopped by ASHA after the share 1/" in line for line in lines), lines


def test_timeout_stops_proposing_and_a_second_run_continues_the_study(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": None, "timeout": 4, "epochs": 2}, pruner={"type": "none"})
    result = ray_driver.run(space, workers=2, out=lambda m: None)
    assert result.status == "timeout"
    done = trials(tmp_path, "tiny")
    assert done and all(t.state == TrialState.COMPLETE for t in done)  # running trials finished, none cut short
    lines = []
    ray_driver.run(space, workers=2, out=lines.append)
    again = trials(tmp_path, "tiny")
    assert len(again) > len(done) and len({t.user_attrs["ray_trial_id"] for t in again}) == len(again)
    assert (tmp_path / "tiny" / "ray" / "tiny-2").is_dir()  # a new experiment, told what the first found
    assert [t.user_attrs.get("role") for t in again].count("defaults") == 1  # the defaults ran once


def test_a_small_discrete_space_is_enumerated_once_and_ends(ray_runtime, tmp_path):
    # a timeout-only budget over two configurations: the experiment runs two trials, one each, and the study ends
    space = ray_space(tmp_path, budget={"n_trials": None, "timeout": 300, "epochs": 1}, pruner={"type": "none"},
                      strategy={"enumerate": True})
    lines = []
    assert ray_driver.run(space, workers=2, out=lines.append).status == "completed"
    done = trials(tmp_path, "tiny")
    assert sorted(t.params["learning_rate"] for t in done) == [BAD, GOOD]
    assert all(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in done)
    assert "joint: 2 trials" in lines


def test_an_enumerating_searcher_skips_what_earlier_experiments_tried_failures_included():
    # a later experiment of an enumerated stage (after a timeout) is told every finished trial, a failed one too
    import optuna

    from nanopet.tune.studies import Enumerate
    from nanopet.tune.plan import Stage

    choices = [GOOD, BAD, 1.0e3]
    distributions = {"learning_rate": optuna.distributions.CategoricalDistribution(choices)}
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": GOOD}, distributions=distributions, value=0.5,
                                              intermediate_values={0: 0.6, 1: 0.5}))
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1.0e3}, distributions=distributions,
                                              state=TrialState.FAIL))
    told = search.history(study, Stage(1, 1, ("learning_rate",), None, "tiny", 3))
    assert [state for _, _, state, _, _ in told] == [TrialState.COMPLETE, TrialState.FAIL]
    for seed in range(6):
        searcher = search.StudySearch(space=distributions, metric=names.OBJECTIVE, mode="min",
                                          sampler=Enumerate(seed), history=told)
        assert searcher.suggest(f"t{seed}")["learning_rate"] == BAD  # the one configuration not tried


def test_asha_never_stops_the_defaults_trial():
    # the study's gain over the defaults is measured from that trial: ASHA may not stop it, worse than the rung or not
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    scheduler = search.asha({"learning_rate": BAD}, time_attr=names.TIME_ATTR, metric=names.OBJECTIVE,
                                mode="min", max_t=3, grace_period=1, reduction_factor=2)
    good = [Trial("nanopet", config={"learning_rate": GOOD}, stub=True) for _ in range(3)]
    defaults, other = Trial("nanopet", config={"learning_rate": BAD}, stub=True), Trial("nanopet", config={"learning_rate": BAD2}, stub=True)
    for trial in good + [defaults, other]:
        scheduler.on_trial_add(None, trial)
    for trial in good:
        assert scheduler.on_trial_result(None, trial, {names.TIME_ATTR: 1, names.OBJECTIVE: 0.1}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, other, {names.TIME_ATTR: 1, names.OBJECTIVE: 5.0}) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, defaults, {names.TIME_ATTR: 1, names.OBJECTIVE: 5.0}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, defaults, {names.TIME_ATTR: 3, names.OBJECTIVE: 5.0}) == TrialScheduler.STOP  # done


def test_two_objective_front(ray_runtime, tmp_path):
    space = ray_space(tmp_path, budget={"n_trials": 3, "epochs": 2}, objective={"cost": "front", "cost_measure": "parameters"},
                      pruner={"type": "none"},
                      parameters={"d_pet": {"type": "categorical", "choices": [8, 16]}})
    ray_driver.run(space, workers=2, out=lambda m: None)
    done = trials(tmp_path, "tiny")
    assert len(done) == 3 and all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in done)
    for t in done:
        assert t.values[0] == pytest.approx(t.user_attrs["metrics"]["val_forces_rmse"])
        assert t.values[1] == t.user_attrs["cost"] > 0
    by_width = {t.params["d_pet"]: t.values[1] for t in done}
    if len(by_width) == 2:
        assert by_width[16] > by_width[8]  # the cost is the parameter count


def test_a_killed_worker_trial_resumes_from_its_last_checkpoint(ray_runtime, tmp_path):
    """SIGKILL the Ray worker process mid-trial: Ray retries the trial from the checkpoint it reported, the
    epochs before the kill are not trained again, and the trial is recorded once, complete."""
    space = ray_space(tmp_path, budget={"n_trials": 1, "epochs": 8}, pruner={"type": "none"},
                      parameters={"learning_rate": {"type": "categorical", "choices": [GOOD]}})
    runner = threading.Thread(target=ray_driver.run, args=(space,), kwargs={"workers": 1, "out": lambda m: None})
    runner.start()
    folder = None
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((tmp_path / "tiny" / "trials").glob("ray-*/train.log"))
        if logs and (logs[0].parent / "metrics.csv").is_file() and len((logs[0].parent / "metrics.csv").read_text().splitlines()) >= 3:
            folder = logs[0].parent
            break
        time.sleep(0.05)
    assert folder is not None, "the trial never reached its second epoch"
    pid = int(re.search(r"pid (\d+)", folder.joinpath("train.log").read_text()).group(1))
    os.kill(pid, signal.SIGKILL)  # header + 2 epoch rows: epoch 0's checkpoint was reported before epoch 1 began
    runner.join(timeout=180)
    assert not runner.is_alive()
    log = folder.joinpath("train.log").read_text()
    resumed = re.search(r"resuming from its checkpoint of epoch (\d+)", log)
    assert resumed and int(resumed.group(1)) >= 1, log
    done = trials(tmp_path, "tiny")
    assert len(done) == 1 and done[0].state == TrialState.COMPLETE
    assert sorted(done[0].intermediate_values) == list(range(8))


def test_an_iteration_reported_again_after_a_restart_is_told_to_the_sampler_once(recwarn):
    """A trial Ray restarts from its checkpoint reports the iterations after it again (the same values)."""
    searcher = search.StudySearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                                      metric=names.OBJECTIVE, mode="min", sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("a")
    for iteration in (1, 2, 2, 3):  # killed after reporting iteration 2, restarted from the checkpoint of 1
        searcher.on_trial_result("a", {names.OBJECTIVE: 1.0 / iteration, "training_iteration": iteration})
    assert searcher._ot_study.trials[0].intermediate_values == {1: 1.0, 2: 0.5, 3: 1.0 / 3}
    assert not [w for w in recwarn if "already reported" in str(w.message)], [str(w.message) for w in recwarn]


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


def test_driver_ray_in_the_file_runs_ray_and_a_missing_gpu_is_a_one_line_error(tmp_path):
    """`driver: ray` in the YAML picks the Ray driver (no --driver); a GPU per trial on a CPU-only cluster fails
    in seconds, before anything is written."""
    space = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies", driver={"type": "ray", "gpus_per_trial": 1}))
    result = cli(space, cwd=tmp_path, timeout=90, env=dict(cli_env(), CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("nanopet-tune: error: a trial needs 1 GPU (driver.gpus_per_trial) "
                                                             "but the Ray cluster has 0")
    assert not (tmp_path / "studies").exists()


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
        assert "2 trials at once" in result.stdout  # both nodes' CPUs
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=60)
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 4 and all(t.user_attrs["driver"] == "ray" for t in done)
    assert all(t.state == TrialState.COMPLETE for t in done)  # pruner: none -> no ASHA


def test_ctrl_c_raises_while_the_experiment_runs_even_if_sigint_was_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a script
    try:
        with pytest.raises(KeyboardInterrupt), driver.ctrl_c_raises():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here at the latest
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # restored after the experiment
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_interrupted_run_resumes_from_ray_checkpoints(tmp_path):
    """Ctrl-C after two of four trials finished, while two more run (in a process that started with SIGINT
    ignored): nothing is recorded; the same command again restores the Ray experiment, the running trials resume
    from their newest epoch checkpoint, the finished ones are not trained again, and every trial is recorded once
    with every epoch in its learning curve."""
    n_epochs = 48
    space = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies", budget={"n_trials": 4, "epochs": n_epochs}))
    command = [sys.executable, "-m", "nanopet.cli", str(space), "--driver", "ray"]
    env = dict(cli_env(), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    # started with SIGINT ignored, as a background job of a script (`nanopet-tune ... &`) is: Ctrl-C must still stop it
    shim = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"
    ignoring = [sys.executable, "-c", shim, *command]  # an ignored signal stays ignored across exec
    first = subprocess.Popen(ignoring, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trials_dir = tmp_path / "studies" / "tiny" / "trials"
    finished, running, seen = [], [], {}
    deadline = time.time() + 120
    while time.time() < deadline and not (len(finished) >= 2 and running):
        time.sleep(0.05)
        finished = [f.parent for f in trials_dir.glob("ray-*/model.ckpt")]
        for f in trials_dir.glob("ray-*/last.ckpt"):
            seen.setdefault(f.parent, time.time())
        # running for over 2.5 s and 10 epochs: it is in Ray's experiment snapshot (taken every second; epochs
        # take 0.1 s here, so an epoch count alone is not enough)
        running = [f.parent for f in trials_dir.glob("ray-*/last.ckpt") if f.parent not in finished
                   and time.time() - seen[f.parent] > 2.5 and len((f.parent / "metrics.csv").read_text().splitlines()) > 10]
    assert len(finished) >= 2 and running, "never had two finished trials and one 10 epochs into its run"
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == 130 and "to resume the Ray experiment" in output, output[-2000:]
    assert not trials(tmp_path / "studies", "tiny")  # nothing recorded by the interrupted run
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "restoring the Ray experiment" in second.stdout
    for folder in running:
        log = (folder / "train.log").read_text()
        resumed = re.search(r"resuming from its checkpoint of epoch (\d+)\b", log)
        assert resumed and 10 <= int(resumed.group(1)) < n_epochs, log
    for folder in finished + running:  # no epoch trained twice
        rows = [line.split(",")[0] for line in (folder / "metrics.csv").read_text().splitlines()[1:]]
        assert sorted(rows, key=int) == [str(k) for k in range(n_epochs)], (folder, rows)
    done = trials(tmp_path / "studies", "tiny")
    assert len(done) == 4 and len({t.user_attrs["ray_trial_id"] for t in done}) == 4
    for t in done:
        assert t.state == TrialState.COMPLETE, (t.state, t.user_attrs.get("reason"), second.stdout[-3000:])
        assert t.user_attrs["epochs"] == n_epochs and sorted(t.intermediate_values) == list(range(n_epochs))
