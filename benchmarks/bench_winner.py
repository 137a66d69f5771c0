"""Is the search's winner the model users want? Search, then retrain, against the defaults and other searches.

    python benchmarks/bench_winner.py search_spaces/molecules.yaml [--seeds 0 1 2] [--strategies staged joint random]
        [--retrain-epochs 100] [--retrain-seeds 2] [--workers 2] [--set budget.equal=time ...] [--dir DIR]

For each search seed (``study.sampler.seed``) and strategy, a search of the file (its trials, epochs and pruner):

- ``staged``: the file as it is;
- ``joint``: plain Optuna TPE over all its parameters at once (``strategy: joint``), same trials and epochs;
- ``random``: random search over all of them (``strategy: joint``, ``sampler: random``).

Then the winner of every search is retrained for ``--retrain-epochs`` epochs over ``--retrain-seeds`` seeds (the
study's split and test set): the staged searches by ``nanopet-tune retrain`` itself (against the defaults, at equal
epochs and at equal time), the others by the same runs layer; the defaults' runs are trained once and shared (the
runs layer reuses a finished run of the same options). ``--set KEY=VALUE`` changes the file (dotted keys, YAML
values), e.g. ``--set training_set.systems.n=400 --set budget.equal=time``.

Printed: per strategy, the mean over search seeds of the winners' test RMSE per target and of the gmean, the gain
over the defaults' runs, and the winners' seconds per epoch against the defaults'; per staged seed, retrain's
verdict line (equal epochs and equal time). Not a test: hours on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGETS = ("test_energy_rmse", "test_forces_rmse", "test_stress_rmse", "test_rmse_gmean")


def set_key(raw: dict, dotted: str, value) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def variant(raw: dict, strategy: str, seed: int, directory: Path, name: str) -> dict:
    raw = copy.deepcopy(raw)
    raw["study"] = {**(raw.get("study") or {}), "name": f"{name}-{strategy}-s{seed}", "directory": str(directory)}
    sampler = dict(raw["study"].get("sampler") or {"type": "tpe"})
    sampler["seed"] = seed
    if strategy != "staged":
        given = raw.get("strategy") if isinstance(raw.get("strategy"), dict) else {}
        raw["strategy"] = {"type": "joint", **({"min_improvement": given["min_improvement"]} if "min_improvement" in given else {})}
        if strategy == "random":
            sampler = {"type": "random", "seed": seed}
    raw["study"]["sampler"] = sampler
    return raw


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["staged", "joint", "random"], choices=["staged", "joint", "random"])
    parser.add_argument("--retrain-epochs", type=int, default=100)
    parser.add_argument("--retrain-seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dir", type=Path, default=Path("build/bench-winner"))
    parser.add_argument("--name", default=None, help="prefix of the study names (default: the file's stem)")
    args = parser.parse_args(argv)

    from nanopet.options import read_yaml
    from nanopet.retrain import finalize, retrain
    from nanopet.runs import RunSet, mean_of, shared_data, train_sets, with_epochs
    from nanopet.tune import load_search_space, run
    from nanopet.tune.storage import choose_trial, defaults_options, open_study

    raw = read_yaml(args.space)
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(raw, key, yaml.safe_load(value))
    name = args.name or args.space.stem
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    base_dir = args.space.resolve().parent
    log = open(directory / f"{name}.log", "a")

    def out(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    searches = {}
    for seed in args.seeds:
        for strategy in args.strategies:
            space = load_search_space(variant(raw, strategy, seed, directory, name), base_dir=base_dir)
            started = time.perf_counter()
            result = run(space, workers=args.workers, out=out)
            searches[(strategy, seed)] = {"study": space.study.name, "seconds": time.perf_counter() - started,
                                          "search_gain": result.gain, "best_config": result.best_config}
            print(f"search {strategy} seed {seed}: {result.best_value:.4g} ({100 * (result.gain or 0):.1f}% over the defaults' trial) "
                  f"in {searches[(strategy, seed)]['seconds'] / 60:.1f} min: {result.best_config}", flush=True)

    seeds = list(range(args.retrain_seeds))
    defaults_folder = directory / f"{name}-defaults"
    rows, verdicts = {}, {}
    for (strategy, seed), search in searches.items():
        found = open_study(search["study"], directory)
        folder = directory / search["study"] / "best"
        if strategy == "staged":
            if defaults_folder.is_dir() and not (folder / "defaults").exists():  # the defaults' finished runs: reused
                shutil.copytree(defaults_folder, folder / "defaults")
            result = retrain(search["study"], epochs=args.retrain_epochs, seeds=args.retrain_seeds, directory=directory, out=out)
            if not defaults_folder.is_dir() and (folder / "defaults").is_dir():
                shutil.copytree(folder / "defaults", defaults_folder)
            verdicts[seed] = result.verdict
            rows[(strategy, seed)] = [r for r in result.runs if r["hypers"] == "best"]
            rows.setdefault("defaults", [r for r in result.runs if r["hypers"] == "defaults"])
        else:
            chosen = choose_trial(found)
            options = with_epochs(chosen.options, args.retrain_epochs)
            data = shared_data([options], cutoff=found.space.max_cutoff if found.space else 0.0)
            base_seed = options["seed"]
            rows[(strategy, seed)] = train_sets([RunSet("best", options, folder)], [base_seed + s for s in seeds], data, out)
        print(f"retrained {strategy} seed {seed}", flush=True)
    if "defaults" not in rows:  # no staged search: train the defaults here, from the options retrain would use
        found = open_study(next(iter(searches.values()))["study"], directory)
        options = finalize(defaults_options(found)[0], args.retrain_epochs, None, None)
        data = shared_data([options], cutoff=found.space.max_cutoff if found.space else 0.0)
        rows["defaults"] = train_sets([RunSet("defaults", options, defaults_folder)], [options["seed"] + s for s in seeds], data, out)

    defaults = rows["defaults"]
    present = [t for t in TARGETS if any(t in r for r in defaults)]
    print(f"\n{name}: {len(args.seeds)} search seeds x {args.strategies}, winners retrained {args.retrain_epochs} epochs x "
          f"{args.retrain_seeds} seeds; test RMSE (meV/atom, meV/A, GPa; gmean unitless), mean over search seeds")
    head = f"{'search':<10}" + "".join(f"{t.removeprefix('test_'):>22}" for t in present) + f"{'s/epoch vs defaults':>22}"
    print(head)
    scale = {"test_energy_rmse": 1000, "test_forces_rmse": 1000, "test_stress_rmse": 1, "test_rmse_gmean": 1}
    base = {t: mean_of(defaults, t) for t in present}
    base_seconds = mean_of(defaults, "epoch_seconds")
    print(f"{'defaults':<10}" + "".join(f"{base[t] * scale[t]:>22.4g}" for t in present) + f"{base_seconds:>21.3g}s")
    summary = {"defaults": {t: base[t] for t in present}}
    for strategy in args.strategies:
        per_seed = [rows[(strategy, s)] for s in args.seeds]
        values = {t: [mean_of(r, t) for r in per_seed] for t in present}
        means = {t: sum(v) / len(v) for t, v in values.items()}
        spread = {t: (sum((x - means[t]) ** 2 for x in v) / max(1, len(v) - 1)) ** 0.5 for t, v in values.items()}
        seconds = sum(mean_of(r, "epoch_seconds") for r in per_seed) / len(per_seed)
        cells = "".join(f"{f'{means[t] * scale[t]:.4g}±{spread[t] * scale[t]:.2g} ({100 * (1 - means[t] / base[t]):+.0f}%)':>22}"
                        for t in present)
        print(f"{strategy:<10}{cells}{f'{seconds:.3g}s ({seconds / base_seconds:.2f}x)':>22}")
        summary[strategy] = {"mean": means, "std": spread, "per_seed": values, "epoch_seconds": seconds}
    for seed, verdict in verdicts.items():
        print(f"staged seed {seed}: {verdict}")
    (directory / f"{name}-summary.json").write_text(json.dumps({"summary": summary, "searches": {f"{k[0]}-{k[1]}": v for k, v in searches.items()},
                                                                 "verdicts": verdicts}, indent=1, default=str))


if __name__ == "__main__":
    main()
