"""Datasets at scale: preparing them on disk, opening them, memory per worker and in total, training throughput.

    python benchmarks/bench_data.py                                   # 2k, 20k, 100k, 200k structures; 1, 2, 4 workers
    python benchmarks/bench_data.py --sizes 2000 20000 --workers 1 2  # smaller
    python benchmarks/bench_data.py --throughput                      # prepared vs in-memory training on the built-in sets
    python benchmarks/bench_data.py --search 200000 --minutes 10      # a real search, --workers 2, on 200k structures

Data: 32-atom Cu-Au cells, the built-in EMT set (1000 frames, ``emt-alloy``, cached) tiled and rattled again
(Gaussian, 0.02 A). Labels are synthetic, not EMT: each copy keeps its base frame's EMT labels corrected to first
order for its displacement d by a harmonic term (forces F - k d, energy E - F.d + k d^2 / 2, k = 5 eV/A^2; stress
as the base frame's), so that 200,000 frames are written in seconds instead of labelled by EMT for ~15 minutes;
preparation, memory and speed do not depend on label values. Written as extended XYZ by this script, in ASE's
layout (``Lattice``, ``Properties=species:S:1:pos:R:3:forces:R:3``, ``energy``, ``stress``, ``pbc``).

Per size, each in fresh processes (one per measurement, so a peak is its own):
- in memory (the path of ``load_data(prepared=False)``, up to ``--in-memory-up-to`` structures): read + split, and
  neighbour lists + first batch (``GraphDataset``), peak RSS (VmHWM);
- prepare: ``nanopet.data.prepare.prepare`` at cutoff 5 on every core, its seconds, per 1000 structures, folder size;
- open: ``load_data(prepared=True)`` of the prepared set (hash check, maps, split) in a new process;
- workers: N processes at once each load the data and assemble every training batch once (an epoch's data access,
  no model), then wait; while all are alive, the PSS of each (``/proc/PID/smaps_rollup``), the PSS of its mappings of
  the prepared files (``/proc/PID/smaps``), and its private memory growth since before loading (RssAnon); "data"
  = prepared-file PSS + private growth, summed over the workers: the node's memory for the data.
Not a test: numbers depend on the machine; see benchmarks/README.md for measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CUTOFF = 5.0
SPRING = 5.0  # eV/A^2, the harmonic correction of the synthetic labels
RATTLE = 0.02  # A


# ---------------------------------------------------------------------------------------------
# Data


def write_rattled(path: Path, n: int, seed: int = 0) -> float:
    """``n`` frames: the built-in EMT frames tiled, rattled, with synthetic labels (module docstring). Seconds."""
    import numpy as np

    from nanopet.data.builtin import builtin_dataset_path
    from nanopet.data.read import read_structures

    started = time.perf_counter()
    bases = read_structures(str(builtin_dataset_path("emt-alloy", 1000, 0)))
    rng = np.random.default_rng(seed)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        for k in range(n):
            base = bases[k % len(bases)]
            shift = rng.normal(scale=RATTLE, size=base.positions.shape)
            forces = base.forces - SPRING * shift
            energy = base.energy - float((base.forces * shift).sum()) + 0.5 * SPRING * float((shift**2).sum())
            lattice = " ".join(repr(float(v)) for v in base.cell.reshape(-1))
            stress = " ".join(repr(float(v)) for v in base.stress.reshape(-1))
            symbols = np.where(base.numbers == 29, "Cu", "Au")
            rows = np.column_stack([base.positions + shift, forces])
            lines = "\n".join(f"{s:<2} " + " ".join(f"{v:16.8f}" for v in row) for s, row in zip(symbols, rows))
            handle.write(f'{len(base)}\nLattice="{lattice}" Properties=species:S:1:pos:R:3:forces:R:3 energy={energy!r} '
                         f'stress="{stress}" pbc="T T T"\n{lines}\n')
    temporary.replace(path)
    return time.perf_counter() - started


def data_file(work: Path, n: int) -> tuple[Path, float | None]:
    path = work / f"rattled-{n}.xyz"
    if path.is_file():
        return path, None
    return path, write_rattled(path, n)


def options_of(path: Path) -> dict:
    return {"seed": 0, "training_set": str(path), "validation_set": 0.1, "test_set": 0.0,
            "architecture": {"model": {"cutoff": CUTOFF}}}


# ---------------------------------------------------------------------------------------------
# Children (one measurement each, in a fresh process)


def status_kb(pid: str = "self") -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


def pss_kb(pid: int, folder: str | None) -> tuple[int, int]:
    """(total PSS, PSS of mappings of files under ``folder``) of process ``pid``, kB."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            total = int(line.split()[1])
    mapped, inside = 0, False
    if folder:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            parts = line.split()
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line: range perms offset dev inode [path]
                inside = len(parts) >= 6 and parts[5].startswith(folder)
            elif inside and line.startswith("Pss:"):
                mapped += int(parts[1])
    return total, mapped


def child_in_memory(path: str) -> dict:
    import numpy as np

    from nanopet.data.read import load_splits
    from nanopet.data.batch import GraphDataset

    started = time.perf_counter()
    train, val, test = load_splits(options_of(Path(path)), seed=0)
    read = time.perf_counter() - started
    started = time.perf_counter()
    dataset = GraphDataset(train, CUTOFF)
    GraphDataset(val, CUTOFF)
    dataset.batch(np.arange(16))
    lists = time.perf_counter() - started
    return {"read_s": read, "lists_s": lists, "peak_gb": status_kb()["VmHWM"] / 1e6}


def child_prepare(path: str) -> dict:
    from nanopet.data.prepare import prepare
    from nanopet.data.read import dataset_specs

    started = time.perf_counter()
    folder = prepare(dataset_specs(path), CUTOFF, progress=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {"prepare_s": seconds, "folder": str(folder), "size_gb": size / 1e9, "peak_gb": status_kb()["VmHWM"] / 1e6}


def child_open(path: str) -> dict:
    from nanopet.data.splits import load_data

    started = time.perf_counter()
    data = load_data(options_of(Path(path)), prepared=True)
    return {"open_s": time.perf_counter() - started, "train": len(data.train), "folders": data.prepared_folders}


def child_worker(path: str, prepared: bool) -> None:
    """Load, touch every training batch once, report, and wait for the parent to measure (stdin closes)."""
    import ase.io.extxyz  # noqa: F401 - a worker has imported the trainer and the readers before it loads data
    import numpy as np

    import nanopet.data.prepare  # noqa: F401
    import nanopet.train  # noqa: F401
    from nanopet.data.splits import load_data

    before = status_kb()["RssAnon"]
    started = time.perf_counter()
    data = load_data(options_of(Path(path)), prepared=prepared)
    loaded = time.perf_counter() - started
    order = np.random.default_rng(os.getpid()).permutation(len(data.train))
    started = time.perf_counter()
    for start in range(0, len(order), 16):
        data.train.batch(order[start : start + 16])
    epoch = time.perf_counter() - started
    print(json.dumps({"load_s": loaded, "batches_s": epoch, "batches": (len(order) + 15) // 16,
                      "private_growth_kb": status_kb()["RssAnon"] - before, "folders": data.prepared_folders}), flush=True)
    sys.stdin.read()


def run_child(*args: str, stdin=None) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                            env=child_env(), stdin=stdin)
    if result.returncode:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def workers_memory(path: Path, count: int, prepared: bool) -> dict:
    """``count`` worker processes alive at once: their PSS, prepared-file PSS and private growth."""
    processes = [subprocess.Popen([sys.executable, __file__, "--child", "worker", str(path), str(int(prepared))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
                 for _ in range(count)]
    reports = [json.loads(p.stdout.readline()) for p in processes]
    folder = (reports[0]["folders"] or [None])[0]
    measured = [pss_kb(p.pid, folder) for p in processes]
    for p in processes:
        p.stdin.close()
        p.wait()
    total = sum(m[0] for m in measured)
    mapped = sum(m[1] for m in measured)
    private = sum(r["private_growth_kb"] for r in reports)
    return {"workers": count, "pss_gb": total / 1e6, "mapped_gb": mapped / 1e6, "private_gb": private / 1e6,
            "data_gb": (mapped + private) / 1e6, "per_worker_data_gb": [(m[1] + r["private_growth_kb"]) / 1e6
                                                                       for m, r in zip(measured, reports)],
            "load_s": max(r["load_s"] for r in reports), "batch_ms": 1e3 * sum(r["batches_s"] for r in reports)
            / sum(r["batches"] for r in reports)}


# ---------------------------------------------------------------------------------------------
# Training throughput: the same training, data prepared or in memory


def throughput_options(builtin: str, epochs: int) -> dict:
    return {"seed": 0, "device": "cpu", "base_precision": 32, "validation_set": 0.1, "test_set": 0.0,
            "training_set": {"systems": {"builtin": builtin, "n": 1000, "seed": 0}},
            "architecture": {"model": {"cutoff": 4.5, "d_pet": 32, "num_heads": 4, "num_gnn_layers": 2,
                                       "num_attention_layers": 1},
                             "training": {"num_epochs": epochs, "batch_size": 16, "log_interval": 1000}}}


def child_throughput(builtin: str, prepared: bool, epochs: int) -> dict:
    import torch

    from nanopet.data.splits import load_data
    from nanopet.train import train

    torch.set_num_threads(1)
    options = throughput_options(builtin, epochs)
    data = load_data(options, prepared=prepared)
    result = train(options, data=data, log=lambda line: None)
    seconds = sum(row["epoch_time"] for row in result.history)
    return {"structures_per_s": len(data.train) * epochs / seconds, "val_loss": result.history[-1]["val_loss"]}


def child_assembly(builtin: str, prepared: bool) -> dict:
    """CPU time of the trainer's batches of one epoch (the only work that differs between the two paths)."""
    import torch

    from nanopet.data.splits import load_data
    from nanopet.train import epoch_batches

    torch.set_num_threads(1)
    data = load_data(throughput_options(builtin, 1), prepared=prepared).at_cutoff(4.5)
    batches = epoch_batches(data.train, 16, torch.Generator().manual_seed(0))
    for indices in batches[:20]:  # warm
        data.train.batch(indices)
    started = time.process_time()
    for indices in batches:
        data.train.batch(indices)
    return {"batch_ms": 1e3 * (time.process_time() - started) / len(batches)}


def throughput(rounds: int, epochs: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NANOPET_PREPARED"] = folder  # the prepared copies of this run only
        print("\n### Batch assembly: CPU ms per training batch of 16 (an epoch's batches, cutoff 4.5 from lists at 4.5)\n")
        print("| set | in memory | prepared | prepared - in memory |")
        print("| --- | --- | --- | --- |")
        for builtin in ("emt-alloy", "xtb-molecules"):
            cost = {prepared: min(run_child("assembly", builtin, str(int(prepared)))["batch_ms"] for _ in range(rounds))
                    for prepared in (False, True)}
            print(f"| {builtin} 1000 | {cost[False]:.2f} | {cost[True]:.2f} | {cost[True] - cost[False]:+.2f} |", flush=True)
        print("\n### Training throughput: prepared vs in memory (d_pet 32, 2+1 layers, cutoff 4.5, batch 16, float32, 1 thread)\n")
        print("| set | in memory (structures/s) | prepared (structures/s) | prepared / in memory | same losses |")
        print("| --- | --- | --- | --- | --- |")
        for builtin in ("emt-alloy", "xtb-molecules"):
            rates = {False: [], True: []}
            losses = {}
            for _ in range(rounds):  # alternating, so a busy spell of the machine hits both
                for prepared in (False, True):
                    row = run_child("throughput", builtin, str(int(prepared)), str(epochs))
                    rates[prepared].append(row["structures_per_s"])
                    losses[prepared] = row["val_loss"]
            memory, disk = max(rates[False]), max(rates[True])
            print(f"| {builtin} 1000 | {memory:.1f} ({', '.join(f'{r:.1f}' for r in rates[False])}) | "
                  f"{disk:.1f} ({', '.join(f'{r:.1f}' for r in rates[True])}) | {disk / memory:.3f} | "
                  f"{'yes' if losses[False] == losses[True] else 'no'} |", flush=True)


# ---------------------------------------------------------------------------------------------
# A real search on a large set


def search(work: Path, n: int, minutes: float, sample_s: float = 2.0) -> None:
    """``nanopet-tune SPACE --workers 2`` on ``n`` structures (a tiny model, cutoff searched in 4-5 A): the launcher
    prepares the data, both workers load it and train; the total PSS of the launcher and its workers is sampled for
    ``minutes`` after the command starts, then the search is killed (an epoch over the whole training set takes
    hours on a 2-core machine; what the data costs is there once the workers train)."""
    path, _ = data_file(work, n)
    space = work / f"space-{n}.yaml"
    space.write_text(json.dumps({
        **options_of(path), "validation_set": 0.01, "device": "cpu",
        "architecture": {"model": {"cutoff": 4.5, "d_pet": 8, "num_heads": 2, "num_gnn_layers": 1, "num_attention_layers": 1},
                         "training": {"batch_size": 64}},
        "study": {"name": f"data-{n}", "directory": str(work / "studies"), "sampler": {"type": "random", "seed": 0},
                  "pruner": {"type": "none"}},
        "budget": {"n_trials": 2, "epochs": 1},
        "parameters": {"cutoff": {"type": "float", "low": 4.0, "high": 5.0}}}))
    shutil.rmtree(work / "studies" / f"data-{n}", ignore_errors=True)
    log = work / f"search-{n}.log"
    started = time.time()
    with open(log, "w") as output:
        launcher = subprocess.Popen([sys.executable, "-m", "nanopet.cli", str(space), "--workers", "2"], cwd=work,
                                    env=child_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        samples = []
        while launcher.poll() is None and time.time() - started < 60 * minutes:
            pids = [launcher.pid] + children_of(launcher.pid)
            total = mapped = 0
            for pid in pids:
                try:
                    pss, files = pss_kb(pid, os.environ["NANOPET_PREPARED"])
                except OSError:
                    continue
                total, mapped = total + pss, mapped + files
            samples.append((time.time() - started, len(pids), total / 1e6, mapped / 1e6))
            time.sleep(sample_s)
        if launcher.poll() is None:
            os.killpg(launcher.pid, 9)
            launcher.wait()
    text = log.read_text()
    peak = max(samples, key=lambda sample: sample[2])
    print(f"\n### Search, --workers 2, {n:,} structures, sampled for {minutes:g} min\n")
    print(f"peak total PSS of the launcher and its workers: {peak[2]:.2f} GB at {peak[0]:.0f} s ({peak[1]} processes); "
          f"trials started: {text.count('trial ')}; exit code {launcher.returncode}")
    for at in range(0, int(60 * minutes) + 1, 60):
        near = min(samples, key=lambda sample: abs(sample[0] - at))
        print(f"  {near[0]:5.0f} s: {near[1]} processes, {near[2]:.2f} GB, of which mapped prepared files {near[3]:.2f} GB")
    print("\n".join("    " + line for line in text.splitlines()[:14]))


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found += [int(child)] + children_of(int(child))
    return found


# ---------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, args = sys.argv[2], sys.argv[3:]
        if kind == "worker":
            child_worker(args[0], bool(int(args[1])))
            return
        functions = {"memory": child_in_memory, "prepare": child_prepare, "open": child_open}
        if kind == "throughput":
            print(json.dumps(child_throughput(args[0], bool(int(args[1])), int(args[2]))))
        elif kind == "assembly":
            print(json.dumps(child_assembly(args[0], bool(int(args[1])))))
        else:
            print(json.dumps(functions[kind](*args)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000, 200000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--in-memory-up-to", type=int, default=20000, help="largest size also measured in memory")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nanopet-bench-data",
                        help="where the data files and prepared folders go (kept between runs)")
    parser.add_argument("--throughput", action="store_true", help="only: training throughput, prepared vs in memory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--search", type=int, metavar="N", help="only: a --workers 2 search on N structures")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the search is sampled before it is killed")
    args = parser.parse_args()
    if args.throughput:
        throughput(args.rounds, args.epochs)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work / "prepared", ignore_errors=True)  # every run prepares afresh (the data files are kept)
    os.environ["NANOPET_PREPARED"] = str(args.work / "prepared")
    if args.search:
        search(args.work, args.search, args.minutes)
        return
    print(f"32-atom Cu-Au cells (built-in EMT frames rattled, synthetic labels), cutoff {CUTOFF:g} A, "
          f"{os.cpu_count()} cores, {args.work}\n")
    rows = []
    for n in args.sizes:
        path, written = data_file(args.work, n)
        row = {"n": n, "written_s": written}
        if n <= args.in_memory_up_to:
            row["memory"] = run_child("memory", str(path))
            row["memory_workers"] = {k: workers_memory(path, k, False) for k in args.workers if k <= 2}
        row["prepare"] = run_child("prepare", str(path))
        row["open"] = run_child("open", str(path))
        row["workers"] = {k: workers_memory(path, k, True) for k in args.workers}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    tables(rows, args.workers)


def tables(rows: list[dict], workers: list[int]) -> None:
    print("| structures | in memory: read + split | lists + 1st batch | peak RSS | prepare (s) | s / 1000 | folder (GB) "
          "| open (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        memory = row.get("memory")
        shown = (f"{memory['read_s']:.1f} s | {memory['lists_s']:.1f} s | {memory['peak_gb']:.2f} GB" if memory
                 else "- | - | -")
        prepare = row["prepare"]
        print(f"| {row['n']:,} | {shown} | {prepare['prepare_s']:.1f} | {1000 * prepare['prepare_s'] / row['n']:.2f} | "
              f"{prepare['size_gb']:.2f} | {row['open']['open_s']:.2f} |")
    print("\nWorkers alive at once, each having loaded the data and assembled every training batch once "
          "(data = prepared-file PSS + private growth, summed; GB):\n")
    print("| structures | path | workers | data total | mapped files | private | data per worker | total PSS | load (s) "
          "| batch (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        for path, measured in (("in memory", row.get("memory_workers", {})), ("prepared", row["workers"])):
            for count, m in measured.items():
                per = ", ".join(f"{v:.3f}" for v in m["per_worker_data_gb"])
                print(f"| {row['n']:,} | {path} | {count} | {m['data_gb']:.3f} | {m['mapped_gb']:.3f} | {m['private_gb']:.3f} "
                      f"| {per} | {m['pss_gb']:.2f} | {m['load_s']:.1f} | {m['batch_ms']:.2f} |")
        prepared = row["workers"]
        if len(prepared) > 1:
            first, last = prepared[min(prepared)], prepared[max(prepared)]
            print(f"| {row['n']:,} | prepared | {min(prepared)} -> {max(prepared)} | growth "
                  f"{100 * (last['data_gb'] / first['data_gb'] - 1):+.1f}% | | | | | | |")


if __name__ == "__main__":
    main()
