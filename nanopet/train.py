"""The NanoPET trainer (spec section 3): ``train(options, on_epoch=...) -> TrainResult``.

A plain function that knows nothing about Optuna or Ray: the search drivers pass ``on_epoch``,
which receives ``(epoch, metrics)`` after every epoch and returns True to stop training
cleanly (or raises, e.g. ``optuna.TrialPruned``, which propagates after cleanup).

Deliberate deviations from the reference trainer, for a tuning workbench:
- the validation loss is computed over the whole validation set as one batch would be (sum or
  mean over all elements of each term), so it does not depend on batch_size or on the number of
  batches: trials with different batch sizes are compared and pruned on the same scale;
- every training batch is kept (no drop_last), so a training set smaller than batch_size trains;
- batches are drawn from buckets of similar neighbour count (less padding, same distribution);
- ``num_epochs`` counts total epochs: a resumed run continues up to it, not num_epochs more;
- the saved model (``model.ckpt``) carries the best-validation weights used by the calculator.

The files a run writes (checkpoints, metrics.csv) are nanopet.checkpoints'; the device and the DDP
process group come from nanopet.runtime; the data splits from nanopet.data.splits.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nanopet.checkpoints import CHECKPOINT_FORMAT, append_csv, forget_epochs, load_checkpoint, save_checkpoint
from nanopet.composition import composition_offsets, composition_weights
from nanopet.data.batch import Batch, GraphDataset
from nanopet.data.splits import Data, load_data
from nanopet.errors import InputError, NonFiniteLossError
from nanopet.model import NanoPET
from nanopet.options import loss_type, resolve_options
from nanopet.runtime import Distribution, keep_freed_memory, resolve_atoms_per_pass, select_device, start_distributed

MIN_LEARNING_RATE = 1e-7
GRADIENT_CLIP_NORM = 1.0
BUCKET_BATCHES = 8  # batches per bucket when grouping structures by neighbour count
EV_PER_A3_IN_GPA = 160.21766208
# how metrics are printed (files keep eV/atom, eV/A, GPa): the unit and the factor from the file's value
GMEAN_TERMS = ("energy", "forces", "stress")  # the targets of <split>_rmse_gmean (virial repeats stress)
SHOWN_UNITS = {"energy": ("meV/atom", 1000.0), "forces": ("meV/A", 1000.0), "virial": ("meV/atom", 1000.0), "stress": ("GPa", 1.0)}


# ---------------------------------------------------------------------------------------------
# Baselines fitted on the training set (spec 2.11): the composition baseline is in nanopet.composition


def energy_scale(structures, offsets: np.ndarray) -> float:
    """Typical size of the learned signal: RMS force component, else RMS residual energy per atom."""
    if all(s.forces is not None for s in structures):
        forces = np.concatenate([s.forces.ravel() for s in structures])
        scale = float(np.sqrt(np.mean(forces**2)))
    else:
        residual = np.array([(s.energy - o) / len(s) for s, o in zip(structures, offsets)])
        scale = float(np.sqrt(np.mean(residual**2)))
    return scale if scale > 1e-8 else 1.0


def balance_geometry(model: NanoPET, dataset: GraphDataset, max_structures: int = 64) -> float:
    """Initialisation fitted on the training set: the encoder's first linear layer (on the raw edge vector) scaled
    so that the geometric part of the edge tokens has the RMS of their species part over the training edges.
    At torch's default initialisation it is about 20x smaller on the built-in data (0.024 vs 0.44 on the xtb
    molecules, 0.041 vs 0.38 on the EMT alloy), so the tokens carry almost no geometry, the first predicted forces
    are near zero and stay there for tens of epochs (the force plateau, benchmarks/README.md). Same architecture,
    same parameters; a resumed run loads its weights instead. Returns the factor applied."""
    if len(dataset) == 0:
        return 1.0
    batch = dataset.batch(list(range(min(len(dataset), max_structures))))
    if batch.centers.numel() == 0:
        return 1.0
    edge_cells = batch.cells[batch.structure_index[batch.centers]]
    vectors = batch.positions[batch.neighbors] - batch.positions[batch.centers] + torch.einsum("ei,eij->ej", batch.shifts, edge_cells)
    species = model.species(batch.numbers)
    first, total = model.encoder.vector_mlp[0].weight, 1.0
    with torch.no_grad():
        for _ in range(4):  # the MLP is not linear in its first layer's scale: a few fixed-point steps
            geometry, species_part = model.encoder.token_parts(vectors.to(first.dtype), species[batch.centers], species[batch.neighbors])
            factor = float(species_part.square().mean().sqrt() / geometry.square().mean().sqrt().clamp_min(1e-12))
            first.mul_(factor)
            total *= factor
            if abs(factor - 1.0) < 0.02:
                break
    return total


# ---------------------------------------------------------------------------------------------
# Loss and metrics (spec 3.5, 3.7): energy and virial per atom unless per_structure_targets


@dataclass
class Terms:
    """Predictions and targets of each loss term, normalised as the loss sees them."""

    pairs: dict  # term -> (prediction, target)
    stress: tuple | None = None  # (prediction, target) in eV/A^3 for the stress metric


def loss_terms(predictions: dict, batch: Batch, per_structure: bool) -> Terms:
    atoms = batch.n_atoms.to(predictions["energy"].dtype)
    norm = torch.ones_like(atoms) if per_structure else atoms
    pairs = {"energy": (predictions["energy"] / norm, batch.energy / norm)}
    if "forces" in predictions:
        pairs["forces"] = (predictions["forces"], batch.forces)
    stress = None
    if "stress" in predictions:
        mask = batch.stress_mask
        scale = (batch.volume / norm)[mask][:, None, None]  # virial per atom = stress * V / N
        pairs["virial"] = (predictions["stress"][mask] * scale, batch.stress[mask] * scale)
        stress = (predictions["stress"][mask], batch.stress[mask])
    return Terms(pairs, stress)


class Loss:
    """Sum over terms of weight * l(prediction, target), l = mse | mae | huber, reduced by mean | sum."""

    def __init__(self, config: dict, terms: tuple[str, ...]):
        self.kind, deltas = loss_type(config)
        self.reduction = config["reduction"]
        self.weights = {t: float(config["weights"].get(t, 1.0)) for t in terms}
        self.deltas = {}
        if self.kind == "huber":
            missing = [t for t in terms if t not in deltas]
            if missing:
                raise InputError(
                    f"architecture.training.loss.deltas: huber needs a delta for every loss term; missing {missing} "
                    f"(e.g. deltas: {{energy: 0.01, forces: 0.1, virial: 0.01}})"
                )
            self.deltas = {t: float(deltas[t]) for t in terms}

    def elementwise(self, term: str, prediction, target):
        if self.kind == "mse":
            return F.mse_loss(prediction, target, reduction="none")
        if self.kind == "mae":
            return F.l1_loss(prediction, target, reduction="none")
        return F.huber_loss(prediction, target, reduction="none", delta=self.deltas[term])

    def __call__(self, terms: Terms, counts: dict | None = None) -> torch.Tensor:
        """The loss of ``terms``; with ``counts`` (elements per term of the whole batch) a "mean" divides
        by those instead, so the losses of a batch's parts add up to the loss of the batch."""
        total = 0.0
        for term, (prediction, target) in terms.pairs.items():
            if not self.weights.get(term) or prediction.numel() == 0:
                continue
            values = self.elementwise(term, prediction, target)
            if self.reduction == "sum":
                reduced = values.sum()
            else:
                reduced = values.sum() / counts[term] if counts is not None else values.mean()
            total = total + self.weights[term] * reduced
        return total


def term_counts(dataset: GraphDataset, indices) -> dict:
    """Elements of each loss term in a batch: energies, force components, virial components."""
    structures = [dataset.structures[k] for k in indices]
    return {
        "energy": len(structures),
        "forces": 3 * sum(len(s) for s in structures),
        "virial": 9 * sum(s.stress is not None and bool(s.pbc.all()) for s in structures),
    }


def split_by_atoms(indices, dataset: GraphDataset, atoms_per_pass: int) -> list[list[int]]:
    """Consecutive parts of a batch with at most ``atoms_per_pass`` atoms each (at least one structure)."""
    parts, current, atoms = [], [], 0
    for k in indices:
        n = len(dataset.structures[k])
        if current and atoms + n > atoms_per_pass:
            parts.append(current)
            current, atoms = [], 0
        current.append(int(k))
        atoms += n
    return parts + [current] if current else parts


class Accumulator:
    """Epoch sums (loss, squared and absolute errors, counts) per term; all-reduced in DDP."""

    def __init__(self, loss: Loss):
        self.loss = loss
        self.sums: dict[str, float] = {}

    def add(self, terms: Terms) -> None:
        with torch.no_grad():
            pairs = dict(terms.pairs)
            if terms.stress is not None:
                pairs["stress"] = terms.stress
            for term, (prediction, target) in pairs.items():
                error = (prediction - target).double()
                reference = target.double()
                values = {"sse": (error**2).sum(), "sae": error.abs().sum(), "count": float(error.numel()),
                          "target_sum": reference.sum(), "target_sq": (reference**2).sum()}
                if term in self.loss.weights:
                    values["loss"] = self.loss.elementwise(term, prediction, target).double().sum()
                for name, value in values.items():
                    key = f"{term}.{name}"
                    self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def all_reduce(self) -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(values)
        self.sums = dict(zip(keys, values.tolist()))

    def add_batch_loss(self, value: float) -> None:
        self.sums["batch_loss.sum"] = self.sums.get("batch_loss.sum", 0.0) + value
        self.sums["batch_loss.count"] = self.sums.get("batch_loss.count", 0.0) + 1

    def mean_batch_loss(self) -> float:
        count = self.sums.get("batch_loss.count", 0.0)
        return self.sums["batch_loss.sum"] / count if count else math.nan

    def whole_set_loss(self) -> float:
        """The loss of the whole set as one batch: sum or mean over all elements of each term."""
        total = 0.0
        for term, weight in self.loss.weights.items():
            count = self.sums.get(f"{term}.count", 0.0)
            if weight and count:
                value = self.sums[f"{term}.loss"]
                total += weight * (value / count if self.loss.reduction == "mean" else value)
        return total

    def spread(self, term: str) -> float:
        """The standard deviation of ``term``'s target values (as the loss sees them: energy per atom after the
        composition baseline), over the elements accumulated."""
        count = self.sums.get(f"{term}.count", 0.0)
        if not count:
            return math.nan
        mean = self.sums[f"{term}.target_sum"] / count
        return math.sqrt(max(0.0, self.sums[f"{term}.target_sq"] / count - mean * mean))

    def metrics(self, prefix: str) -> dict:
        """RMSE and MAE per target (stress in GPa), and ``<prefix>_rmse_gmean``: the geometric mean over the targets
        (energy, forces, stress) of RMSE / the set's spread of that target (``spread``). It ranks like metatrain's
        ``rmse_prod`` (the product of the RMSEs) and weighs every target alike whatever its unit."""
        out, relative = {}, []
        for term in ("energy", "forces", "virial", "stress"):
            count = self.sums.get(f"{term}.count", 0.0)
            if count:
                scale = EV_PER_A3_IN_GPA if term == "stress" else 1.0  # stress metrics in GPa
                rmse = math.sqrt(self.sums[f"{term}.sse"] / count)
                out[f"{prefix}_{term}_rmse"] = rmse * scale
                out[f"{prefix}_{term}_mae"] = self.sums[f"{term}.sae"] / count * scale
                spread = self.spread(term)
                if term in GMEAN_TERMS and spread > 0:
                    relative.append(rmse / spread)
        if relative:
            out[f"{prefix}_rmse_gmean"] = math.exp(sum(math.log(max(r, 1e-300)) for r in relative) / len(relative))
        return out


# ---------------------------------------------------------------------------------------------
# Batches, augmentation, and each rank's share of them


def epoch_batches(dataset: GraphDataset, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    """Index batches for one epoch. Shuffled (with ``generator``) in buckets of similar neighbour count,
    or, without a generator, in a fixed order sorted by neighbour count (validation)."""
    n = len(dataset)
    if generator is None:
        order = np.argsort(dataset.max_neighbors, kind="stable")
        return [order[k : k + batch_size] for k in range(0, n, batch_size)]
    order = torch.randperm(n, generator=generator).numpy()
    batches = []
    bucket = batch_size * BUCKET_BATCHES
    for start in range(0, n, bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(dataset.max_neighbors[chunk], kind="stable")]
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in permutation]


def shard(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """Rank's share of an epoch's batches; every rank gets the same count (wrapping around)."""
    if world_size == 1:
        return batches
    per_rank = math.ceil(len(batches) / world_size)
    padded = [batches[k % len(batches)] for k in range(per_rank * world_size)]
    return padded[rank::world_size]


def random_rotations(n: int, generator: torch.Generator, dtype) -> torch.Tensor:
    """n uniform random rotations, each times -1 (inversion) with probability 1/2: (n, 3, 3)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar-uniform on O(3)
    q[:, :, 0] *= torch.sign(torch.det(q))[:, None]  # -> SO(3)
    inversion = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    return (q * inversion[:, None, None]).to(dtype)


def rotate(batch: Batch, rotations: torch.Tensor) -> Batch:
    """Rotate positions, cells and the vector/tensor targets consistently (row vectors: x -> x R^T)."""
    per_atom = rotations[batch.structure_index]
    rotated = copy.copy(batch)
    rotated.positions = torch.einsum("ni,nji->nj", batch.positions, per_atom)
    rotated.cells = batch.cells @ rotations.transpose(1, 2)
    if batch.forces is not None:
        rotated.forces = torch.einsum("ni,nji->nj", batch.forces, per_atom)
    if batch.stress is not None:
        rotated.stress = rotations @ batch.stress @ rotations.transpose(1, 2)
    return rotated


# ---------------------------------------------------------------------------------------------
# The training loop


@dataclass
class TrainResult:
    model: NanoPET  # with the best-validation weights
    history: list[dict]  # one row of metrics per epoch
    best_epoch: int
    best_val_loss: float
    stopped: str  # "completed" | "callback" | "learning_rate"
    output_dir: Path | None = None
    test_metrics: dict = field(default_factory=dict)


def training_step(network, model: NanoPET, dataset: GraphDataset, indices, rotations: torch.Tensor | None, *, loss: Loss,
                  optimizer, offsets, per_structure: bool, device, dtype, atoms_per_pass: int, world_size: int = 1,
                  accumulator: Accumulator | None = None) -> float:
    """One optimizer step on the batch ``indices``: forward and double backward in parts of at most
    ``atoms_per_pass`` atoms with gradients accumulated (the same step as one pass, less memory),
    gradient clipping, Adam. Returns the batch loss; a non-finite loss skips the update."""
    counts = term_counts(dataset, indices)
    parts = split_by_atoms(indices, dataset, atoms_per_pass)
    optimizer.zero_grad(set_to_none=True)
    total, start = 0.0, 0
    for number, part in enumerate(parts):
        batch = dataset.batch(part, dtype=dtype, energy_offsets=offsets)
        if rotations is not None:
            batch = rotate(batch, rotations[start : start + len(part)])
        start += len(part)
        batch = batch.to(device)
        last = number == len(parts) - 1
        # in DDP, gradients are all-reduced once, on the last part
        with contextlib.nullcontext() if (last or world_size == 1) else network.no_sync():
            predictions = network(batch, forces=dataset.has_forces, stress=batch.stress is not None, create_graph=True,
                                  with_composition=False)
            terms = loss_terms(predictions, batch, per_structure)
            part_loss = loss(terms, counts)
            if loss.reduction == "sum" and world_size > 1:
                part_loss = part_loss * world_size  # DDP averages gradients; "sum" must stay a sum
            part_loss.backward()
        total += float(part_loss.detach()) / (world_size if loss.reduction == "sum" else 1)
        if accumulator is not None:
            accumulator.add(terms)
    if math.isfinite(total):
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_CLIP_NORM)
        optimizer.step()
    return total


def evaluate(model: NanoPET, dataset: GraphDataset, batch_size: int, loss: Loss, offsets: np.ndarray,
             per_structure: bool, device, dtype, distribution: Distribution = Distribution()) -> Accumulator:
    """Errors and loss over a whole set, without parameter gradients (forces still by autograd)."""
    accumulator = Accumulator(loss)
    # every batch on exactly one rank: shard()'s wrap-around padding would count structures twice
    for indices in epoch_batches(dataset, batch_size, None)[distribution.rank :: distribution.world_size]:
        batch = dataset.batch(indices, dtype=dtype, energy_offsets=offsets).to(device)
        predictions = model(batch, forces=dataset.has_forces, stress=batch.stress is not None, with_composition=False)
        accumulator.add(loss_terms(predictions, batch, per_structure))
    accumulator.all_reduce()
    return accumulator


def train(options: dict, on_epoch: Callable[[int, dict], bool | None] | None = None, output_dir: str | Path | None = None,
          resume: str | Path | None = None, data: Data | None = None, base_dir: str | Path = ".",
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train NanoPET as ``options`` say; see the module docstring for ``on_epoch``.

    ``output_dir`` receives checkpoints/, model.ckpt and metrics.csv (nothing is written without it); a new
    run (no ``resume``) starts metrics.csv afresh and overwrites model.ckpt and the checkpoints of its epochs.
    ``resume`` continues from a checkpoint exactly (model, optimizer, schedule, epoch, RNG).
    ``data`` reuses already neighbour-listed splits (restricted to this run's cutoff).
    """
    options = resolve_options(options)
    hypers, training = options["architecture"]["model"], options["architecture"]["training"]
    dtype = torch.float64 if options["base_precision"] == 64 else torch.float32
    log = log or print_flush
    keep_freed_memory()
    distribution, device = start_run(options)
    if not distribution.is_main:
        log = lambda message: None  # noqa: E731

    # 3.1-3.4: data, composition baseline, model
    data = (data or load_data(options, base_dir)).at_cutoff(hypers["cutoff"])
    if len(data.train) == 0 or len(data.val) == 0:
        raise InputError("training_set/validation_set: both need at least one structure")
    model, atomic_types, offsets = build_model(options, data, device, dtype)
    network = model
    if distribution.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # 3.5-3.6: loss, optimizer, learning-rate schedule
    atoms_per_pass = resolve_atoms_per_pass(training["atoms_per_pass"], device)
    terms = ("energy",) + (("forces",) if data.train.has_forces else ()) + (("virial",) if data.train.has_stress else ())
    loss = Loss(training["loss"], terms)
    per_structure = "energy" in training["per_structure_targets"]
    optimizer = torch.optim.Adam(model.parameters(), lr=training["learning_rate"])
    schedule = Schedule(optimizer, training, batches_per_epoch(len(data.train), training["batch_size"], distribution.world_size))
    generator = torch.Generator().manual_seed(options["seed"])
    best = BestState(model, optimizer)
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        schedule.load_state_dict(state["scheduler_state_dict"], resume)
        generator.set_state(state["rng_state"])
        best = BestState.from_checkpoint(state)
        history = list(state["history"])
        start_epoch = state["epoch"] + 1
        log(f"resumed from {resume} at epoch {start_epoch}")
    files = RunFiles(output_dir if distribution.is_main else None, resume is not None, start_epoch, training["log_mae"])

    def checkpoint(epoch: int) -> dict:
        return {"format": CHECKPOINT_FORMAT,
                "model": {"hypers": hypers, "atomic_types": atomic_types, "dtype": str(dtype).removeprefix("torch.")},
                "options": options, "epoch": epoch, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": schedule.state_dict(),
                "rng_state": generator.get_state(), **best.checkpoint(), "history": history}

    def check_finite(value: float, where: str, epoch: int):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite {where} loss ({value}) at epoch {epoch} with learning_rate "
                f"{optimizer.param_groups[0]['lr']:.3g}; lower learning_rate or check the data", epoch
            )

    log(f"training NanoPET: {sum(p.numel() for p in model.parameters()):,} parameters, {len(data.train)} train / "
        f"{len(data.val)} val structures, cutoff {hypers['cutoff']} A, {str(dtype).removeprefix('torch.')} on {device}, "
        f"{schedule.describe()}")
    stopped, epoch = "completed", start_epoch - 1
    try:
        for epoch in range(start_epoch, training["num_epochs"]):
            started = time.perf_counter()
            # 3.2-3.5: one pass over the training set, rotated at random, an optimizer step per batch
            model.train()
            train_accumulator = Accumulator(loss)
            batches = shard(epoch_batches(data.train, training["batch_size"], generator), distribution.rank, distribution.world_size)
            for indices in batches:
                rotations = random_rotations(len(indices), generator, dtype) if training["rotational_augmentation"] else None
                batch_loss = training_step(network, model, data.train, indices, rotations, loss=loss, optimizer=optimizer,
                                           offsets=offsets["train"], per_structure=per_structure, device=device, dtype=dtype,
                                           atoms_per_pass=atoms_per_pass, world_size=distribution.world_size,
                                           accumulator=train_accumulator)
                check_finite(batch_loss, "training", epoch)
                train_accumulator.add_batch_loss(batch_loss)
                schedule.after_step()
            train_accumulator.all_reduce()

            # 3.6-3.7: validation, the best state so far, the schedule
            validation = evaluate(model, data.val, training["batch_size"], loss, offsets["val"], per_structure, device, dtype, distribution)
            val_loss = validation.whole_set_loss()
            check_finite(val_loss, "validation", epoch)
            learning_rate = schedule.last_rate
            best.update(epoch, val_loss, model, optimizer)
            if schedule.after_epoch(val_loss):  # plateau: a drop restarts from the best state at the lower rate
                best.restore(model, optimizer, schedule.rate)

            metrics = {"epoch": epoch, "learning_rate": learning_rate, "train_loss": train_accumulator.mean_batch_loss(),
                       "val_loss": val_loss, **train_accumulator.metrics("train"), **validation.metrics("val"),
                       "epoch_time": time.perf_counter() - started}
            history.append(metrics)
            if epoch % training["log_interval"] == 0 or epoch == training["num_epochs"] - 1:
                log(progress_line(metrics, training["num_epochs"], training["log_mae"], per_structure))
                files.log_metrics(metrics)
            if epoch % training["checkpoint_interval"] == 0:
                files.save_epoch(checkpoint(epoch), epoch)

            if callback_stops(on_epoch, epoch, metrics, distribution):
                stopped = "callback"
                break
            if schedule.exhausted:
                stopped = "learning_rate"
                log(f"learning rate fell below {MIN_LEARNING_RATE:g}: stopping at epoch {epoch}")
                break
    finally:
        if training["distributed"] and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    files.save_final(checkpoint(epoch))
    model.load_state_dict(best.model)
    result = TrainResult(model, history, best.epoch, best.loss, stopped, files.folder)
    if len(data.test):
        result.test_metrics = evaluate(model, data.test, training["batch_size"], loss, offsets["test"], per_structure,
                                       device, dtype).metrics("test")
        log("test: " + ", ".join(metric_parts(result.test_metrics, "test", True, per_structure)))
    return result


# ---------------------------------------------------------------------------------------------
# The training loop's bookkeeping


def start_run(options: dict) -> tuple[Distribution, torch.device]:
    """The process group (``distributed: true``) and this process's device."""
    training = options["architecture"]["training"]
    distribution = Distribution()
    device = select_device(str(options["device"]))
    if training["distributed"]:
        distribution = start_distributed(training, device)
        device = select_device(str(options["device"]), distribution.local_rank)
    return distribution, device


def build_model(options: dict, data: Data, device, dtype) -> tuple[NanoPET, list[int], dict]:
    """3.3-3.4: the model with its composition baseline (fitted on the training set), energy scale and
    initialisation, on ``device``; its atomic types; each split's composition offsets."""
    hypers, training = options["architecture"]["model"], options["architecture"]["training"]
    all_structures = data.train.structures + data.val.structures + data.test.structures
    atomic_types = sorted({int(z) for s in all_structures for z in s.numbers})
    torch.manual_seed(options["seed"])
    model = NanoPET(hypers, atomic_types)
    composition = composition_weights(training, data.train.structures, atomic_types)
    offsets = {name: composition_offsets(composition, atomic_types, getattr(data, name).structures) for name in ("train", "val", "test")}
    model.energy_scale.fill_(energy_scale(data.train.structures, offsets["train"]))
    if training["initialisation"] == "balanced":
        balance_geometry(model, data.train)
        # the network's energy starts at exactly 0: no random per-atom offset for the first steps to remove
        torch.nn.init.zeros_(model.last_layer.weight)
    model.to(device=device, dtype=dtype)
    model.composition_weights.copy_(torch.from_numpy(composition))  # after .to(): no float32 round trip in float64 runs
    return model, atomic_types, offsets


def batches_per_epoch(structures: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps a rank takes in one epoch: ``epoch_batches``' count (buckets split into batches), over ranks."""
    bucket = batch_size * BUCKET_BATCHES
    full, rest = divmod(structures, bucket)
    count = full * BUCKET_BATCHES + math.ceil(rest / batch_size)
    return math.ceil(count / world_size) if count else 0


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """The cosine schedule's multiplier of the peak rate at optimizer step ``step`` (0-based): a linear rise over
    ``warmup`` steps, then half a cosine from 1 down to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """The learning-rate schedule of ``training.scheduler``.

    ``cosine`` (the default): a linear warm-up over ``warmup_fraction`` of the run's optimizer steps, then a cosine
    decay to zero at ``num_epochs``, stepped after every optimizer step: the schedule ends where training ends, so
    a run of any length finishes annealed. A resumed run with more ``num_epochs`` stretches it from where it is.
    ``plateau`` (spec 3.6): ReduceLROnPlateau on the validation loss after every epoch; ``after_epoch`` says when the
    rate dropped, and the trainer then restarts from the best state (the patience restarts too)."""

    def __init__(self, optimizer, training: dict, steps_per_epoch: int):
        self.optimizer, self.training, self.kind = optimizer, training, training["scheduler"]
        total = max(1, training["num_epochs"] * steps_per_epoch)
        self.warmup = math.ceil(training["warmup_fraction"] * total)
        self.total = total
        self.scheduler = self._new()
        self.last_rate = self.rate

    def _new(self):
        if self.kind == "cosine":
            warmup, total = self.warmup, self.total
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: cosine_factor(step, warmup, total))
        return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=self.training["scheduler_factor"],
                                                          patience=self.training["scheduler_patience"])

    @property
    def rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def describe(self) -> str:
        if self.kind == "cosine":
            return (f"learning rate {self.training['learning_rate']:.3g}: cosine over {self.total:,} steps "
                    f"({self.warmup:,} of warm-up)")
        return (f"learning rate {self.training['learning_rate']:.3g}: x{self.training['scheduler_factor']:g} after "
                f"{self.training['scheduler_patience']} epochs without a better validation loss")

    @property
    def exhausted(self) -> bool:
        """A plateau schedule whose rate fell below MIN_LEARNING_RATE has converged (spec 3.6: training stops)."""
        return self.kind == "plateau" and self.rate < MIN_LEARNING_RATE

    def after_step(self) -> None:
        self.last_rate = self.rate  # the rate the step just taken used
        if self.kind == "cosine":
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> bool:
        """Step a plateau schedule; True when it lowered the rate (then the scheduler starts afresh)."""
        if self.kind != "plateau":
            return False
        before = self.rate
        self.scheduler.step(val_loss)
        if self.rate < before:
            self.scheduler = self._new()
            return True
        return False

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict, source) -> None:
        plateau = "patience" in state
        if plateau != (self.kind == "plateau"):
            kind = "plateau" if plateau else "cosine"
            raise InputError(f"{source}: trained with scheduler: {kind}; set architecture.training.scheduler: {kind} to resume it")
        self.scheduler.load_state_dict(state)
        self.last_rate = self.rate


class BestState:
    """The weights and optimizer state of the epoch with the lowest validation loss so far (``model.ckpt`` keeps
    them; a plateau drop restarts from them)."""

    def __init__(self, model, optimizer, loss: float = math.inf, epoch: int = -1):
        self.loss, self.epoch = loss, epoch
        self.model, self.optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())

    @classmethod
    def from_checkpoint(cls, state: dict) -> "BestState":
        best = cls.__new__(cls)
        best.loss, best.epoch = state["best_val_loss"], state["best_epoch"]
        best.model, best.optimizer = state["best_model_state_dict"], state["best_optimizer_state_dict"]
        return best

    def update(self, epoch: int, val_loss: float, model, optimizer) -> None:
        if val_loss < self.loss:
            self.__init__(model, optimizer, val_loss, epoch)

    def restore(self, model, optimizer, rate: float) -> None:
        model.load_state_dict(self.model)
        # a copy: Optimizer.load_state_dict keeps the given tensors as its state, and Adam would then update the best
        # state in place
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        for group in optimizer.param_groups:
            group["lr"] = rate

    def checkpoint(self) -> dict:
        return {"best_val_loss": self.loss, "best_epoch": self.epoch, "best_model_state_dict": self.model,
                "best_optimizer_state_dict": self.optimizer}


class RunFiles:
    """What a run writes into ``folder`` (None: nothing, e.g. a rank other than the first): ``metrics.csv`` (a new
    run starts it afresh; a resumed one drops the rows of epochs it trains again), ``checkpoints/model_<epoch>.ckpt``
    and ``model.ckpt``."""

    def __init__(self, folder, resumed: bool, start_epoch: int, log_mae: bool):
        self.folder, self.log_mae = (Path(folder) if folder is not None else None), log_mae
        if self.folder is None:
            return
        (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        if resumed:  # epochs logged after the checkpoint was written (then lost, e.g. a kill) run again
            forget_epochs(self.folder / "metrics.csv", start_epoch)
        else:  # a new run never continues an earlier run's rows
            (self.folder / "metrics.csv").unlink(missing_ok=True)

    def log_metrics(self, metrics: dict) -> None:
        if self.folder is not None:
            append_csv(self.folder / "metrics.csv", metrics, self.log_mae)

    def save_epoch(self, state: dict, epoch: int) -> None:
        if self.folder is not None:
            save_checkpoint(state, self.folder / "checkpoints" / f"model_{epoch}.ckpt")

    def save_final(self, state: dict) -> None:
        if self.folder is not None:
            save_checkpoint(state, self.folder / "model.ckpt")


def callback_stops(on_epoch, epoch: int, metrics: dict, distribution: Distribution) -> bool:
    """Ask ``on_epoch`` (first rank) whether to stop; every rank learns the answer. An exception it raises is
    re-raised on the first rank after the others are told to stop."""
    stop, error = False, None
    if on_epoch is not None and distribution.is_main:
        try:
            stop = bool(on_epoch(epoch, metrics))
        except BaseException as raised:  # noqa: BLE001 - re-raised below, after the other ranks are told
            stop, error = True, raised
    if distribution.world_size > 1:
        flag = torch.tensor([float(stop)])
        torch.distributed.broadcast(flag, src=0)
        stop = bool(flag.item())
    if error is not None:
        raise error
    return stop


# ---------------------------------------------------------------------------------------------
# The cost of an epoch


class StepTimer:
    """Times optimizer steps of resolved ``options`` on batches of ``data``'s training set, as the training loop takes
    them (augmentation, forward and double backward, clipping, Adam): each call takes one step and returns its
    seconds: on a GPU wall-clock, on a CPU this process's CPU time, which other processes on a busy machine do not
    inflate (with one thread a step's CPU time is its time on an idle machine). One untimed step first. ``data`` at
    the options' cutoff (or larger: restricted here)."""

    def __init__(self, options: dict, data: Data):
        training = options["architecture"]["training"]
        self.dtype = torch.float64 if options["base_precision"] == 64 else torch.float32
        self.device = select_device(str(options["device"]))
        self.data = data.at_cutoff(options["architecture"]["model"]["cutoff"])
        self.model, _, offsets = build_model(options, self.data, self.device, self.dtype)
        terms = ("energy",) + (("forces",) if self.data.train.has_forces else ()) + (("virial",) if self.data.train.has_stress else ())
        self.step_settings = {"loss": Loss(training["loss"], terms), "offsets": offsets["train"],
                              "optimizer": torch.optim.Adam(self.model.parameters(), lr=training["learning_rate"]),
                              "per_structure": "energy" in training["per_structure_targets"], "device": self.device,
                              "dtype": self.dtype, "atoms_per_pass": resolve_atoms_per_pass(training["atoms_per_pass"], self.device)}
        self.generator = torch.Generator().manual_seed(options["seed"])
        self.batches = epoch_batches(self.data.train, training["batch_size"], self.generator)
        self.rotate, self.taken = training["rotational_augmentation"], 0
        self()

    def __call__(self) -> float:
        indices = self.batches[self.taken % len(self.batches)]
        self.taken += 1
        rotations = random_rotations(len(indices), self.generator, self.dtype) if self.rotate else None
        clock = time.perf_counter if self.device.type == "cuda" else time.process_time
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = clock()
        training_step(self.model, self.model, self.data.train, indices, rotations, **self.step_settings)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return clock() - started


def training_step_seconds(options: dict, data: Data, steps: int = 3) -> float:
    """Median seconds of one optimizer step of ``options`` on batches of ``data``'s training set, after one untimed
    step (``StepTimer``: CPU time on a CPU). ``options`` resolved; ``data`` at the options' cutoff (or larger)."""
    timer = StepTimer(options, data)
    return float(np.median([timer() for _ in range(steps)]))


def epoch_seconds(options: dict, data: Data, steps: int = 3) -> float:
    """The training time of one epoch of ``options``: ``training_step_seconds`` times the steps of an epoch."""
    training = options["architecture"]["training"]
    return training_step_seconds(options, data, steps) * batches_per_epoch(len(data.train), training["batch_size"])


def epoch_seconds_pair(options: dict, other: dict, data: Data, steps: int = 4) -> tuple[float, float]:
    """``epoch_seconds`` of two resolved options, their steps timed in turn (one of each, ``steps`` times), so that a
    machine whose load changes while they are timed slows both alike."""
    timers = [StepTimer(options, data), StepTimer(other, data)]
    times = [[], []]
    for _ in range(steps):
        for timer, taken in zip(timers, times):
            taken.append(timer())
    return tuple(float(np.median(taken)) * batches_per_epoch(len(data.train), o["architecture"]["training"]["batch_size"])
                 for taken, o in zip(times, (options, other)))


# ---------------------------------------------------------------------------------------------
# Logging (the files a run writes are in nanopet.checkpoints)


def print_flush(message: str) -> None:
    print(message, flush=True)


def progress_line(metrics: dict, num_epochs: int, log_mae: bool, per_structure: bool = False) -> str:
    parts = [f"epoch {metrics['epoch']:>{len(str(num_epochs))}}/{num_epochs}", f"lr {metrics['learning_rate']:.2e}",
             f"train loss {metrics['train_loss']:.4e}", f"val loss {metrics['val_loss']:.4e}"]
    parts += [f"val {part}" for part in metric_parts(metrics, "val", log_mae, per_structure)]
    parts.append(f"{metrics['epoch_time']:.1f} s")
    return ", ".join(parts)


def shown_unit(term: str, per_structure: bool = False) -> tuple[str, float]:
    """The printed unit of a target's metrics and the factor from the file's value (eV/atom -> meV/atom)."""
    unit, factor = SHOWN_UNITS[term]
    if per_structure and term in ("energy", "virial"):
        unit = unit.replace("/atom", "/structure")
    return unit, factor


def metric_parts(metrics: dict, split: str, with_mae: bool, per_structure: bool = False) -> list[str]:
    """``energy RMSE 12.3 MAE 9.8 meV/atom`` for each target of ``split`` in ``metrics``, in printed units."""
    parts = []
    for term in SHOWN_UNITS:
        if f"{split}_{term}_rmse" in metrics:
            unit, factor = shown_unit(term, per_structure)
            text = f"{term} RMSE {metrics[f'{split}_{term}_rmse'] * factor:.4g}"
            if with_mae and f"{split}_{term}_mae" in metrics:
                text += f" MAE {metrics[f'{split}_{term}_mae'] * factor:.4g}"
            parts.append(f"{text} {unit}")
    return parts


