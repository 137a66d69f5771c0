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

from nanopet.checkpoints import CHECKPOINT_FORMAT, append_csv, forget_epochs, load_checkpoint, save_checkpoint
from nanopet.composition import composition_offsets, composition_weights
from nanopet.data.batch import Batch
from nanopet.data.dataset import Dataset
from nanopet.data.splits import Data, load_data
from nanopet.errors import InputError, NonFiniteLossError
from nanopet.loss import Accumulator, Loss, loss_terms, metric_parts
from nanopet.model import NanoPET
from nanopet.options import resolve_options
from nanopet.schedule import MIN_LEARNING_RATE, Schedule
from nanopet.runtime import Distribution, keep_freed_memory, resolve_atoms_per_pass, select_device, start_distributed

GRADIENT_CLIP_NORM = 1.0
BUCKET_BATCHES = 8  # batches per bucket when grouping structures by neighbour count


# ---------------------------------------------------------------------------------------------
# Baselines fitted on the training set (spec 2.11): the composition baseline is in nanopet.composition


def energy_scale(dataset: Dataset, offsets: np.ndarray) -> float:
    """Typical size of the learned signal: RMS force component, else RMS residual energy per atom."""
    if dataset.has_forces:
        forces = dataset.atom_forces().ravel()  # a new array: squared in place, one array of the set's size, not two
        scale = float(np.sqrt(np.mean(np.square(forces, out=forces))))
    else:
        residual = (dataset.energies - offsets) / dataset.n_atoms
        scale = float(np.sqrt(np.mean(residual**2)))
    return scale if scale > 1e-8 else 1.0


def balance_geometry(model: NanoPET, dataset: Dataset, max_structures: int = 64) -> float:
    """Initialisation fitted on the training set: the encoder's first linear layer (on the raw edge vector) scaled
    so that the geometric part of the edge tokens has the RMS of their species part over the training edges.
    At torch's default initialisation it is about 20x smaller on the built-in data (0.024 vs 0.44 on the xtb
    molecules, 0.041 vs 0.38 on the EMT alloy), so the tokens carry almost no geometry, the first predicted forces
    are near zero and stay there for tens of epochs (the force plateau, docs/explanation/trainer.md). Same architecture,
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
# A batch in passes


def term_counts(dataset: Dataset, indices) -> dict:
    """Elements of each loss term in a batch: energies, force components, virial components."""
    indices = np.asarray(indices, dtype=np.int64)
    return {
        "energy": len(indices),
        "forces": 3 * int(dataset.n_atoms[indices].sum()),
        "virial": 9 * int(dataset.stress_mask[indices].sum()),
    }


def split_by_atoms(indices, dataset: Dataset, atoms_per_pass: int) -> list[list[int]]:
    """Consecutive parts of a batch with at most ``atoms_per_pass`` atoms each (at least one structure)."""
    parts, current, atoms = [], [], 0
    for k in indices:
        n = int(dataset.n_atoms[k])
        if current and atoms + n > atoms_per_pass:
            parts.append(current)
            current, atoms = [], 0
        current.append(int(k))
        atoms += n
    return parts + [current] if current else parts


# ---------------------------------------------------------------------------------------------
# Batches, augmentation, and each rank's share of them


def epoch_batches(dataset: Dataset, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
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


def training_step(network, model: NanoPET, dataset: Dataset, indices, rotations: torch.Tensor | None, *, loss: Loss,
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


def evaluate(model: NanoPET, dataset: Dataset, batch_size: int, loss: Loss, offsets: np.ndarray,
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
    atomic_types = data.atomic_types
    torch.manual_seed(options["seed"])
    model = NanoPET(hypers, atomic_types)
    composition = composition_weights(training, data.train, atomic_types)
    offsets = {name: composition_offsets(composition, atomic_types, getattr(data, name)) for name in ("train", "val", "test")}
    model.energy_scale.fill_(energy_scale(data.train, offsets["train"]))
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
