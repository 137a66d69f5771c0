"""Training and inference throughput of NanoPET on the built-in EMT data (32-atom Cu-Au cells).

    python benchmarks/bench_train.py                 # defaults and the metatrain-matched config
    python benchmarks/bench_train.py --steps 3 --configs default

Prints one table row per configuration: parameters, mean neighbours, training and inference
(energy + forces) structures/s, FLOPs per training step (torch.utils.flop_counter), achieved
GFLOP/s as a fraction of this machine's fp32 matmul rate (2048^3, measured in the same run), and
peak resident memory. Each configuration runs in its own process so peak memory is its own.
Not a test: numbers depend on the machine; see benchmarks/README.md for measured figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    # NanoPET defaults (spec section 1), float32
    "default": {"cutoff": 5.0, "d_pet": 128, "num_heads": 4, "num_attention_layers": 2, "num_gnn_layers": 2},
    # matched to metatrain 2026.4.1's `pet` defaults used as the yardstick in the issue
    "matched-4.5": {"cutoff": 4.5, "d_pet": 128, "num_heads": 4, "num_attention_layers": 2, "num_gnn_layers": 2},
    "small": {"cutoff": 4.0, "d_pet": 64, "num_heads": 4, "num_attention_layers": 1, "num_gnn_layers": 2},
}

# measured on this kind of machine (2 cores) with metatrain 2026.4.1 `pet` at its defaults, cutoff 4.5,
# float32, batch 16, EMT Cu-Au 32-atom cells, energy+forces+stress (figures given in issue #2)
METATRAIN = {"train_structures_per_s": 3.5, "inference_structures_per_s": "10-16", "peak_memory_gb": 6.1}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def matmul_rate(size: int = 2048, repeats: int = 3, rounds: int = 5) -> float:
    """fp32 GFLOP/s of a size^3 matmul: the median of ``rounds`` timings (one probe varies by +-15% here)."""
    import statistics

    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates.append(2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def measure(name: str, n_structures: int, batch_size: int, steps: int, precision: int, atoms_per_pass) -> dict:
    """Runs in a child process: one configuration, returns its row."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nanopet.data.batch import GraphDataset
    from nanopet.data import builtin_dataset
    from nanopet.model import NanoPET, count_parameters
    from nanopet.options import default_hypers
    from nanopet.runtime import keep_freed_memory, resolve_atoms_per_pass
    from nanopet.loss import Loss
    from nanopet.train import training_step

    keep_freed_memory()
    dtype = torch.float64 if precision == 64 else torch.float32
    hypers = {**default_hypers()["model"], **CONFIGS[name]}
    structures = builtin_dataset("emt-alloy", n_structures, seed=0)
    dataset = GraphDataset(structures, hypers["cutoff"])
    torch.manual_seed(0)
    model = NanoPET(hypers, sorted({int(z) for s in structures for z in s.numbers})).to(dtype)
    model.energy_scale.fill_(1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = Loss(default_hypers()["training"]["loss"], ("energy", "forces", "virial"))
    per_pass = resolve_atoms_per_pass(atoms_per_pass, torch.device("cpu"))
    batches = [list(range(k, k + batch_size)) for k in range(0, n_structures - batch_size + 1, batch_size)]
    offsets = np.zeros(n_structures)

    def train_step(indices):  # exactly the trainer's step (augmentation included)
        rotations = torch.linalg.qr(torch.randn(len(indices), 3, 3, dtype=torch.float64))[0].to(dtype)
        training_step(model, model, dataset, indices, rotations, loss=loss, optimizer=optimizer, offsets=offsets,
                      per_structure=False, device="cpu", dtype=dtype, atoms_per_pass=per_pass)

    train_step(batches[0])  # warm-up
    with FlopCounterMode(display=False) as counter:
        train_step(batches[0])
    flops = counter.get_total_flops()
    matmul = matmul_rate()

    start = time.perf_counter()
    for k in range(steps):
        train_step(batches[(k + 1) % len(batches)])
    train_time = (time.perf_counter() - start) / steps

    inference_batches = [dataset.batch(b, dtype=dtype) for b in batches]
    model(inference_batches[0], forces=True)
    start = time.perf_counter()
    for k in range(steps):
        model(inference_batches[k % len(batches)], forces=True)
    inference_time = (time.perf_counter() - start) / steps

    neighbours = np.mean([g.num_edges / len(s) for g, s in zip(dataset.graphs, structures)])
    return {
        "config": name,
        "params": count_parameters(model),
        "neighbours": round(float(neighbours), 1),
        "train_struct_s": batch_size / train_time,
        "infer_struct_s": batch_size / inference_time,
        "gflop_step": flops / 1e9,
        "gflop_s": flops / 1e9 / train_time,
        "matmul_gflop_s": matmul,
        "fraction": flops / 1e9 / train_time / matmul,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "matched-4.5"], choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--structures", type=int, default=96)
    parser.add_argument("--precision", type=int, default=32, choices=[32, 64])
    parser.add_argument("--atoms-per-pass", default="auto", help="as the training option (auto = 256 on CPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.structures, args.batch_size, args.steps, args.precision, args.atoms_per_pass)))
        return

    rows = []
    for name in args.configs:
        command = [sys.executable, __file__, "--child", name, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--structures", str(args.structures), "--precision", str(args.precision),
                   "--atoms-per-pass", str(args.atoms_per_pass)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))

    header = ("config", "params", "neighbours", "train_struct_s", "infer_struct_s", "gflop_step", "gflop_s",
              "matmul_gflop_s", "fraction", "peak_gb")
    print(f"NanoPET float{args.precision}, batch {args.batch_size}, atoms_per_pass {args.atoms_per_pass}, "
          f"EMT Cu-Au 32-atom cells, energy+forces+stress, {torch_threads()} threads")
    print(" | ".join(f"{h:>14}" for h in header))
    for row in rows:
        cells = [f"{row[h]:>14.3g}" if isinstance(row[h], float) else f"{row[h]:>14}" for h in header]
        print(" | ".join(cells))
    print(f"metatrain 2026.4.1 `pet` yardstick (cutoff 4.5, same data and machine kind): "
          f"train {METATRAIN['train_structures_per_s']} struct/s, inference {METATRAIN['inference_structures_per_s']} "
          f"struct/s, peak {METATRAIN['peak_memory_gb']} GB")


if __name__ == "__main__":
    main()
