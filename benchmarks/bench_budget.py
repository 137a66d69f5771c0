"""Which budget ranks trials like the converged runs do? ``budget.equal: epochs | steps | time`` (issue #38 item 2).

    python benchmarks/bench_budget.py --builtin xtb-molecules [--configs 8] [--epochs 10] [--factor 10] [--processes 2]
    python benchmarks/bench_budget.py --builtin emt-alloy --structures 400

Configurations: the base hypers of the set's search space (``search_spaces/molecules.yaml``; for the EMT alloy
``quick.yaml`` on ``--structures`` structures with the batch size tuned too) and ``--configs - 1`` drawn at random
(seeded) from its parameters. Each configuration trains

- as a search trial under each budget: ``epochs`` (``--epochs`` epochs), ``steps`` (the base hypers' optimizer steps
  in those epochs) and ``time`` (their training time, measured as the search measures it); its value is the
  objective (``val_rmse_gmean``) at its best validation loss; and once more as ``start``: ``--epochs`` epochs as the
  start of the converged run's schedule (``scheduler_epochs``: ``--factor`` x ``--epochs``, annealed over its last
  fifth);
- as a converged run, twice: ``--factor`` x ``--epochs`` epochs (equal epochs), and the base hypers' time for those
  epochs (equal time: the epochs scaled by the ratio of the two's seconds per epoch, measured in the same process
  as the search measures them); its values are the test metrics of its best-validation weights.

Printed: Kendall's tau between each budget's ranking and each converged ranking (test gmean, forces, energy), and
one row per configuration. Configurations are split over ``--processes`` processes of one thread each, so timings
are taken under the same load. Not a test: configs x (4 short + 2 long) trainings, an hour or more on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUDGETS = ("epochs", "steps", "time")
# trials, each as a row of the tables: every budget.equal, and "start": budget.epochs epochs as the start of the
# converged run's schedule (architecture.training.scheduler_epochs = --factor x --epochs, annealed over its last fifth)
TRIALS = BUDGETS + ("start",)
TARGETS = ("rmse_gmean", "forces_rmse", "energy_rmse")


def space_for(builtin: str, structures: int | None, epochs: int):
    from nanopet.options import read_yaml
    from nanopet.tune import load_search_space

    if builtin == "xtb-molecules":
        raw = read_yaml(REPO / "search_spaces" / "molecules.yaml")
    else:
        raw = read_yaml(REPO / "search_spaces" / "quick.yaml")
        raw["parameters"]["batch_size"] = {"type": "categorical", "choices": [2, 4, 8, 16]}
        raw["strategy"]["importance"] = ["cutoff", "learning_rate", "batch_size", ["d_pet", "num_gnn_layers"]]
    if structures:
        raw["training_set"]["systems"]["n"] = structures
    raw["budget"]["epochs"] = epochs
    raw.pop("driver", None)
    return load_search_space(raw, base_dir=REPO / "search_spaces")


def draw(space, count: int, seed: int) -> list[dict]:
    """The base hypers' values, then ``count - 1`` draws from every parameter's distribution (log where it is log)."""
    rng = random.Random(seed)
    configs = [space.defaults()]
    while len(configs) < count:
        values = {}
        for name, p in space.parameters.items():
            if p.type == "categorical":
                values[name] = rng.choice(p.choices)
            elif p.type == "int":
                values[name] = rng.randint(int(p.low), int(p.high))
            elif p.step:
                values[name] = p.low + p.step * rng.randint(0, round((p.high - p.low) / p.step))
            elif p.log:
                values[name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
            else:
                values[name] = rng.uniform(p.low, p.high)
        if values not in configs:
            configs.append(values)
    return configs


def run_config(job: dict) -> dict:
    """One configuration's trials under each budget and its two converged runs (in a process of one thread)."""
    import torch

    from nanopet.data.splits import load_data
    from nanopet.runs import median_epoch_seconds
    from nanopet.runs import with_epochs  # annealed over its own epochs ("start" stretches it)
    from nanopet.train import epoch_seconds, train
    from nanopet.tune.space import Budget
    from nanopet.tune.trial import EpochBudget

    torch.set_num_threads(1)
    space = space_for(job["builtin"], job["structures"], job["epochs"])
    data = load_data(space.options, space.base_dir, cutoff=space.max_cutoff)
    options = space.options_for(job["values"])
    row = {"config": job["index"], "values": job["values"]}

    def trained(run_options, test: bool):
        started = time.perf_counter()
        result = train(run_options, data=data, log=lambda line: None)
        best = next(r for r in result.history if r["epoch"] == result.best_epoch)
        values = {f"val_{k}": best.get(f"val_{k}", math.nan) for k in TARGETS}
        if test:
            values.update({f"test_{k}": result.test_metrics.get(f"test_{k}", math.nan) for k in TARGETS})
        return values, median_epoch_seconds(result.history), time.perf_counter() - started

    for budget in BUDGETS:
        spaced = copy.copy(space)
        spaced.budget = Budget(space.budget.n_trials, None, space.budget.epochs, None, budget)
        epochs, _, _ = EpochBudget(spaced)(options, data)
        values, _, seconds = trained(with_epochs(options, epochs), test=False)
        row[budget] = {"epochs": epochs, "seconds": seconds, **values}
    start = with_epochs(options, space.budget.epochs)
    start["architecture"]["training"]["scheduler_epochs"] = job["epochs"] * job["factor"]
    values, _, seconds = trained(start, test=False)
    row["start"] = {"epochs": space.budget.epochs, "seconds": seconds, **values}
    long = job["epochs"] * job["factor"]
    values, per_epoch, seconds = trained(with_epochs(options, long), test=True)
    row["equal_epochs"] = {"epochs": long, "seconds": seconds, "epoch_seconds": per_epoch, **values}
    if job["values"] != space.defaults():  # the base hypers' time: the ratio of the two's seconds per epoch, measured here
        ratio = epoch_seconds(space.resolved, data, steps=5) / epoch_seconds(options, data, steps=5)
        epochs = max(1, round(long * ratio))
        values, _, seconds = trained(with_epochs(options, epochs), test=True) if epochs != long else (values, per_epoch, seconds)
        row["equal_time"] = {"epochs": epochs, "seconds": seconds, **values}
    else:
        row["equal_time"] = dict(row["equal_epochs"])
    if job["journal"]:  # one line per finished configuration, so an interrupted run resumes from it
        with open(job["journal"], "a") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
    print(f"config {job['index']} done: " + json.dumps({k: row[k] for k in ("values",)}, default=str), flush=True)
    return row


def finished_rows(journal: Path | None, jobs: list[dict]) -> dict[int, dict]:
    """Rows of an earlier run of the same configurations (same index and values), read from the journal."""
    if journal is None or not journal.exists():
        return {}
    wanted = {job["index"]: json.loads(json.dumps(job["values"], default=str)) for job in jobs}
    rows = {}
    for line in journal.read_text().splitlines():
        row = json.loads(line)
        if wanted.get(row["config"]) == row["values"]:
            rows[row["config"]] = row
    return rows



def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builtin", default="xtb-molecules", choices=["xtb-molecules", "emt-alloy"])
    parser.add_argument("--structures", type=int, default=None, help="size of the built-in set (default: the template's; EMT: 400)")
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="a search trial's budget.epochs")
    parser.add_argument("--factor", type=int, default=10, help="converged runs train factor x epochs")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here; finished configurations "
                        "are journalled beside it (OUT.jsonl) and not trained again when the same command reruns")
    args = parser.parse_args(argv)
    structures = args.structures or (400 if args.builtin == "emt-alloy" else None)

    from nanopet.data.splits import load_data
    from nanopet.tune.pruning import kendall_tau

    space = space_for(args.builtin, structures, args.epochs)
    load_data(space.options, space.base_dir, cutoff=space.max_cutoff)  # generate the data once, before the workers
    configs = draw(space, args.configs, args.seed)
    jobs = [{"index": k, "values": v, "builtin": args.builtin, "structures": structures, "epochs": args.epochs,
             "factor": args.factor, "journal": args.out and str(args.out.with_suffix(".jsonl"))} for k, v in enumerate(configs)]
    done = finished_rows(args.out and args.out.with_suffix(".jsonl"), jobs)
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        fresh = pool.map(run_config, [job for job in jobs if job["index"] not in done], chunksize=1)
    rows = sorted([*done.values(), *fresh], key=lambda row: row["config"])
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, default=str))

    print(f"\n{args.builtin}, {structures or 'template'} structures, {len(rows)} configurations, trials of {args.epochs} epochs, "
          f"converged runs {args.factor}x; {(time.perf_counter() - started) / 60:.0f} min")
    print(f"{'budget':<8} " + " ".join(f"{c + ' ' + t:>28}" for c in ("equal_epochs", "equal_time") for t in TARGETS))
    for budget in TRIALS:
        if any(budget not in r for r in rows):  # rows of a run before the "start" trials
            continue
        cells = []
        for converged in ("equal_epochs", "equal_time"):
            for target in TARGETS:
                tau = kendall_tau([r[budget]["val_rmse_gmean"] for r in rows], [r[converged][f"test_{target}"] for r in rows])
                cells.append(f"{tau:>28.2f}" if tau is not None else f"{'n/a':>28}")
        print(f"{budget:<8} " + " ".join(cells))
    print("\nper configuration: values; trial val gmean (epochs) per budget; converged test gmean, forces, energy (epochs)")
    for r in rows:
        short = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["values"].items())
        trials = "  ".join(f"{b} {r[b]['val_rmse_gmean']:.3f} ({r[b]['epochs']})" for b in TRIALS if b in r)
        conv = "  ".join(f"{c} {r[c]['test_rmse_gmean']:.3f} {1000 * r[c]['test_forces_rmse']:.0f} "
                         f"{1000 * r[c]['test_energy_rmse']:.1f} ({r[c]['epochs']})" for c in ("equal_epochs", "equal_time"))
        print(f"{r['config']:>2} {short}\n     {trials}\n     {conv}")


if __name__ == "__main__":
    main()
