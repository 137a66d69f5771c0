"""``nanopet-tune inspect`` on data with known answers, and its speed on 10,000 structures. Prints a table.

    python benchmarks/bench_inspect.py                  # the cases and the timing (about a minute; more the first
                                                        # time, while the built-in sets are generated and cached)
    python benchmarks/bench_inspect.py --memory         # also measure the training memory behind the estimate

Cases (files written under ``--work``, default a temporary folder):

- ``emt``: the built-in EMT Cu-Au set (periodic; energy, forces, stress): the keys, nothing suspicious;
- ``molecules``: the built-in xtb molecules (no cell; energy, forces): the keys, nothing suspicious;
- ``force-key``: the EMT set with its forces under ``force`` and its stress as a ``virial``: both keys found,
  and the reader's note (what ``train``, the search and ``eval`` print) naming ``force``;
- ``kcal``: the molecules in kcal/mol: flagged as looking like kcal/mol; ``--energy-unit kcal/mol`` clears it;
- ``planted-molecules``: the molecules with three frames of overlapping atoms and one frame in kcal/mol;
- ``planted-emt``: the EMT set with an overlapping pair, a duplicated frame, one force glitch and one frame in meV;
- ``timing``: 10,000 EMT cells of 32 atoms (the built-in set tiled, rattled by 0.01 A, labels with noise),
  ``inspect_data`` in this process and the whole command (``python -m nanopet.cli inspect``, interpreter start
  included). Goal: under 10 s.

``--memory`` measures what ``nanopet.data.inspection.report`` estimates training memory from: the peak resident
memory of one energy + forces + stress training step of the default model (float32, CPU, in a fresh process) on
2 and 8 EMT cells at cutoffs 4.0 and 5.5 A, and its slope per edge of the neighbour list at each cutoff.
Not a test: the timing depends on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from nanopet.data.builtin import builtin_dataset_path
from nanopet.data.inspection import FrameRef, inspect_data
from nanopet.data.read import read_structures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from data_support import overlapping, relabelled, scaled  # noqa: E402  (frames under other keys, in other units)

KCAL_PER_EV = 23.0605


def labelled(atoms, energy, forces, **extra):
    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, energy=energy, forces=forces, **extra)
    return copy


def suspicious(report) -> dict:
    return {found.kind: sorted(ref.index for ref in found.frames) for found in report.suspicious}


def keys(report) -> str:
    return ", ".join(f"{kind} '{key}'" for kind, key in (("energy", report.energy_key), ("forces", report.forces_key),
                                                          ("stress", report.stress_key), ("virial", report.virial_key)) if key)


def cases(work: Path, n_emt: int, n_molecules: int):
    """Rows: (case, planted, found, yes/no)."""
    emt = ase.io.read(builtin_dataset_path("emt-alloy", n_emt, 0), ":")
    molecules = ase.io.read(builtin_dataset_path("xtb-molecules", n_molecules, 0), ":")
    rows = []

    def row(case, planted, found, ok):
        rows.append((case, planted, found, "yes" if ok else "NO"))
        print(f"  {case}: {'yes' if ok else 'NO'}", file=sys.stderr, flush=True)

    for case, frames, expected, kind in (("emt", emt, "energy 'energy', forces 'forces', stress 'stress'", "periodic"),
                                         ("molecules", molecules, "energy 'energy', forces 'forces'", "molecule")):
        path = work / f"{case}.xyz"
        ase.io.write(path, frames, format="extxyz")
        report = inspect_data(path)
        found = f"{keys(report)}; {report.geometry}; suspicious: {suspicious(report) or 'none'}"
        row(f"built-in {case} ({len(frames)})", f"nothing ({expected}, {kind})", found,
            keys(report) == expected and not report.suspicious and list(report.geometry) == [kind] and not report.unit_hints)

    path = work / "force-key.xyz"
    ase.io.write(path, relabelled(emt, forces="force", stress=None, virial="virial"), format="extxyz")
    report = inspect_data(path)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        read_structures(str(path))
    note = stderr.getvalue().strip()
    row("periodic, forces under 'force'", "forces key 'force', a 'virial', train's note",
        f"{keys(report)}; targets {report.targets()['energy']}; note: {'yes' if 'force' in note else 'no'} ({len(note.splitlines())} line)",
        report.forces_key == "force" and report.virial_key == "virial" and len(note.splitlines()) == 1 and "'force'" in note)

    path = work / "kcal.xyz"
    ase.io.write(path, [scaled(atoms, KCAL_PER_EV) for atoms in molecules], format="extxyz")
    assumed, given = inspect_data(path), inspect_data(path, energy_unit="kcal/mol")
    flagged = [hint for hint in assumed.unit_hints if "kcal/mol" in hint]
    row("molecules in kcal/mol", "the unit (the file cannot tell)",
        f"hint: {flagged[0][:60] + '...' if flagged else 'none'}; with --energy-unit kcal/mol: "
        f"{len(given.unit_hints)} hints, force RMS {given.force_rms:.3g} eV/A",
        bool(flagged) and not given.unit_hints and given.energy_unit_given)

    frames = list(molecules)
    overlaps, mixed = [5, 50, len(frames) - 1], len(frames) // 2
    for index in overlaps:
        frames[index] = overlapping(frames[index], 0.3)
    frames[mixed] = scaled(frames[mixed], KCAL_PER_EV)
    path = work / "planted-molecules.xyz"
    ase.io.write(path, frames, format="extxyz")
    report = inspect_data(path)
    found = suspicious(report)
    details = next((f.details for f in report.suspicious if f.kind == "energy per atom outliers"), {})
    unit = "looks like kcal/mol" in details.get(FrameRef(0, mixed), "")
    row("molecules, planted", f"overlaps in frames {overlaps}, frame {mixed} in kcal/mol",
        f"{found}; frame {mixed} {'looks like kcal/mol' if unit else 'unit not guessed'}",
        found.get("overlapping atoms") == overlaps and found.get("energy per atom outliers") == [mixed] and unit)

    frames = list(emt)
    glitch, duplicate, mev = 10, 20, 30
    frames[3] = overlapping(frames[3], 0.5)
    forces = frames[glitch].get_forces().copy()
    forces[7] = [250.0, -40.0, 10.0]
    frames[glitch] = labelled(frames[glitch], frames[glitch].get_potential_energy(), forces, stress=frames[glitch].get_stress())
    frames[duplicate] = frames[duplicate - 1]
    frames[mev] = scaled(frames[mev], 1000.0)
    path = work / "planted-emt.xyz"
    ase.io.write(path, frames, format="extxyz")
    report = inspect_data(path)
    found = suspicious(report)
    row("EMT, planted", f"overlap in 3, force glitch in {glitch}, {duplicate} = {duplicate - 1}, {mev} in meV", str(found),
        found.get("overlapping atoms") == [3] and found.get("duplicated frames") == [duplicate]
        and found.get("force outliers") == [glitch, mev] and found.get("energy per atom outliers") == [mev])
    return rows


def timing(work: Path, n: int, n_atoms_source: int):
    """(seconds in this process, seconds of the whole command, the report) on ``n`` tiled EMT cells."""
    source = ase.io.read(builtin_dataset_path("emt-alloy", n_atoms_source, 0), ":")
    rng = np.random.default_rng(0)
    frames = []
    for k in range(n):
        atoms = source[k % len(source)]
        copy = atoms.copy()
        copy.positions += rng.normal(0, 0.01, copy.positions.shape)
        frames.append(labelled(copy, atoms.get_potential_energy() + rng.normal(0, 0.05),
                               atoms.get_forces() + rng.normal(0, 0.05, (len(atoms), 3)), stress=atoms.get_stress()))
    path = work / "timing.xyz"
    ase.io.write(path, frames, format="extxyz")
    started = time.perf_counter()
    report = inspect_data(path)
    in_process = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nanopet.cli", "inspect", str(path)], check=True, capture_output=True)
    command = time.perf_counter() - started
    return in_process, command, report


CHILD = r'''
import json, resource, sys, numpy as np, torch
from nanopet.data import builtin_dataset
from nanopet.data.batch import GraphDataset
from nanopet.model import NanoPET
from nanopet.options import default_hypers
from nanopet.runtime import keep_freed_memory
from nanopet.loss import Loss
from nanopet.train import training_step
keep_freed_memory()
torch.set_num_threads(1)
cutoff, k = float(sys.argv[1]), int(sys.argv[2])
structures = builtin_dataset("emt-alloy", 32, seed=0)[:k]
dataset = GraphDataset(structures, cutoff)
torch.manual_seed(0)
model = NanoPET({**default_hypers()["model"], "cutoff": cutoff}, [29, 79])
model.energy_scale.fill_(1.0)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
loss = Loss(default_hypers()["training"]["loss"], ("energy", "forces", "virial"))
training_step(model, model, dataset, list(range(k)), None, loss=loss, optimizer=optimizer, offsets=np.zeros(k),
              per_structure=False, device="cpu", dtype=torch.float32, atoms_per_pass=10**9)
print(json.dumps({"edges": sum(g.num_edges for g in dataset.graphs), "atoms": sum(len(s) for s in structures),
                  "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''


def memory():
    """Peak memory of a training step on 2 and 8 cells at cutoffs 4.0 and 5.5 A; the slope per edge at each."""
    runs = {}
    for cutoff in (4.0, 5.5):
        for cells in (2, 8):
            output = subprocess.run([sys.executable, "-c", CHILD, str(cutoff), str(cells)], check=True, capture_output=True,
                                    text=True).stdout
            runs[cutoff, cells] = json.loads(output.strip().splitlines()[-1])
    slopes = {cutoff: (runs[cutoff, 8]["peak_bytes"] - runs[cutoff, 2]["peak_bytes"])
              / (runs[cutoff, 8]["edges"] - runs[cutoff, 2]["edges"]) for cutoff in (4.0, 5.5)}
    return runs, slopes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder for the files (default: a temporary one)")
    parser.add_argument("--emt", type=int, default=1000, help="built-in EMT structures (default 1000)")
    parser.add_argument("--molecules", type=int, default=300, help="built-in molecule structures (default 300)")
    parser.add_argument("--timing", type=int, default=10_000, help="structures of the timing set (default 10,000)")
    parser.add_argument("--memory", action="store_true", help="also measure training memory per edge and per atom")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows = cases(work, args.emt, args.molecules)
        in_process, command, report = timing(work, args.timing, args.emt)

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print("| case | planted | inspect found | found |")
    print("| --- | --- | --- | --- |")
    for case, planted, found, ok in rows:
        print(f"| {case} | {planted} | {found} | {ok} |")
    steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in report.timings.items())
    print(f"| timing: {report.structures:,} x {report.atoms_per_structure[1]:g} atoms | under 10 s | "
          f"inspect_data {in_process:.2f} s ({steps}; neighbours of {report.neighbours.sampled} structures); "
          f"the whole command {command:.2f} s | {'yes' if command < 10 else 'NO'} |")
    if args.memory:
        runs, slopes = memory()
        print("\n| cutoff (A) | cells | edges | atoms | peak memory (MB) | slope (kB per edge) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for (cutoff, cells), run in runs.items():
            slope = f"{slopes[cutoff] / 1e3:.0f}" if cells == 8 else ""
            print(f"| {cutoff:g} | {cells} | {run['edges']} | {run['atoms']} | {run['peak_bytes'] / 1e6:.0f} | {slope} |")


if __name__ == "__main__":
    main()
