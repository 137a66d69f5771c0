"""ASE molecular-dynamics speed: our calculator, our exported model in metatomic's calculator, metatrain's pet.

    python benchmarks/bench_md.py --mtt /work/mtt/bin/mtt --rounds 3

Three calculators on the same Cu-Au fcc cells (108 and 864 atoms, random 50/50 occupation at the Vegard
lattice constant, Maxwell-Boltzmann velocities at 300 K), float32, CPU:

  (a) ``nanopet.calculator.NanoPETCalculator`` on a NanoPET checkpoint (cutoff 4.5, d_pet 128, 2 GNN x 2
      attention layers), trained for one epoch on a few EMT cells (speed only: the weights do not matter,
      but composition weights and energy scale are set as in any trained model);
  (b) the same checkpoint exported with ``nanopet.export.export_checkpoint`` (metatomic TorchScript
      ``model.pt``), run by ``metatomic_ase.MetatomicCalculator``, a client we did not write;
  (c) metatrain's ``pet`` at the same size, trained for one epoch on the same cells with ``mtt train`` and
      run from the ``model.pt`` that ``mtt train`` writes, by ``MetatomicCalculator`` in the metatrain venv's
      python (the mtt executable's folder must hold that python).

Every calculator runs the same velocity-Verlet loop (1 fs, forces only asked for) in a fresh child
process, ``--threads`` torch threads: ``--warmup`` untimed steps per cell (the TorchScript models (b) and
(c) are slow on their first 2-3 calls, while TorchScript profiles and optimises them), then ``--steps``
timed steps on 108 atoms and the same number of atom-steps (at least 3 steps) on 864. The children of
one round run one after the other (a, b, c) and the rounds repeat; the table gives the median. Note:
``MetatomicCalculator`` also computes the stress (one 3x3 strain in the same backward pass) whenever it is
asked for forces on a periodic cell; ours computes forces only. Both use vesin neighbour lists;
metatomic's keeps a Verlet list with a 2 A skin between steps, ours rebuilds the list every step.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_vs_metatrain import options  # noqa: E402  (the same options file for both trainers)

HYPERS = {"cutoff": 4.5, "d_pet": 128, "num_gnn_layers": 2, "num_attention_layers": 2}
SIZES = {108: 3, 864: 6}  # atoms: conventional fcc cubes per side
GOAL_EXPORTED_OVER_OURS = 1.25  # (b) / (a) step time at most this
GOAL_PET_OVER_EXPORTED = 1.5  # (c) / (b) step time at least this

# One child per calculator and round: velocity Verlet on every cell of cells.xyz, the mean step time.
MD = """
import sys, time
import ase.io
from ase import units
from ase.md.verlet import VelocityVerlet
import torch
kind, model, cells, warmup, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]))
if kind == "nanopet":
    from nanopet.calculator import NanoPETCalculator
    calculator = NanoPETCalculator(model, device="cpu")
else:
    from metatomic_ase import MetatomicCalculator
    calculator = MetatomicCalculator(model, device="cpu")
calls = [0]
calculate = calculator.calculate
def counted(*args, **kwargs):
    calls[0] += 1
    return calculate(*args, **kwargs)
calculator.calculate = counted
for atoms in ase.io.read(cells, ":"):
    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.run(warmup)
    n = max(3, round(steps * 108 / len(atoms)))  # the same number of atom-steps on every cell
    calls[0] = 0
    start = time.perf_counter()
    dynamics.run(n)
    seconds = time.perf_counter() - start
    print("MD", len(atoms), seconds / n, calls[0] / n, flush=True)
"""


def cu_au_cells(path: Path, seed: int = 0) -> Path:
    """The 108- and 864-atom cells as extended XYZ (with momenta)."""
    import ase.io
    import numpy as np
    from ase import units
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    rng = np.random.default_rng(seed)
    lattice = {s: reference_states[atomic_numbers[s]]["a"] for s in ("Cu", "Au")}
    cells = []
    for per_side in SIZES.values():
        atoms = bulk("Cu", "fcc", a=0.5 * (lattice["Cu"] + lattice["Au"]), cubic=True).repeat(per_side)
        atoms.symbols = rng.choice(["Cu", "Au"], size=len(atoms))
        atoms.rattle(0.02, rng=rng)
        momenta = rng.standard_normal((len(atoms), 3)) * np.sqrt(atoms.get_masses() * units.kB * 300.0)[:, None]
        atoms.set_momenta(momenta - momenta.mean(axis=0))
        cells.append(atoms)
    ase.io.write(path, cells, format="extxyz")
    return path


def run(command: list[str], cwd: Path, what: str) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{what} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def prepare(work: Path, mtt: Path, structures: int) -> dict:
    """Train and export the three models; returns {calculator: (python, kind, model file)}."""
    from nanopet.data import write_emt_alloy
    from nanopet.export import export_checkpoint
    from nanopet.train import train

    data = write_emt_alloy(work / "emt.xyz", structures, seed=1)
    ours = options(data, 1, {"model": HYPERS, "training": {"batch_size": 4, "num_epochs": 1, "learning_rate": 3e-4}})
    ours["validation_set"] = 0.25
    train(ours, output_dir=work / "ours", log=lambda line: None)
    exported = export_checkpoint(work / "ours" / "model.ckpt", work / "ours" / "model.pt")

    theirs = options(data, 1, {"name": "pet", "model": HYPERS,
                               "training": {"batch_size": 4, "num_epochs": 1, "log_interval": 1}})
    theirs["validation_set"] = 0.25
    (work / "mtt.yaml").write_text(yaml.safe_dump(theirs))
    run([str(mtt), "train", "mtt.yaml"], work, "mtt train")
    return {"a": (sys.executable, "nanopet", work / "ours" / "model.ckpt"),
            "b": (sys.executable, "metatomic", exported),
            "c": (str(mtt.parent / "python"), "metatomic", work / "model.pt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt", required=True, type=Path, help="the mtt executable of a venv with metatrain[pet]")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of (a, b, c); the median is reported")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps per cell (TorchScript optimises "
                        "the exported models during their first calls)")
    parser.add_argument("--steps", type=int, default=24, help="timed steps on 108 atoms (fewer on larger cells: "
                        "the same atom-steps, at least 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (1: on a shared 2-core "
                        "machine two threads stall at each other's barriers)")
    parser.add_argument("--structures", type=int, default=8, help="EMT cells the models train on (one epoch)")
    parser.add_argument("--only", default="abc", help="calculators to run, e.g. ab")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanopet-md-"))
    cells = cu_au_cells(work / "cells.xyz")
    calculators = prepare(work, args.mtt, args.structures)
    times: dict = {}  # (atoms, calculator) -> [s/step per round]
    for round_ in range(args.rounds):
        for name in args.only:
            python, kind, model = calculators[name]
            out = run([python, "-c", MD, kind, str(model), str(cells), str(args.warmup), str(args.steps),
                       str(args.threads)], HERE.parent,
                      f"MD with ({name})")
            for atoms, seconds, calls in re.findall(r"MD (\d+) (\S+) (\S+)", out):
                times.setdefault((int(atoms), name), []).append(float(seconds))
                if float(calls) != 1.0:
                    print(f"note: ({name}) made {calls} calculator calls per step on {atoms} atoms")
            print(f"round {round_ + 1}/{args.rounds} ({name}) done", file=sys.stderr, flush=True)

    labels = {"a": "(a) NanoPETCalculator", "b": "(b) exported, metatomic", "c": "(c) metatrain pet, metatomic"}
    print(f"ASE velocity Verlet, 1 fs, float32, CPU, {args.threads} torch thread(s); {args.warmup} warm-up steps, "
          f"then {args.steps} timed steps per 108 atoms; median of {args.rounds} rounds; cutoff 4.5, d_pet 128, "
          f"2 GNN x 2 attention layers")
    print(f"{'atoms':>5} | {'calculator':<29} | {'ms/step':>8} | {'steps/s':>7} | {'b/a':>5} | {'c/b':>5}")
    verdicts = []
    for atoms in SIZES:
        median = {name: statistics.median(times[(atoms, name)]) for name in args.only}
        for name in args.only:
            b_over_a = f"{median['b'] / median['a']:.2f}" if name == "b" and "a" in median else ""
            c_over_b = f"{median['c'] / median['b']:.2f}" if name == "c" and "b" in median else ""
            print(f"{atoms:>5} | {labels[name]:<29} | {1000 * median[name]:>8.1f} | {1 / median[name]:>7.2f} | "
                  f"{b_over_a:>5} | {c_over_b:>5}")
        if "a" in median and "b" in median:
            ratio = median["b"] / median["a"]
            verdicts.append(f"{atoms} atoms: (b) <= {GOAL_EXPORTED_OVER_OURS}x (a): "
                            f"{'met' if ratio <= GOAL_EXPORTED_OVER_OURS else 'not met'} ({ratio:.2f}x)")
        if "b" in median and "c" in median:
            ratio = median["c"] / median["b"]
            verdicts.append(f"{atoms} atoms: (b) >= {GOAL_PET_OVER_EXPORTED}x faster than (c): "
                            f"{'met' if ratio >= GOAL_PET_OVER_EXPORTED else 'not met'} ({ratio:.2f}x)")
    print("\n".join(verdicts))
    print("ms/step in each round: " + "; ".join(f"{atoms} {name}: " + " ".join(f"{1000 * t:.0f}" for t in values)
                                                for (atoms, name), values in sorted(times.items())))


if __name__ == "__main__":
    main()
