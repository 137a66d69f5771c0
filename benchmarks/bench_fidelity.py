"""Data-size fidelity against early epochs (issue #21 item 4): which cheap run ranks configurations like the full one?

    python benchmarks/bench_search.py --builtin xtb-molecules --skip parallel --pruner none --epochs 27 --trials 24 --keep DIR
    python benchmarks/bench_fidelity.py DIR [DIR ...] [--shares 0.125 0.25 0.5] [--configs 12]

For each unpruned study kept by bench_search (``unpruned-s*`` in DIR), the configurations of its completed trials
are trained again, all epochs, on a share of the training set (the first share of a seeded permutation; the same
validation set), and ranked by their final objective value. Printed per share f: Kendall's tau between that
ranking and the full study's final ranking, next to the tau of the full-data values after epoch f x epochs, the
same compute (epochs x structures) and the same number of optimizer steps. A data-size fidelity is worth a search
strategy only where it ranks better than early epochs at the same compute.

Not a test: it trains (configs x sum of shares) trials, minutes to an hour on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_search import print_table, study_trials, trained  # noqa: E402


def final_value(options: dict, data, metric: str) -> float:
    """The objective metric at the best validation loss (what a trial reports at its end)."""
    from nanopet.train import train

    from nanopet.tune.trial import BestSoFar

    best = BestSoFar(metric)

    def on_epoch(epoch: int, metrics: dict) -> bool:
        best.update(epoch, metrics)
        return False

    train(options, on_epoch=on_epoch, data=data, log=lambda line: None)
    return best.value


def study_rows(directory: Path, name: str, shares: list[float], configs: int) -> tuple[list, str]:
    from nanopet.data.splits import cutoff_of, read_data
    from nanopet.options import resolve_options
    from nanopet.tune.pruning import kendall_tau

    full = [t for t in trained(study_trials(directory, name)) if t.state.name == "COMPLETE"][:configs]
    epochs = max(len(t.intermediate_values) for t in full)
    full = [t for t in full if len(t.intermediate_values) == epochs]
    options = [resolve_options(t.user_attrs["options"]) for t in full]
    metric = "val_loss"  # what bench_search's studies minimise
    largest = max(cutoff_of(o) for o in options)
    started = time.perf_counter()
    data = read_data(options[0], ".", largest)
    finals = [t.value for t in full]
    rows = []
    for share in shares:
        values = []
        for o in options:
            values.append(final_value(o, data.at_cutoff(cutoff_of(o)).training_share(share, int(o["seed"])), metric))
        epoch = max(1, round(share * epochs))
        early = [t.intermediate_values[epoch - 1] for t in full]
        data_tau, epoch_tau = kendall_tau(values, finals), kendall_tau(early, finals)
        rows.append((name, f"{share:g}", f"{share:.3f}", f"{data_tau:.2f}", f"epoch {epoch}/{epochs}", f"{epoch_tau:.2f}",
                     "data" if data_tau > epoch_tau + 1e-9 else "epochs"))
        print(f"  {name}: share {share:g} done ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows, f"{directory / name}: {len(full)} configurations x {epochs} epochs, {len(data.train)} training structures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("replay", nargs="+", metavar="DIR", help="folders of studies kept by bench_search.py --keep")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.125, 0.25, 0.5], help="training-set shares")
    parser.add_argument("--configs", type=int, default=12, help="completed trials of each study retrained (default 12)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows, notes = [], []
    for directory in map(Path, args.replay):
        for folder in sorted(directory.glob("unpruned-s*")):
            part, note = study_rows(directory, folder.name, args.shares, args.configs)
            rows += part
            notes.append(note)
    print_table("data-size fidelity vs early epochs: Kendall tau with the full study's final ranking",
                ("study", "share", "compute", "tau, data share", "same compute in epochs", "tau, early epochs", "ranks better"),
                rows)
    for note in notes:
        print("  " + note)
    wins = sum(row[-1] == "data" for row in rows)
    print(f"  data share ranked better in {wins} of {len(rows)} (study, share) pairs"
          + ("" if rows else "; no study found") + (f"; mean tau {np.mean([float(r[3]) for r in rows]):.2f} (data) vs "
                                                    f"{np.mean([float(r[5]) for r in rows]):.2f} (epochs)" if rows else ""))


if __name__ == "__main__":
    main()
