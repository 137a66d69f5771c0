"""NanoPET (this package) against metatrain's `pet` on the same data, same machine, same run.

metatrain is a yardstick, not a dependency. Install it in a separate venv that keeps the CPU torch:

    python3 -m venv /tmp/mtt && /tmp/mtt/bin/pip install torch==2.13.0 "metatrain[pet]==2026.4.1"
    python benchmarks/bench_vs_metatrain.py --mtt /tmp/mtt/bin/mtt --structures 160 --epochs 3

Both train at cutoff 4.5, d_pet 128, 2 GNN + 2 attention layers, float32, batch 16 on EMT Cu-Au
32-atom cells with energy, forces and stress. Training throughput = training structures / wall time
of the epochs after the first (each epoch includes its validation pass, in both programs).
Inference throughput = all structures / time in model calls (energy + forces, batch 16, after a
warm-up; neighbour lists and batching excluded in both): ours times the trained model on the
pre-built batches, metatrain's is `mtt eval model.pt -b 16` ("Evaluation time", which times
`evaluate_model` only). Peak memory is each child process's maximum resident set size (training).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

OURS = """
import sys, time, torch, yaml
from nanopet.data.batch import GraphDataset
from nanopet.data.splits import load_data
from nanopet.train import train
options = yaml.safe_load(open(sys.argv[1]))
times = []
result = train(options, on_epoch=lambda epoch, metrics: times.append((time.perf_counter(), metrics)), log=lambda line: None)
stamps = [t for t, _ in times]
print("EPOCHS", *[b - a for a, b in zip(stamps, stamps[1:])])
print("FORCES", times[-1][1]["val_forces_rmse"])
data = load_data(options, cutoff=result.model.cutoff)
dataset = GraphDataset(data.train.structures + data.val.structures, result.model.cutoff)
batches = [dataset.batch(list(range(k, min(k + 16, len(dataset))))) for k in range(0, len(dataset), 16)]
for batch in batches[:3]:
    result.model(batch, forces=True)
start = time.perf_counter()
for batch in batches:
    result.model(batch, forces=True)
print("INFERENCE", len(dataset) / (time.perf_counter() - start))
"""


def options(data: Path, epochs: int, architecture: dict) -> dict:
    return {
        "seed": 0,
        "base_precision": 32,
        "architecture": architecture,
        "training_set": {"systems": {"read_from": str(data), "length_unit": "angstrom"},
                         "targets": {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"},
                                                "stress": {"key": "stress"}}}},
        "validation_set": 0.1,
        "test_set": 0.0,
    }


MEASURED = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[2:], cwd=sys.argv[1], capture_output=True, text=True)
sys.stdout.write(done.stdout + done.stderr)
print("PEAK_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def run_measured(command: list[str], cwd: Path) -> tuple[str, float]:
    """Run ``command`` in a fresh wrapper process; returns its output and its own peak memory (GB)."""
    done = subprocess.run([sys.executable, "-c", MEASURED, str(cwd), *command], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{command[0]} failed:\n{done.stdout[-3000:]}")
    return done.stdout, int(re.search(r"PEAK_KB (\d+)", done.stdout).group(1)) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt", required=True, help="the mtt executable of a venv with metatrain[pet]")
    parser.add_argument("--structures", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanopet-vs-mtt-"))
    data = work / "emt.xyz"
    subprocess.run([sys.executable, "-m", "nanopet.cli", "make-data", "emt-alloy", str(data), "--n", str(args.structures)],
                   check=True, capture_output=True)
    n_train = args.structures - round(0.1 * args.structures)
    rows = []

    ours = options(data, args.epochs, {"model": {"cutoff": 4.5, "d_pet": 128, "num_gnn_layers": 2, "num_attention_layers": 2},
                                        "training": {"batch_size": 16, "num_epochs": args.epochs, "learning_rate": 3e-4}})
    (work / "ours.yaml").write_text(yaml.safe_dump(ours))
    out, peak = run_measured([sys.executable, "-c", OURS, str(work / "ours.yaml")], work)
    epochs = [float(x) for x in re.search(r"EPOCHS (.*)", out).group(1).split()]
    forces = float(re.search(r"FORCES (.*)", out).group(1))
    inference = float(re.search(r"INFERENCE (.*)", out).group(1))
    rows.append(("nanopet-tune", n_train / (sum(epochs) / len(epochs)), inference, peak, forces))

    theirs = options(data, args.epochs, {"name": "pet", "training": {"batch_size": 16, "num_epochs": args.epochs, "log_interval": 1}})
    (work / "mtt.yaml").write_text(yaml.safe_dump(theirs))
    log, peak = run_measured([args.mtt, "train", "mtt.yaml"], work)
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
              for m in re.finditer(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]\[INFO\] - Epoch:", log)]
    durations = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    mtt_forces = re.findall(r"validation forces RMSE: ([\d.]+) meV/A", log)
    evaluation = {"systems": {"read_from": str(data), "length_unit": "angstrom"},
                  "targets": {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"}}}}
    (work / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    eval_log, _ = run_measured([args.mtt, "eval", "model.pt", "eval.yaml", "-b", "16", "-o", "eval.xyz"], work)
    seconds = re.search(r"Evaluation time: ([\d.]+) s", eval_log)
    rows.append(("metatrain pet", n_train / (sum(durations) / len(durations)) if durations else float("nan"),
                 args.structures / float(seconds.group(1)) if seconds else float("nan"),
                 peak, float(mtt_forces[-1]) / 1000 if mtt_forces else float("nan")))

    print(f"{args.structures} EMT Cu-Au cells ({n_train} train), cutoff 4.5, d_pet 128, 2+2 layers, float32, batch 16, "
          f"{args.epochs} epochs")
    print(f"{'program':>14} | {'train struct/s':>14} | {'inference struct/s':>18} | {'peak GB':>8} | {'val force RMSE eV/A':>19}")
    for name, rate, inference, peak, force in rows:
        print(f"{name:>14} | {rate:>14.3g} | {inference:>18.3g} | {peak:>8.3g} | {force:>19.4g}")
    ours, theirs = rows
    print(f"ratio (ours / metatrain): training {ours[1] / theirs[1]:.2f}x, inference {ours[2] / theirs[2]:.2f}x, "
          f"peak memory {ours[3] / theirs[3]:.2f}x")


if __name__ == "__main__":
    main()
