"""`mtt eval` (metatrain, a client we did not write) on our exported model.pt against `nanopet-tune eval`.

metatrain lives in its own venv with the CPU torch (see bench_vs_metatrain.py):

    python3 -m venv /tmp/mtt && /tmp/mtt/bin/pip install torch==2.13.0 "metatrain[pet]==2026.4.1"
    python benchmarks/check_mtt_eval.py --mtt /tmp/mtt/bin/mtt

Trains a tiny NanoPET for a few epochs on EMT Cu-Au cells (energy, forces, stress), exports it,
evaluates it on held-out cells with `nanopet-tune eval` (the .ckpt and the exported .pt) and with
`mtt eval model.pt`, and prints the three sets of errors side by side, with their largest relative
difference. metatrain reports forces as energy_positions_gradients and the virial per atom as
energy_strain_gradients (per atom); ours are the same sums (retrain's test_virial_*). Not a test: it needs the second venv and takes a minute or two.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

METRICS = ("energy per atom RMSE", "energy per atom MAE", "forces RMSE", "forces MAE", "virial RMSE", "virial MAE")
UNITS = {"energy per atom": "meV/atom", "forces": "meV/A", "virial": "meV/atom"}
MTT_NAMES = {"energy per atom": r"energy (RMSE|MAE) \(per atom\)", "forces": r"energy_positions_gradients (RMSE|MAE)",
             "virial": r"energy_strain_gradients (RMSE|MAE) \(per atom\)"}  # strain gradient = virial


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout + done.stderr


def ours(metrics: dict) -> dict:
    """{metric: value} in the display units from nanopet.evaluate's metrics (full precision)."""
    from nanopet.loss import SHOWN_UNITS

    values = {}
    for name, target in (("energy per atom", "energy"), ("forces", "forces"), ("virial", "virial")):
        for kind in ("RMSE", "MAE"):
            key = f"test_{target}_{kind.lower()}"
            if key in metrics:
                values[f"{name} {kind}"] = metrics[key] * SHOWN_UNITS[target][1]
    return values


def metatrain(log: str) -> dict:
    """{metric: value} from `mtt eval`'s log line (meV/atom, meV/A; 2 decimals)."""
    values = {}
    for name, pattern in MTT_NAMES.items():
        for found in re.finditer(pattern + r": ([\d.e+-]+) meV", log):
            values[f"{name} {found.group(1)}"] = float(found.group(2))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt", required=True, help="the mtt executable of a venv with metatrain")
    parser.add_argument("--structures", type=int, default=24, help="EMT cells: half train, half held out")
    parser.add_argument("--precision", type=int, choices=(32, 64), default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanopet-mtt-eval-"))
    cli = [sys.executable, "-m", "nanopet.cli"]
    run(cli + ["make-data", "emt-alloy", "train.xyz", "--n", str(args.structures // 2), "--seed", "0"], work)
    run(cli + ["make-data", "emt-alloy", "test.xyz", "--n", str(args.structures - args.structures // 2), "--seed", "1"], work)
    options = {"seed": 0, "base_precision": args.precision, "training_set": "train.xyz", "validation_set": 0.2, "test_set": 0.0,
               "architecture": {"model": {"cutoff": 4.5, "d_pet": 32, "num_heads": 4, "num_gnn_layers": 2,
                                          "num_attention_layers": 1, "zbl": True},
                                "training": {"num_epochs": args.epochs, "batch_size": 4, "learning_rate": 3e-3}}}
    (work / "options.yaml").write_text(yaml.safe_dump(options))
    run(cli + ["train", "options.yaml", "-o", "run"], work)
    run(cli + ["export", "run/model.ckpt", "-o", "model.pt"], work)
    print(run(cli + ["eval", "model.pt", "test.xyz", "-o", "ours.xyz"], work))  # the command as a user runs it
    from nanopet.evaluate import evaluate_model

    test = str(work / "test.xyz")
    from_checkpoint = ours(evaluate_model(work / "run" / "model.ckpt", [test], out=lambda line: None)[test])
    exported = ours(evaluate_model(work / "model.pt", [test], batch_size=4, out=lambda line: None)[test])
    evaluation = {"systems": {"read_from": "test.xyz", "length_unit": "angstrom"},
                  "targets": {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"},
                                         "stress": {"key": "stress"}}}}
    (work / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    log = run([args.mtt, "eval", "model.pt", "eval.yaml", "-b", "4", "-o", "mtt.xyz"], work)
    theirs = metatrain(log)

    print(f"{args.structures - args.structures // 2} held-out EMT Cu-Au cells, NanoPET d_pet 32, cutoff 4.5, ZBL, "
          f"float{args.precision}, {args.epochs} epochs; work folder {work}")
    print(f"{'metric':>31} | {'nanopet-tune eval .ckpt':>23} | {'nanopet-tune eval .pt':>21} | {'mtt eval .pt':>12} | rel. diff")
    worst = 0.0
    for metric in METRICS:
        a, b, c = (table.get(metric, float("nan")) for table in (from_checkpoint, exported, theirs))
        difference = max(abs(a - b), abs(a - c)) / abs(a) if a else float("nan")
        worst = max(worst, difference) if difference == difference else worst
        unit = UNITS[metric.rsplit(" ", 1)[0]]
        print(f"{metric + ' (' + unit + ')':>31} | {a:>23.7g} | {b:>21.7g} | {c:>12.7g} | {difference:.1e}")
    print(f"largest relative difference: {worst:.1e} (mtt eval prints 2 decimals)")


if __name__ == "__main__":
    main()
