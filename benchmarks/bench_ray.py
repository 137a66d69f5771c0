"""Ray Tune driver vs Optuna driver on the same search space, same budget, same machine. Prints a table.

    python benchmarks/bench_ray.py                            # a few minutes on a 2-core CPU
    python benchmarks/bench_ray.py --trials 24 --epochs 10 --workers 4 --device cuda

Both run the same joint search (random sampler, seed 0, no pruning, one tuned parameter, the learning
rate, so every trial costs the same) with N trials at once: the Optuna driver as N worker processes
sharing a journal-file study, the Ray driver as one Ray Tune experiment with N concurrent trials on a
local Ray runtime (1 CPU per trial on a CPU machine, one GPU each on GPUs).

Measures, per driver:
- trials per hour over the whole command (start-up included) and in steady state (first trial start
  to last trial end);
- per-trial overhead = device-seconds per trial (N x steady-state span / trials) over the trial's
  training + validation time, minus 1: everything a trial slot spends that is not training or
  validation (start of the trial, data filtering, model build, reporting, checkpoints, the driver's
  scheduling); also with start-up included (the whole command: Ray runtime, worker processes).
Goal (issue 4): the Ray driver's per-trial overhead at most 10%.

Not a test: numbers depend on the machine and on what else runs on it (load average printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import base_space, print_table, run_search, study_trials, trained  # noqa: E402


def space(args, directory: Path, name: str) -> dict:
    raw = base_space(args, directory, name)
    raw["parameters"] = {"learning_rate": raw["parameters"]["learning_rate"]}  # same cost for every trial
    raw["study"]["sampler"] = {"type": "random", "seed": 0}
    raw["budget"] = {"n_trials": args.trials, "epochs": args.epochs}
    return raw


def run_ray(raw: dict, workers: int) -> float:
    from nanopet.tune import load_search_space, ray_driver

    search = load_search_space({**raw, "driver": {"type": "ray", "gpus_per_trial": 1 if raw["device"] == "cuda" else 0}})
    started = time.perf_counter()
    ray_driver.run(search, workers=workers, out=lambda line: None)
    return time.perf_counter() - started


def measure(directory: Path, name: str, wall: float, workers: int) -> dict:
    """Whole command, and steady state: from the end of the first ``workers`` trials (each worker process's
    first trial carries its start-up: imports, data, warm-up; the Optuna driver does these before its first
    trial, Ray inside it) to the last trial's end, counting the trials that started in that window."""
    done = sorted(trained(study_trials(directory, name)), key=lambda t: t.datetime_start)
    n = len(done)
    epoch_mean = sum(t.user_attrs["timing"]["epochs"] for t in done) / n
    first = sorted(done, key=lambda t: t.datetime_complete)[:workers]
    start = max(t.datetime_complete for t in first)
    later = [t for t in done if t not in first]
    span = (max(t.datetime_complete for t in done) - start).total_seconds()
    inside = [t.user_attrs["timing"]["wall"] - t.user_attrs["timing"]["epochs"] for t in later]
    slot = workers * span / len(later)  # device-seconds per trial
    return {"trials": n, "wall": wall, "epoch": epoch_mean, "inside": sum(inside) / len(inside),
            "rate_all": 3600 * n / wall, "rate_steady": 3600 * len(later) / span,
            "overhead_all": workers * wall / n / epoch_mean - 1, "overhead": slot / epoch_mean - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=100, help="built-in EMT structures (default 100)")
    parser.add_argument("--d-pet", type=int, default=16, help="d_pet of every trial (default 16)")
    parser.add_argument("--trials", type=int, default=12, help="trials of each run (default 12)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (default 6)")
    parser.add_argument("--workers", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--keep", help="keep the studies in this folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    directory = Path(args.keep or tempfile.mkdtemp(prefix="bench-ray-"))
    started = time.perf_counter()
    results = {}
    walls = {"optuna": run_search(space(args, directory, "optuna"), 1, workers=args.workers)}
    walls["ray"] = run_ray(space(args, directory, "ray"), args.workers)
    for name, wall in walls.items():
        results[name] = measure(directory, name, wall, args.workers)
    o, r = results["optuna"], results["ray"]
    rows = [
        ("trials/hour, whole command (start-up included)", f"{o['rate_all']:.0f}", f"{r['rate_all']:.0f}", f"{r['rate_all'] / o['rate_all']:.2f}", ""),
        ("trials/hour, steady state", f"{o['rate_steady']:.0f}", f"{r['rate_steady']:.0f}", f"{r['rate_steady'] / o['rate_steady']:.2f}", ""),
        ("command wall time (s)", f"{o['wall']:.1f}", f"{r['wall']:.1f}", "", ""),
        ("training + validation time of a trial (s)", f"{o['epoch']:.2f}", f"{r['epoch']:.2f}", f"{r['epoch'] / o['epoch']:.2f}", ""),
        ("in-trial not-epoch time, steady state (s/trial)", f"{o['inside']:.2f}", f"{r['inside']:.2f}", "", ""),
        ("per-trial overhead, steady state", f"{100 * o['overhead']:.1f}%", f"{100 * r['overhead']:.1f}%",
         f"{100 * (r['overhead'] - o['overhead']):+.1f} pts", "ray <= 10%"),
        ("overhead incl. start-up (N x wall / trials / epochs - 1)", f"{100 * o['overhead_all']:.1f}%",
         f"{100 * r['overhead_all']:.1f}%", "", ""),
    ]
    print_table(f"nanopet-tune Ray vs Optuna driver: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f} at the end, "
                f"device {args.device}, {args.workers} trials at once, {args.trials} trials x {args.epochs} epochs, "
                f"{args.structures} structures, d_pet {args.d_pet}", ("measure", "optuna", "ray", "ray/optuna", "goal"), rows)
    print(f"  total {time.perf_counter() - started:.0f} s; studies in {directory}")


if __name__ == "__main__":
    main()
