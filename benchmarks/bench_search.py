"""Search-driver benchmark: pruning savings, per-trial overhead, parallel efficiency. Prints a table.

    python benchmarks/bench_search.py                      # a few minutes on a 2-core CPU
    python benchmarks/bench_search.py --structures 400 --d-pet 64 --epochs 27 --trials 40 --workers 4 --device cuda
    python benchmarks/bench_search.py --replay DIR          # kept studies (--keep DIR) analysed again, no training

1. Pruning savings: the same joint search (same TPE seed) without a pruner and with one
   (successive halving by default); epochs computed and wall time for the same number of trials,
   and until the pruned study first reaches the unpruned study's best validation loss: the pruned
   study runs more trials (never more epochs in total than the unpruned one) until it does, since
   the point of pruning is to try more configurations for the same compute (``--stop-share``: or until
   it has spent that share of them). ``--data-shares 0.125 0.25 0.5 1``: the pruned study uses the data-size
   fidelity instead (each trial trains on those shares in turn, the pruner deciding after each; its epochs
   count x share, "epochs x structures"). Goal: <= 1/3 of the epochs, read two ways: of the epochs the
   unpruned study spent until its own first trial within 2% of its best (strict: where that trial came
   early nothing can win), and of all its epochs (the unpruned search's compute).
   ``--seeds 0 1 2`` repeats it per TPE seed (one seed is one draw of luck). Then a replay:
   the unpruned study's learning curves, in order, through several pruners (no training): the share
   of epochs each would run and whether it keeps the unpruned best, i.e. the pruner without the
   sampler's reaction to what it pruned.
2. Per-trial overhead: everything that is not an epoch (worker start, data loading and neighbour
   lists once per worker, neighbour filtering to the trial's cutoff, model build, storage) as a
   share of the trial wall time. Goal: <= 5%.
3. Parallel efficiency: trials per hour with 1 worker and with N workers (processes; on a CPU a
   "device" is a core: one torch thread per worker; on GPUs one GPU each). Goal: >= 0.9 N.

Not a test: the numbers depend on the machine and on what else runs on it (load average printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def base_space(args, directory: Path, name: str) -> dict:
    return {
        "seed": 0, "device": args.device, "base_precision": 32,
        "training_set": {"systems": {"builtin": args.builtin, "n": args.structures, "seed": 0},
                         **({"targets": {"energy": {"key": "energy", "forces": {"key": "forces"}}}}
                            if args.builtin == "xtb-molecules" else {})},
        "validation_set": 0.2, "test_set": 0.0,
        "architecture": {"model": {"cutoff": 4.0, "d_pet": args.d_pet, "num_heads": 2, "num_gnn_layers": 1,
                                   "num_attention_layers": 1},
                         "training": {"batch_size": 4, "learning_rate": 3.0e-3, "initialisation": args.initialisation,
                                      "scheduler_patience": args.scheduler_patience}},
        "study": {"name": name, "directory": str(directory), "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 4},
                  "pruner": {"type": "none"}},
        "objective": {"metric": "val_loss"},
        "budget": {"n_trials": args.trials, "epochs": args.epochs},
        "strategy": "joint",
        "parameters": {
            "learning_rate": {"type": "float", "low": 3.0e-4, "high": 3.0e-2, "log": True},
            "cutoff": {"type": "float", "low": 3.0, "high": 4.5, "step": 0.5},
            "d_pet": {"type": "categorical", "choices": [args.d_pet // 2, args.d_pet, args.d_pet * 2]},
        },
    }


def trained(trials):
    """Trials that trained (not carried in, not copied duplicates), in order of completion."""
    from optuna.trial import TrialState

    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            and "duplicate_of" not in t.user_attrs and t.user_attrs.get("role") != "carried"]
    return sorted(done, key=lambda t: t.datetime_complete)


def study_trials(directory: Path, name: str):
    import optuna

    from nanopet.tune.storage import open_storage

    storage = open_storage(str(directory / name / "journal.log"), create=False)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


REACH = 1.02  # "reaching the unpruned best": a completed trial within 2% of it (issue #21's goal)
GOAL = 1 / 3  # ... with at most a third of the unpruned study's compute
# Two readings of "the unpruned study's compute": its epochs until its own first trial within 2% of its best
# (strict: no pruned study can win where the unpruned one found its best early), and all its epochs.
READINGS = ("unpruned epochs to its best", "all unpruned epochs")


def spent(trial) -> float:
    """A trial's training compute in epochs on all the training set (epochs x share under budget.data_shares)."""
    return float(trial.user_attrs.get("compute", len(trial.intermediate_values)))


def until(trials, target: float | None):
    """Epochs and trial wall time spent until a completed trial reaches ``target`` within ``REACH`` (None: never)."""
    epochs = wall = 0.0
    for t in trials:
        epochs += spent(t)
        wall += t.user_attrs.get("timing", {}).get("wall", 0.0)
        if target is not None and t.value is not None and t.state.name == "COMPLETE" and t.value <= target * REACH:
            return epochs, wall
    return None, None


def epoch_shares(epochs: int, *shares: float) -> list[int]:
    """The distinct epochs at these shares of a trial's epochs (at least 1), in order."""
    return sorted({max(1, round(epochs * share)) for share in shares})


def first_rung(args, epochs: int) -> int:
    """The pruner's first rung / warm-up: --min-resource, else about a ninth of the epochs (earlier rungs rank the
    trials by their first few hundred steps only)."""
    return args.min_resource or max(1, epochs // 9)


def run_search(raw: dict, threads: int, workers: int = 0, fork: bool | None = None):
    """Run a search; workers = 0: in this process, else that many worker processes (``fork``: how they start,
    None: as the launcher decides). Returns wall seconds."""
    from nanopet.tune import load_search_space
    from nanopet.tune.studies import check_resumable
    from nanopet.tune.optuna_driver.workers import in_process, processes

    space = load_search_space(raw)
    check_resumable(space)
    started = time.perf_counter()
    if workers:
        processes(space, workers, [], threads, None, out=lambda line: None, stdout=subprocess.DEVNULL, fork=fork)
    else:
        in_process(space, None, threads, out=lambda line: None, launched=time.time())
    return time.perf_counter() - started


def pruning_rows(args, directory: Path) -> tuple[list, list]:
    rows, notes, ratios = [], [], []
    for seed in args.seeds:
        part, note, ratio = pruning_seed(args, directory, seed)
        rows += part
        notes += note
        ratios.append(ratio)
    if len(args.seeds) > 1:
        for k, reading in enumerate(READINGS):
            shares = [None if r is None else r[k] for r in ratios]
            met = sum(r is not None and r <= GOAL for r in shares)
            rows.append(("pruning", f"epochs to reach the unpruned best / {reading}, {len(args.seeds)} seeds", "",
                         f"{met}/{len(shares)} <= {GOAL:.2f}", " ".join("-" if r is None else f"{r:.2f}" for r in shares),
                         "3 of 4"))
    return rows, notes


def pruning_seed(args, directory: Path, seed: int) -> tuple[list, list, tuple[float, float] | None]:
    """One seed: the unpruned study, then the pruned one with the same trial budget, continued (more trials,
    never more than ``--stop-share`` of the epochs the unpruned study used) until it first reaches the unpruned
    best. The ratio: its epochs to that over each of ``READINGS`` (None: not reached)."""
    raw = base_space(args, directory, f"unpruned-s{seed}")
    raw["study"]["sampler"]["seed"] = seed
    wall_a = run_search(raw, args.threads)
    a = trained(study_trials(directory, f"unpruned-s{seed}"))
    best_a = min(t.value for t in a if t.state.name == "COMPLETE")
    epochs_a = sum(spent(t) for t in a)
    reach_a, reach_wall_a = until(a, best_a)
    tag = f"seed {seed}: "
    if args.pruner == "none":  # the unpruned study alone, analysed (kept for --replay with --keep)
        rows = [("pruning", tag + f"epochs computed, {args.trials} trials; best val_loss", f"{epochs_a:.0f}", f"{best_a:.4g}", "", "")]
        return (rows + ranking_rows(a, first_rung(args, args.epochs), args.epochs, tag) + replay_rows(a, args.epochs, tag),
                [f"seed {seed}: unpruned only, {len(a)} trials x {args.epochs} epochs"], None)

    pruned = copy.deepcopy(raw)
    pruned["study"]["name"] = name = f"pruned-s{seed}"
    rung = first_rung(args, args.epochs)
    if args.rank_at != "final":
        pruned["study"]["sampler"]["rank_at"] = args.rank_at
    pruned["study"]["pruner"] = {"type": args.pruner, **({"min_resource": rung, "reduction_factor": args.reduction_factor}
                                                       if args.pruner in ("successive_halving", "hyperband") else
                                                       {"n_startup_trials": 4, "n_warmup_steps": rung} if args.pruner == "median" else
                                                       {"n_startup_trials": 5})}  # ranking: its own min_tau decides when
    if args.data_shares:  # the data-size fidelity: the pruner decides after each share (steps 1, 2, 4, ...)
        pruned["budget"]["data_shares"] = args.data_shares
        pruned["study"]["pruner"] = {"type": args.pruner, "min_resource": 1, "reduction_factor": args.reduction_factor}
    wall_b, n_trials, same = 0.0, args.trials, None
    while True:
        pruned["budget"]["n_trials"] = n_trials
        wall_b += run_search(pruned, args.threads)
        b = trained(study_trials(directory, name))
        epochs_b = sum(spent(t) for t in b)
        if same is None:  # the same number of trials as the unpruned study
            same = (epochs_b, wall_b, min(t.value for t in b if t.state.name == "COMPLETE"))
        reach_b, reach_wall_b = until(b, best_a)
        if reach_b is not None or epochs_b >= epochs_a * args.stop_share:
            break
        n_trials += max(1, args.trials // 8)
    ratio = None if reach_b is None else (reach_b / reach_a, reach_b / epochs_a)
    rows = [
        ("pruning", tag + f"epochs computed, {args.trials} trials each", f"{epochs_a:.0f}", f"{same[0]:.0f}",
         f"{same[0] / epochs_a:.2f}", ""),
        ("pruning", tag + f"study wall time, {args.trials} trials each (s)", f"{wall_a:.1f}", f"{same[1]:.1f}",
         f"{same[1] / wall_a:.2f}", ""),
        ("pruning", tag + f"best val_loss, {args.trials} trials each", f"{best_a:.4g}", f"{same[2]:.4g}", f"{same[2] / best_a:.3f}", ""),
        ("pruning", tag + "epochs to reach the unpruned best (within 2%)", f"{reach_a:.0f}",
         f"{reach_b:.0f}" if reach_b is not None else "not reached", "-" if ratio is None else f"{ratio[0]:.2f}", f"<= {GOAL:.2f}"),
        ("pruning", tag + "epochs to reach it / all the unpruned study's epochs", f"{epochs_a:.0f}",
         f"{reach_b:.0f}" if reach_b is not None else "not reached", "-" if ratio is None else f"{ratio[1]:.2f}", f"<= {GOAL:.2f}"),
        ("pruning", tag + "trial wall time to reach it (s)", f"{reach_wall_a:.1f}",
         f"{reach_wall_b:.1f}" if reach_wall_b is not None else "not reached",
         f"{reach_wall_b / reach_wall_a:.2f}" if reach_wall_b is not None else "-", ""),
    ]
    rows += ranking_rows(a, rung, args.epochs, tag) + replay_rows(a, args.epochs, tag)
    pruned_count = sum(t.state.name == "PRUNED" for t in b)
    notes = [f"pruning, seed {seed}: {len(a)} vs {len(b)} trials trained ({len(b) - args.trials} more to reach the unpruned "
             f"best, at most {args.stop_share:g} of the unpruned study's epochs), {pruned_count} pruned by {args.pruner} ({pruned['study']['pruner']}); "
             f"{args.trials} trials x {args.epochs} epochs, TPE seed {seed}, rank_at {args.rank_at}"
             + (f"; data shares {args.data_shares} (epochs count x share)" if args.data_shares else "")]
    return rows, notes, ratio


def ranking_rows(unpruned: list, rung: int, epochs: int, tag: str) -> list:
    """Why pruning works or not: how well the value at the first rung ranks the unpruned trials' final values, and
    short-horizon bias: how the learning rate ranks them early and at the end (> 0: lower rates are better)."""
    from nanopet.tune.pruning import kendall_tau

    full = [t for t in unpruned if t.state.name == "COMPLETE" and rung in t.intermediate_values]
    two = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731 - None: a constant sample
    tau = kendall_tau([t.intermediate_values[rung] for t in full], [t.value for t in full])
    learning_rates = [t.params["learning_rate"] for t in full]
    early = kendall_tau(learning_rates, [t.intermediate_values[rung] for t in full])
    late = kendall_tau(learning_rates, [t.value for t in full])
    shares = epoch_shares(epochs, 1 / 9, 1 / 5, 1 / 3, 1 / 2)  # how the ranking forms
    complete = [t for t in unpruned if t.state.name == "COMPLETE" and len(t.intermediate_values) == epochs]
    by_epoch = [kendall_tau([t.intermediate_values[k - 1] for t in complete], [t.value for t in complete]) for k in shares]
    return [("pruning", tag + f"Kendall tau, value at the first rung (epoch {rung + 1}) vs final", two(tau), "", "", ""),
            ("pruning", tag + "Kendall tau, learning rate vs value at the first rung / vs final", two(early), two(late), "", ""),
            ("pruning", tag + f"Kendall tau, value after epoch {' / '.join(map(str, shares))} of {epochs} vs final",
             " / ".join(map(two, by_epoch)), "", "", "")]


def replay_kept(args) -> tuple[list, list]:
    """``--replay DIR``: the unpruned studies that earlier runs kept (``--keep DIR``), analysed again without training."""
    rows, notes = [], []
    for directory in map(Path, args.replay):
        for folder in sorted(directory.glob("unpruned-s*")):
            a = trained(study_trials(directory, folder.name))
            epochs = max(len(t.intermediate_values) for t in a)
            tag = f"{folder.name}: "
            rows += ranking_rows(a, first_rung(args, epochs), epochs, tag) + replay_rows(a, epochs, tag)
            notes.append(f"replay, {directory / folder.name}: {len(a)} trials x {epochs} epochs")
    if not notes:
        raise SystemExit(f"--replay: no unpruned-s* study in {' '.join(args.replay)} (keep them with --keep DIR)")
    return rows, notes


RANKING_TAUS = (0.4, 0.6, 0.8)  # the ranking pruner's min_tau replayed


def replayed(epochs: int) -> list:
    """The pruners replayed: successive halving deciding first at about a ninth, a fifth and a third of the
    trial's epochs (epochs 1, 2, 3 of 9; reduction factors 3 and 4) and at a 27th and two 27ths (factor 4), the
    pruner of a search space that names none (median from a fifth), hyperband from a ninth, and the ranking
    pruner (nanopet/tune/pruning.py) at a few min_tau."""
    from nanopet.tune.space import default_pruner

    rungs = epoch_shares(epochs, 1 / 9, 1 / 5, 1 / 3)  # short trials: fewer distinct first rungs
    early = epoch_shares(epochs, 1 / 27, 2 / 27)  # and two earlier ones, at a reduction factor of 4
    return [{"type": "successive_halving", "min_resource": r, "reduction_factor": f} for r in rungs for f in (3, 4)] + [
        {"type": "successive_halving", "min_resource": r, "reduction_factor": 4} for r in early if r < rungs[0]] + [
        default_pruner(epochs), {"type": "hyperband", "min_resource": rungs[0], "reduction_factor": 3}] + [
        {"type": "ranking", "min_tau": tau, "n_startup_trials": 5} for tau in RANKING_TAUS]


def replay(curves: list, settings: dict, epochs: int) -> tuple[list, list]:
    """The unpruned trials' curves, in their order, through a pruner: the epochs each would have run and whether
    it would have completed. Isolates the pruner from the sampler (which, live, reacts to what was pruned)."""
    import optuna

    from nanopet.tune.studies import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="replay", pruner=make_pruner(settings, epochs))  # a fixed name: hyperband's brackets
    spent, kept = [], []
    for curve in curves:
        trial, completed = study.ask(), True
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
            if trial.should_prune():
                completed = False
                break
        study.tell(trial, curve[-1] if completed else None,
                   state=optuna.trial.TrialState.COMPLETE if completed else optuna.trial.TrialState.PRUNED)
        spent.append(epoch + 1)
        kept.append(completed)
    return spent, kept


def replay_rows(unpruned: list, epochs: int, tag: str) -> list:
    """Would each pruner have kept the unpruned study's best trial, and with what share of the epochs would it have
    completed a trial within 2% of it (against the epochs the unpruned study spent until its first such trial)?"""
    full = [t for t in unpruned if t.state.name == "COMPLETE" and len(t.intermediate_values) == epochs]
    curves = [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in full]
    best = min(range(len(full)), key=lambda k: full[k].value)
    near = [t.value <= full[best].value * REACH for t in full]
    unpruned_reach = epochs * (near.index(True) + 1)
    rows = []
    for settings in replayed(epochs):
        spent, kept = replay(curves, settings, epochs)
        label = " ".join(f"{k}={v}" for k, v in settings.items() if k != "type")
        first = next((k for k in range(len(full)) if kept[k] and near[k]), None)
        reach = None if first is None else sum(spent[: first + 1])
        rows.append(("replay", tag + f"{settings['type']} {label}: epochs share; best kept; epochs to within 2% of it "
                     f"/ unpruned to its best, / all unpruned", f"{sum(spent) / (epochs * len(full)):.2f}",
                     "kept" if kept[best] else "pruned",
                     "-" if reach is None else f"{reach / unpruned_reach:.2f}, {reach / (epochs * len(full)):.2f}", f"<= {GOAL:.2f}"))
    return rows


def overhead_rows(directory: Path, name: str, workers: int) -> tuple[list, list]:
    """Shares of one run's trial time that are not epochs (run with worker processes)."""
    trials = [t for t in trained(study_trials(directory, name)) if "timing" in t.user_attrs]
    records = [json.loads(p.read_text()) for p in (directory / name / "workers").glob("*.json")]
    wall = sum(t.user_attrs["timing"]["wall"] for t in trials)
    epochs = sum(t.user_attrs["timing"]["epochs"] for t in trials)
    filtering = sum(t.user_attrs["timing"].get("filter", 0.0) for t in trials)
    setup = sum(t.user_attrs["timing"]["setup"] for t in trials) - filtering
    start = sum(r["startup_s"] - r["data_s"] for r in records)
    data = sum(r["data_s"] for r in records)
    other = wall - epochs - setup - filtering
    total = wall + start + data
    n = len(trials)
    share = lambda x: f"{100 * x / total:.1f}%"  # noqa: E731
    rows = [
        ("overhead", "worker start (process, imports), per worker", f"{start / max(1, len(records)):.2f} s", "", share(start), ""),
        ("overhead", "data + neighbour lists, once per worker", f"{data / max(1, len(records)):.2f} s", "", share(data), ""),
        ("overhead", "neighbour filtering to the trial cutoff", f"{filtering / n:.3f} s/trial", "", share(filtering), ""),
        ("overhead", "model build, baseline fit, options", f"{setup / n:.3f} s/trial", "", share(setup), ""),
        ("overhead", "storage, checkpoint, bookkeeping", f"{other / n:.3f} s/trial", "", share(other), ""),
        ("overhead", "total not-epoch share of trial time", f"{(total - epochs) / n:.2f} s/trial", "",
         share(total - epochs), "<= 5%"),
        ("overhead", "  of which per trial (excluding once-per-worker)", f"{(wall - epochs) / n:.3f} s/trial", "",
         f"{100 * (wall - epochs) / wall:.1f}%", ""),
    ]
    started = " and ".join(sorted({r.get("start", "interpreter") for r in records}))
    return rows, [f"overhead: {n} trials of {epochs / n:.1f} s of epochs each, {len(records)} worker(s) started by {started}"]


def parallel_rows(args, directory: Path) -> tuple[list, list]:
    walls = {}
    fork = None if args.worker_start == "auto" else args.worker_start == "fork"
    for workers in (1, args.workers):
        raw = base_space(args, directory, f"parallel{workers}")
        raw["parameters"] = {"learning_rate": raw["parameters"]["learning_rate"]}  # same cost for every trial
        raw["study"]["sampler"] = {"type": "random", "seed": 0}
        raw["budget"] = {"n_trials": args.parallel_trials, "epochs": args.parallel_epochs}
        walls[workers] = run_search(raw, 1 if args.device == "cpu" else args.threads, workers=workers, fork=fork)
    rate = {w: 3600 * args.parallel_trials / s for w, s in walls.items()}
    steady = {}
    for workers in walls:  # first trial start to last trial end: worker start-up excluded
        done = study_trials(directory, f"parallel{workers}")
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        steady[workers] = 3600 * len(done) / span
    n = args.workers
    rows = [("parallel", f"trials/hour, 1 vs {n} workers, whole run", f"{rate[1]:.0f}", f"{rate[n]:.0f}",
             f"{rate[n] / rate[1]:.2f} x", f">= {0.9 * n:.1f} x"),
            ("parallel", f"trials/hour, 1 vs {n} workers, steady state", f"{steady[1]:.0f}", f"{steady[n]:.0f}",
             f"{steady[n] / steady[1]:.2f} x", f">= {0.9 * n:.1f} x")]
    return rows, [f"parallel: {args.parallel_trials} trials x {args.parallel_epochs} epochs, one "
                  f"{'CPU thread' if args.device == 'cpu' else 'GPU'} per worker, walls {walls[1]:.1f} s vs {walls[n]:.1f} s"]


def print_table(title: str, header: tuple, rows: list) -> None:
    widths = [max(len(str(row[k])) for row in rows + [header]) for k in range(len(header))]
    print(title)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builtin", default="emt-alloy", choices=["emt-alloy", "xtb-molecules"],
                        help="the built-in dataset (default emt-alloy; xtb-molecules: energies and forces, no cell)")
    parser.add_argument("--structures", type=int, default=100, help="built-in structures (default 100)")
    parser.add_argument("--d-pet", type=int, default=16, help="base d_pet; the search picks d/2, d, 2d (default 16)")
    parser.add_argument("--trials", type=int, default=30, help="trials of each pruning study (default 30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="TPE seeds of the pruning comparison (default 0)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pruning", "parallel"], help="parts not to run")
    parser.add_argument("--epochs", type=int, default=9, help="epochs per trial in the pruning studies (default 9)")
    parser.add_argument("--pruner", default="successive_halving", choices=["successive_halving", "hyperband", "median", "ranking", "none"],
                        help="the pruned study's pruner (none: the unpruned studies only, e.g. to keep for --replay)")
    parser.add_argument("--min-resource", type=int, help="first rung / warm-up epochs of the pruner (default epochs // 9)")
    parser.add_argument("--reduction-factor", type=int, default=3, help="successive halving / hyperband reduction factor (default 3)")
    parser.add_argument("--data-shares", type=float, nargs="+",
                        help="the pruned study trains each trial on these shares of the training set in turn (budget.data_shares, "
                             "e.g. 0.125 0.25 0.5 1), its pruner (successive_halving / hyperband, --reduction-factor) deciding "
                             "after each; its epochs count x share")
    parser.add_argument("--rank-at", default="final", choices=["final", "rung"],
                        help="the pruned study's TPE: rank trials by final value (Optuna's) or at their common rung")
    parser.add_argument("--stop-share", type=float, default=1.0,
                        help="continue the pruned study until it reaches the unpruned best or has spent this share of the "
                             "unpruned study's epochs (default 1)")
    parser.add_argument("--initialisation", default="torch", choices=["torch", "balanced"],
                        help="the trials' architecture.training.initialisation (default torch)")
    parser.add_argument("--scheduler-patience", type=int, default=1000,
                        help="trials' scheduler_patience in epochs (default 1000: the learning rate never drops)")
    parser.add_argument("--workers", type=int, default=2, help="N of the parallel comparison (default 2)")
    parser.add_argument("--parallel-trials", type=int, default=12, help="trials of each parallel run (default 12)")
    parser.add_argument("--parallel-epochs", type=int, default=6, help="epochs per trial in the parallel runs (default 6)")
    parser.add_argument("--worker-start", default="auto", choices=["auto", "fork", "interpreter"],
                        help="how the parallel runs' workers start (default auto: as the launcher decides)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process studies (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--keep", help="keep the studies in this folder (default: a temporary one)")
    parser.add_argument("--replay", nargs="+", metavar="DIR",
                        help="train nothing: analyse the unpruned studies kept in these folders (--keep) again")
    args = parser.parse_args()

    if args.replay:  # nothing to train
        rows, notes = replay_kept(args)
        print_table("nanopet-tune search benchmark: replay of kept unpruned studies",
                    ("part", "measure", "baseline", "with", "ratio", "goal"), rows)
        for note in notes:
            print("  " + note)
        return

    import torch

    torch.set_num_threads(args.threads)
    directory = Path(args.keep or tempfile.mkdtemp(prefix="bench-search-"))
    started = time.perf_counter()
    rows, notes = [], []
    parts = []
    if "pruning" not in args.skip:
        parts.append(lambda: pruning_rows(args, directory))
    if "parallel" not in args.skip:
        parts += [lambda: parallel_rows(args, directory), lambda: overhead_rows(directory, f"parallel{args.workers}", args.workers)]
    for part in parts:
        part_rows, part_notes = part()
        rows += part_rows
        notes += part_notes
    print_table(f"nanopet-tune search benchmark: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f} at the end, "
                f"device {args.device}, {args.structures} structures, d_pet {args.d_pet}",
                ("part", "measure", "baseline", "with", "ratio", "goal"), rows)
    for note in notes:
        print("  " + note)
    print(f"  (baseline = no pruning / 1 worker; with = {args.pruner} / {args.workers} workers); "
          f"total {time.perf_counter() - started:.0f} s; studies in {directory}")

if __name__ == "__main__":
    main()
