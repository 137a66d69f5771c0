"""The force plateau: epochs and wall-clock to reach a validation force RMSE, per trainer lever.

Trains a quick.yaml-sized NanoPET (cutoff 4.0, d_pet 16, 1 GNN + 1 attention layer, float32,
batch 8) on a built-in set (``--builtin``: the xtb molecules by default, or the EMT alloy) and records the
validation force RMSE after every epoch, once per lever variant (and seed), then prints the epochs and
seconds to reach 1.0, 0.5 and 0.3 eV/A. With ``--mtt``, metatrain's ``pet`` of matching size trains on the
same extxyz.

    python benchmarks/bench_plateau.py --structures 250 --epochs 40 --seeds 0 1 --mtt /work/mtt/bin/mtt
    python benchmarks/bench_plateau.py --structures 250 --epochs 20 --seeds 0 1 --variants "baseline (lr 1e-3)" balanced

Levers are applied inside this process only, for the measurement (the trainer is not changed):
``balanced`` is the trainer's ``initialisation: balanced`` (``balance_geometry``: the encoder's first layer
scaled so the tokens' geometric part has the RMS of their species part; the readout's last layer at zero),
``balanced-batch-4...`` / ``balanced-defaults`` the same with another batch size and learning rate (defaults: the
documented 16 and 3e-4), ``-scale-over-factor`` also divides the energy scale by the balance's factor, ``-warmup-1ep``
and ``-adam-eps-1e-5`` add a warm-up or a larger Adam epsilon;
``vector-x3/x10/x30`` scale the first layer of the edge-vector MLP from torch's default by a fixed factor
instead, ``vector-out-x10`` its last layer;
``no-clip`` lifts the gradient clipping, ``clip-10`` clips at norm 10, ``energy-w0.1`` weights
the energy loss by 0.1, ``scale-x0.1`` / ``scale-x10`` multiply the per-atom energy scale (the
RMS training force), ``warmup-1ep`` ramps the learning rate linearly over the first epoch,
``adam-b2-0.99`` uses Adam's beta2 0.99, ``last-layer-0`` / ``last-layer-x0.1`` initialise the readout's last
layer at zero / a tenth of torch's default, ``energy-w0.01`` weights the energy by 0.01, ``batch-2`` the batch size,
``lr-3e-3`` / ``lr-3e-4`` the learning rate. Two diagnostics that are not levers: ``no-rotations``
(no random rotations: is the plateau the time to learn rotational symmetry?) and ``d_pet-64-2+2``
(a larger model).
First, the diagnosis: the gradient norm before clipping in the first epoch, the share of the
energy and force terms in it (each term alone, at learning rate 1e-30), and the initial prediction's
force RMS against the targets'.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

THRESHOLDS = (1.0, 0.5, 0.3)  # eV/A
MODEL = {"cutoff": 4.0, "d_pet": 16, "num_heads": 2, "num_gnn_layers": 1, "num_attention_layers": 1}
LEARNING_RATE = 1e-3
BATCH_SIZE = 8


def options(data: Path, epochs: int, seed: int, learning_rate: float = LEARNING_RATE, weights: dict | None = None,
            training: dict | None = None, model: dict | None = None) -> dict:
    training = {"batch_size": BATCH_SIZE, "num_epochs": epochs, "learning_rate": learning_rate, "log_interval": 1000,
                "checkpoint_interval": 100000, "scheduler_patience": 100, **(training or {})}
    if weights:
        training["loss"] = {"weights": weights}
    return {
        "seed": seed, "device": "cpu", "base_precision": 32,
        "training_set": {"systems": {"read_from": str(data), "length_unit": "angstrom"},
                         "targets": {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"}}}},
        "validation_set": 0.2, "test_set": 0.0,
        "architecture": {"model": {**MODEL, **(model or {})}, "training": training},
    }


@contextlib.contextmanager
def clip_norm(value: float):
    trainer = importlib.import_module("nanopet.train")  # the package's `train` attribute is the function

    saved = trainer.GRADIENT_CLIP_NORM
    trainer.GRADIENT_CLIP_NORM = value
    try:
        yield
    finally:
        trainer.GRADIENT_CLIP_NORM = saved


@contextlib.contextmanager
def scaled_energy(factor: float):
    trainer = importlib.import_module("nanopet.train")  # the package's `train` attribute is the function

    saved = trainer.energy_scale
    trainer.energy_scale = lambda structures, offsets: factor * saved(structures, offsets)
    try:
        yield
    finally:
        trainer.energy_scale = saved


@contextlib.contextmanager
def scaled_init(weight_of, factor: float):
    """The layer ``weight_of(model)`` returns initialised at ``factor`` times torch's default (0: zeros)."""
    trainer = importlib.import_module("nanopet.train")
    original = trainer.NanoPET

    class NanoPET(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                weight_of(self).mul_(factor)

    trainer.NanoPET = NanoPET
    try:
        yield
    finally:
        trainer.NanoPET = original


def last_layer_init(factor: float):
    """The readout's last linear layer at ``factor`` times torch's default."""
    return scaled_init(lambda model: model.last_layer.weight, factor)


def vector_init(factor: float, layer: int = 0):
    """A linear layer of the encoder's edge-vector MLP (0: the first, on the raw vector in A; -1: the last) at
    ``factor`` times torch's default."""
    return scaled_init(lambda model: model.encoder.vector_mlp[layer].weight, factor)


@contextlib.contextmanager
def adam(steps_of_warmup: int = 0, **settings):
    """torch.optim.Adam replaced by one with a linear learning-rate warm-up and/or other settings."""
    original = torch.optim.Adam

    class Adam(original):
        def __init__(self, params, **kwargs):
            super().__init__(params, **{**kwargs, **settings})
            self.steps_done = 0

        def step(self, closure=None):
            factor = min(1.0, (self.steps_done + 1) / steps_of_warmup) if steps_of_warmup else 1.0
            saved = [group["lr"] for group in self.param_groups]
            for group in self.param_groups:
                group["lr"] *= factor
            try:
                return super().step(closure)
            finally:
                for group, lr in zip(self.param_groups, saved):
                    group["lr"] = lr
                self.steps_done += 1

    torch.optim.Adam = Adam
    try:
        yield
    finally:
        torch.optim.Adam = original


@contextlib.contextmanager
def scale_over_balance():
    """``initialisation: balanced`` with the per-atom energy scale divided by the factor the balance applied to the
    first layer (the network's sensitivity to positions grows by about that factor; this keeps its first forces'
    scale)."""
    trainer = importlib.import_module("nanopet.train")
    original = trainer.balance_geometry

    def balance_geometry(model, dataset, *args, **kwargs):
        factor = original(model, dataset, *args, **kwargs)
        with torch.no_grad():
            model.energy_scale.div_(factor)
        return factor

    trainer.balance_geometry = balance_geometry
    try:
        yield
    finally:
        trainer.balance_geometry = original


@contextlib.contextmanager
def recorded_gradient_norms(norms: list):
    """Record the total gradient norm before clipping (what clip_grad_norm_ returns) at every step."""
    original = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        norm = original(parameters, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = clip
    try:
        yield
    finally:
        torch.nn.utils.clip_grad_norm_ = original


def balanced(batch_size: int, learning_rate: float = LEARNING_RATE, context=contextlib.nullcontext) -> tuple:
    """A variant with ``initialisation: balanced`` at this batch size and learning rate."""
    return {"training": {"initialisation": "balanced", "batch_size": batch_size}, "learning_rate": learning_rate}, context


def variants(n_train: int) -> dict:
    """name -> (option overrides, context manager factory)."""
    steps_per_epoch = max(1, n_train // BATCH_SIZE)
    return {
        "baseline (lr 1e-3)": ({}, contextlib.nullcontext),
        "balanced": ({"training": {"initialisation": "balanced"}}, contextlib.nullcontext),
        "balanced-lr-3e-3": ({"training": {"initialisation": "balanced"}, "learning_rate": 3e-3}, contextlib.nullcontext),
        "balanced-batch-4": balanced(4),
        "balanced-batch-4-lr-5e-4": balanced(4, 5e-4),
        "balanced-batch-4-lr-3e-3": balanced(4, 3e-3),
        "balanced-batch-2-lr-5e-4": balanced(2, 5e-4),
        "balanced-defaults": balanced(16, 3e-4),
        "balanced-batch-4-scale-over-factor": balanced(4, context=scale_over_balance),
        "balanced-batch-4-warmup-1ep": balanced(4, context=lambda: adam(steps_of_warmup=max(1, n_train // 4))),
        "balanced-batch-4-adam-eps-1e-5": balanced(4, context=lambda: adam(eps=1e-5)),
        "last-layer-0": ({}, lambda: last_layer_init(0.0)),
        "no-clip": ({}, lambda: clip_norm(math.inf)),
        "clip-10": ({}, lambda: clip_norm(10.0)),
        "energy-w0.1": ({"weights": {"energy": 0.1}}, contextlib.nullcontext),
        "scale-x0.1": ({}, lambda: scaled_energy(0.1)),
        "scale-x10": ({}, lambda: scaled_energy(10.0)),
        "last-layer-x0.1": ({}, lambda: last_layer_init(0.1)),
        "energy-w0.01": ({"weights": {"energy": 0.01}}, contextlib.nullcontext),
        "warmup-1ep": ({}, lambda: adam(steps_of_warmup=steps_per_epoch)),
        "adam-b2-0.99": ({}, lambda: adam(betas=(0.9, 0.99))),
        "no-rotations": ({"training": {"rotational_augmentation": False}}, contextlib.nullcontext),
        "d_pet-64-2+2": ({"model": {"d_pet": 64, "num_gnn_layers": 2, "num_attention_layers": 2, "num_heads": 4}},
                         contextlib.nullcontext),
        "vector-x3": ({}, lambda: vector_init(3.0)),
        "vector-x10": ({}, lambda: vector_init(10.0)),
        "vector-x30": ({}, lambda: vector_init(30.0)),
        "vector-out-x10": ({}, lambda: vector_init(10.0, -1)),
        "vector-x10-batch-2": ({"training": {"batch_size": 2}}, lambda: vector_init(10.0)),
        "batch-2": ({"training": {"batch_size": 2}}, contextlib.nullcontext),
        "batch-2-lr-3e-3": ({"training": {"batch_size": 2}, "learning_rate": 3e-3}, contextlib.nullcontext),
        "lr-3e-3": ({"learning_rate": 3e-3}, contextlib.nullcontext),
        "lr-3e-4": ({"learning_rate": 3e-4}, contextlib.nullcontext),
    }


def train_curve(data: Path, epochs: int, seed: int, overrides: dict, context, model: list | None = None,
                budget: float | None = None):
    """Validation force RMSE and seconds since the start of train() after every epoch (and the
    trained model appended to ``model``, if given); ``budget``: stop after the epoch that passes these seconds."""
    from nanopet.train import train

    curve, stamps = [], []
    start = time.perf_counter()

    def on_epoch(epoch, metrics):
        curve.append(metrics["val_forces_rmse"])
        stamps.append(time.perf_counter() - start)
        return budget is not None and stamps[-1] >= budget

    with context():
        result = train(options(data, epochs, seed, **overrides), on_epoch=on_epoch, log=lambda line: None)
    if model is not None:
        model.append(result.model)
    return curve, stamps


def diagnose(data: Path, seed: int) -> None:
    """Gradient norms before clipping in epoch 1, by loss term (learning rate 1e-30: no update), and the initial force prediction."""
    import ase.io

    frames = ase.io.read(data, ":")
    target_rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2)))
    rows, models = [], []
    for label, overrides in (("both terms", {}), ("energy only", {"weights": {"forces": 0.0}}),
                             ("forces only", {"weights": {"energy": 0.0}})):
        norms: list[float] = []
        with recorded_gradient_norms(norms):
            curve, _ = train_curve(data, 1, seed, {"learning_rate": 1e-30, **overrides}, contextlib.nullcontext, models)
        rows.append((label, np.median(norms), np.max(norms), curve[0]))
    norms = []
    with recorded_gradient_norms(norms):
        curve, _ = train_curve(data, 3, seed, {}, contextlib.nullcontext)
    steps = len(norms) // 3
    print("diagnosis (learning rate 1e-30: the untrained model on every batch of epoch 1)")
    print(f"{'loss terms':>12} | {'median |grad|':>13} | {'max |grad|':>10} | {'val force RMSE':>14}")
    for label, median, largest, rmse in rows:
        print(f"{label:>12} | {median:>13.3g} | {largest:>10.3g} | {rmse:>14.4g}")
    force_rms, energy_mean = initial_outputs(models[0], frames)
    print(f"target force RMS {target_rms:.4g} eV/A; the untrained model: force RMS {force_rms:.3g} eV/A, "
          f"per-atom network energy {energy_mean:+.3g} eV on average (the composition baseline is already subtracted)")
    print("baseline, lr 1e-3, gradient norm before clipping, median per epoch: "
          + ", ".join(f"{np.median(norms[k * steps:(k + 1) * steps]):.3g}" for k in range(3))
          + f"; steps clipped (norm > 1): {sum(n > 1 for n in norms)}/{len(norms)}; val force RMSE "
          + ", ".join(f"{v:.3f}" for v in curve))


def initial_outputs(model, frames) -> tuple[float, float]:
    """RMS of the predicted force components and mean network energy per atom over ``frames``."""
    from nanopet.data import Structure
    from nanopet.data.batch import GraphDataset

    structures = [Structure.from_atoms(a, energy=a.get_potential_energy(), forces=a.get_forces()) for a in frames]
    dataset = GraphDataset(structures, model.cutoff)
    batch = dataset.batch(list(range(len(dataset))))
    out = model(batch, forces=True, with_composition=False)
    counts = np.array([len(a) for a in frames])
    return float(out["forces"].detach().pow(2).mean().sqrt()), float(np.mean(out["energy"].detach().numpy() / counts))


def mtt_curve(mtt: str, data: Path, epochs: int, seed: int, work: Path, budget: float | None = None) -> tuple[list[float], list[float]]:
    """metatrain pet of matching size on the same file: per-epoch validation force RMSE and seconds (``budget``:
    stopped after these seconds, its log read as it stands)."""
    hypers = {"cutoff": MODEL["cutoff"], "d_pet": MODEL["d_pet"], "d_head": MODEL["d_pet"], "d_node": 2 * MODEL["d_pet"],
              "d_feedforward": 4 * MODEL["d_pet"], "num_heads": MODEL["num_heads"],
              "num_gnn_layers": MODEL["num_gnn_layers"], "num_attention_layers": MODEL["num_attention_layers"]}
    config = options(data, epochs, seed)
    config["architecture"] = {"name": "pet", "model": hypers,
                              "training": {"batch_size": BATCH_SIZE, "num_epochs": epochs, "learning_rate": LEARNING_RATE,
                                           "log_interval": 1, "checkpoint_interval": 100000}}
    del config["device"]
    (work / f"mtt-{seed}.yaml").write_text(yaml.safe_dump(config))
    try:
        done = subprocess.run([mtt, "train", f"mtt-{seed}.yaml", "-o", f"mtt-{seed}.pt"], cwd=work, capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=budget)
        log = done.stdout + done.stderr
        if done.returncode:
            sys.exit(f"mtt train failed:\n{log[-3000:]}")
    except subprocess.TimeoutExpired as stopped:  # the budget is spent: what it logged so far
        log = "".join(part.decode() if isinstance(part, bytes) else (part or "") for part in (stopped.stdout, stopped.stderr))
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
              for m in re.finditer(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]\[INFO\] - Epoch:", log)]
    curve = [float(v) / 1000 for v in re.findall(r"validation forces RMSE:\s+([\d.]+) meV/", log)]
    # seconds: log stamps (1 s resolution) from the first epoch's line, plus one epoch for the first
    first = (stamps[1] - stamps[0]).total_seconds() if len(stamps) > 1 else 0.0
    return curve, [first + (s - stamps[0]).total_seconds() for s in stamps][: len(curve)]


def reached(curve: list[float], stamps: list[float], threshold: float) -> str:
    for epoch, (value, seconds) in enumerate(zip(curve, stamps), start=1):
        if value <= threshold:
            return f"{epoch} ({seconds:.0f} s)"
    return "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builtin", default="xtb-molecules", choices=["xtb-molecules", "emt-alloy"])
    parser.add_argument("--structures", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="*", help="lever variants to run (default: all; none: only --mtt)")
    parser.add_argument("--budget-minutes", type=float, help="stop every run after this wall time (a compute budget)")
    parser.add_argument("--mtt", help="the mtt executable of a venv with metatrain[pet]")
    parser.add_argument("--no-diagnosis", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from nanopet.data import write_builtin_dataset

    work = Path(tempfile.mkdtemp(prefix="nanopet-plateau-"))
    data = write_builtin_dataset(args.builtin, work / f"{args.builtin}.xyz", args.structures, seed=0, show_progress=False)
    n_train = args.structures - round(0.2 * args.structures)
    print(f"{args.structures} {args.builtin} structures ({n_train} train), cutoff {MODEL['cutoff']}, d_pet {MODEL['d_pet']}, "
          f"1+1 layers, float32, batch {BATCH_SIZE}, {args.epochs} epochs, seeds {args.seeds}", flush=True)
    if not args.no_diagnosis:
        diagnose(data, args.seeds[0])

    table = variants(n_train)
    chosen = list(table) if args.variants is None else args.variants
    budget = None if args.budget_minutes is None else 60 * args.budget_minutes
    rows = []
    for name in chosen:
        overrides, context = table[name]
        for seed in args.seeds:
            curve, stamps = train_curve(data, args.epochs, seed, overrides, context, budget=budget)
            rows.append((name, seed, curve, stamps))
            print(f"  {name} seed {seed}: " + " ".join(f"{v:.3f}" for v in curve), flush=True)
    if args.mtt:
        for seed in args.seeds:
            curve, stamps = mtt_curve(args.mtt, data, args.epochs, seed, work, budget=budget)
            rows.append(("metatrain pet", seed, curve, stamps))
            print(f"  metatrain pet seed {seed}: " + " ".join(f"{v:.3f}" for v in curve), flush=True)

    header = " | ".join(f"{'to ' + format(t, 'g') + ' eV/A':>13}" for t in THRESHOLDS)
    print(f"\n{'variant':>34} | {'seed':>4} | {header} | {'final':>6} | {'best':>6} | {'s/epoch':>7}")
    for name, seed, curve, stamps in rows:
        if not curve:
            print(f"{name:>34} | {seed:>4} | no epochs parsed from its log")
            continue
        cells = " | ".join(f"{reached(curve, stamps, t):>13}" for t in THRESHOLDS)
        per_epoch = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
        print(f"{name:>34} | {seed:>4} | {cells} | {curve[-1]:>6.3f} | {min(curve):>6.3f} | {per_epoch:>7.2f}")
    print("cells: epochs (seconds since the start of training) to the first validation force RMSE at or below the threshold")


if __name__ == "__main__":
    main()
