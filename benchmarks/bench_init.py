"""``nanopet-tune init`` on data with known answers, then the searches it writes. Prints two tables.

    python benchmarks/bench_init.py [--budget 5m] [--workers 2] [--emt 300] [--molecules 1000] [--work DIR]
        [--skip-search] [--skip-cases] [--search emt molecules]

Cases (files written under ``--work``; each ``nanopet-tune init`` run as a command, as a user runs it, with
``--case-budget``: they check what init finds, not the machine's speed):

- ``emt``: the built-in EMT Cu-Au set (periodic; energy, forces, stress): the keys, bulk, nothing suspicious;
- ``molecules``: the built-in xtb molecules (no cell; energy, forces): the keys, molecules, nothing suspicious;
- ``force-key``: the EMT set with its forces under ``force`` and its stress as a ``virial``;
- ``two-forces``: the EMT set with forces under ``forces`` and ``dft_forces``: asked for with ``--forces-key``;
- ``kcal``: the molecules in kcal/mol: asked for with ``--energy-unit``; given, the space says kcal/mol;
- ``planted-molecules``: the molecules with overlapping atoms in frames 5, 50 and the last, and frame n/2 in
  kcal/mol: named; ``--drop-suspicious`` leaves them out;
- ``planted-emt``: the EMT set with an overlapping pair (3), a force glitch (10), a duplicated frame (20) and a
  frame in meV (30): its forces make the file look like another unit, so init asks for ``--energy-unit`` or
  ``--drop-suspicious``, and with the latter leaves the four frames out.

For ``--search`` (default both built-in sets), right after its init, ``nanopet-tune SPACE --workers N`` on the space
init wrote for the built-in set: the whole command's wall time against the budget (goal: within 1.25x), the time line the search
prints last (its time, budget and the prediction), and its gain over its defaults' trial on the objective (goal:
>= 30%). Not a test: timings and gains depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from data_support import overlapping, relabelled, scaled  # noqa: E402  (frames under other keys, in other units)

from nanopet.data.builtin import builtin_dataset_path  # noqa: E402

KCAL_PER_EV = 23.0605


def command(*args, cwd: Path) -> tuple[int, str, str, float]:
    """``nanopet-tune ARGS`` in a subprocess: (exit code, stdout, stderr, seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nanopet.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def write_cases(work: Path, n_emt: int, n_molecules: int) -> dict:
    """case -> (file, what was planted, flags init needs)."""
    emt = ase.io.read(builtin_dataset_path("emt-alloy", n_emt, 0), ":")
    molecules = ase.io.read(builtin_dataset_path("xtb-molecules", n_molecules, 0), ":")
    cases = {}

    def case(name, frames, planted, flags=()):
        path = work / f"{name}.xyz"
        ase.io.write(path, frames, format="extxyz")
        cases[name] = (path, planted, list(flags))

    case("emt", emt, "nothing (energy, forces, stress; periodic)")
    case("molecules", molecules, "nothing (energy, forces; molecules)")
    case("force-key", relabelled(emt, forces="force", stress=None, virial="virial"), "forces under 'force', a 'virial'")
    two = relabelled(emt, forces="forces")
    for frame, original in zip(two, emt):
        frame.arrays["dft_forces"] = original.get_forces() * 1.01
    case("two-forces", two, "forces under 'forces' and 'dft_forces'", ["--forces-key", "dft_forces"])
    case("kcal", [scaled(atoms, KCAL_PER_EV) for atoms in molecules[:300]], "the unit: kcal/mol (the file cannot tell)",
         ["--energy-unit", "kcal/mol"])
    frames = list(molecules[:300])
    overlaps, mixed = [5, 50, len(frames) - 1], len(frames) // 2
    for index in overlaps:
        frames[index] = overlapping(frames[index], 0.3)
    frames[mixed] = scaled(frames[mixed], KCAL_PER_EV)
    case("planted-molecules", frames, f"overlaps in {overlaps}, frame {mixed} in kcal/mol", ["--drop-suspicious"])
    frames = list(emt)
    frames[3] = overlapping(frames[3], 0.5)
    forces = frames[10].get_forces().copy()
    forces[7] = [250.0, -40.0, 10.0]
    glitch = frames[10].copy()
    from ase.calculators.singlepoint import SinglePointCalculator

    glitch.calc = SinglePointCalculator(glitch, energy=frames[10].get_potential_energy(), forces=forces,
                                        stress=frames[10].get_stress())
    frames[10], frames[20], frames[30] = glitch, frames[19], scaled(frames[30], 1000.0)
    case("planted-emt", frames, "overlap in 3, force glitch in 10, 20 = 19, 30 in meV", ["--drop-suspicious"])
    return cases


def said(stdout: str) -> str:
    """init's printed choices in a few words: keys and unit, splits, plan, suspicious frames."""
    lines = [line.strip() for line in stdout.splitlines()]
    keep = [line for line in lines if line.startswith(("data:", "plan:", "suspicious:", "left out"))]
    return "; ".join(keep).replace("|", "/")


def run_cases(work: Path, cases: dict, budget: str, workers: int) -> tuple[list, dict]:
    """Rows (case, planted, first run, with the flags, found) and case -> the space written."""
    rows, spaces = [], {}
    for name, (path, planted, flags) in cases.items():
        print(f"  init {name} ...", file=sys.stderr, flush=True)
        space = work / f"{name}-search.yaml"
        code, out, err, seconds = command("init", path, "--budget", budget, "--workers", workers, "-o", space,
                                          "--overwrite", cwd=work)
        first = f"exit {code}: {err.strip().removeprefix('nanopet-tune: error: ')}" if code else said(out)
        second = ""
        if flags:
            code2, out2, err2, _ = command("init", path, "--budget", budget, "--workers", workers, "-o", space,
                                           "--overwrite", *flags, cwd=work)
            second = f"with {' '.join(flags)}: " + (f"exit {code2}: {err2.strip()}" if code2 else said(out2))
            code, out = code2, out2
        if code == 0:
            spaces[name] = space
        rows.append((name, planted, first.replace("|", "/") + f" ({seconds:.0f} s)", second, found(name, code, out, err)))
    return rows, spaces


def found(name: str, code: int, out: str, err: str) -> str:
    """Whether init found what was planted (checked on its printed lines and the space written)."""
    checks = {
        "emt": "energy 'energy', forces 'forces', stress 'stress'" in out and "(bulk)" in out and "suspicious" not in out,
        "molecules": "energy 'energy', forces 'forces'" in out and "(molecules)" in out and "suspicious" not in out,
        "force-key": "forces 'force', virial 'virial'" in out,
        "two-forces": "forces 'dft_forces'" in out,
        "kcal": "unit kcal/mol" in out,
        "planted-molecules": "left out (--drop-suspicious): 4 frames" in out and "overlapping atoms: 5, 50, 299" in out,
        "planted-emt": "left out (--drop-suspicious): 4 frames" in out and "overlapping atoms: 3" in out
                       and "duplicated frames: 20" in out,
    }
    return "yes" if code == 0 and checks.get(name, False) else "NO"


def search(work: Path, space: Path, workers: int) -> dict:
    code, out, err, seconds = command(space, "--workers", workers, cwd=work)
    lines = out.splitlines()
    time_line = next((line for line in reversed(lines) if line.startswith("time: ")), "")
    best = next((line for line in lines if line.startswith("best ")), "")
    gain = re.search(r"([-\d.]+)% better than the defaults \(([\d.]+)\)", best)
    plan = next((line for line in lines if line.startswith("plan: ")), "")
    stages = [line.strip() for line in lines if re.match(r"\s+stage \d+/\d+ \(", line)]
    return {"code": code, "seconds": seconds, "time_line": time_line, "gain": float(gain.group(1)) if gain else None,
            "defaults": float(gain.group(2)) if gain else None, "best": best, "plan": plan, "stages": stages,
            "error": err.strip().splitlines()[-1] if code and err.strip() else ""}


def main() -> None:
    from nanopet.cli.arguments import duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder for the files and studies (default: a temporary one)")
    parser.add_argument("--budget", default="5m", help="init's --budget for the searches (default 5m)")
    parser.add_argument("--case-budget", default="20m",
                        help="init's --budget for the cases, enough that a busy machine fits a plan (default 20m)")
    parser.add_argument("--workers", type=int, default=2, help="init's and the search's --workers (default 2)")
    parser.add_argument("--emt", type=int, default=300, help="built-in EMT structures (default 300)")
    parser.add_argument("--molecules", type=int, default=1000, help="built-in molecule structures (default 1000)")
    parser.add_argument("--search", nargs="*", default=["emt", "molecules"], choices=["emt", "molecules"],
                        help="the built-in sets whose search to run (default both)")
    parser.add_argument("--skip-search", action="store_true", help="only the init cases")
    parser.add_argument("--skip-cases", action="store_true", help="only the searches")
    args = parser.parse_args()
    budget = duration(args.budget)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        cases = write_cases(work, args.emt, args.molecules)
        rows, searches = [], {}
        for name in [] if args.skip_search else args.search:  # each search right after its init: the timing is fresh
            code, out, err, seconds = command("init", cases[name][0], "--budget", args.budget, "--workers", args.workers,
                                              "-o", work / f"{name}-{args.budget}.yaml", "--overwrite", cwd=work)
            if code:
                searches[name] = ({"init": err.strip().removeprefix("nanopet-tune: error: ")}, os.getloadavg()[0])
                continue
            print(f"  search {name} ...", file=sys.stderr, flush=True)
            searches[name] = ({**search(work, work / f"{name}-{args.budget}.yaml", args.workers), "init": said(out)},
                              os.getloadavg()[0])
        rows = [] if args.skip_cases else run_cases(work, cases, args.case_budget, args.workers)[0]

    print(f"load average {load:.2f} at the start, {os.cpu_count()} CPUs; cases: init --budget {args.case_budget} --workers "
          f"{args.workers}")
    if rows:
        print("| case | planted | init | with the flag it asked for | found |")
        print("| --- | --- | --- | --- | --- |")
    for case, planted, first, second, ok in rows:
        print(f"| {case} | {planted} | {first} | {second} | {ok} |")
    if searches:
        print(f"\nsearches: init --budget {args.budget} --workers {args.workers}, then the search")
        print("| set | plan | whole command (goal <= 1.25x budget) | the search's last line | gain over the defaults "
              "(goal >= 30%) | stages | load average after |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (result, after) in searches.items():
            if "seconds" not in result:
                print(f"| {name} | init: {result['init']} | - | - | - | - | {after:.1f} |")
                continue
            ratio = result["seconds"] / budget
            gain = f"{result['gain']:.1f}%" if result["gain"] is not None else result["error"] or "-"
            print(f"| {name} | {result['plan'].removeprefix('plan: ')} | {result['seconds'] / 60:.1f} min, {ratio:.2f}x "
                  f"({'yes' if ratio <= 1.25 else 'NO'}) | {result['time_line']} | {gain} "
                  f"({'yes' if (result['gain'] or 0) >= 30 else 'NO'}) | {'; '.join(result['stages'])} | {after:.1f} |")


if __name__ == "__main__":
    main()
