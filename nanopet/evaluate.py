"""``nanopet-tune eval``: a model's predictions and errors on a user's own structures.

The model is a checkpoint (run here, in batches, by the trainer's own code) or an exported metatomic
``model.pt`` (run by metatomic's ASE calculator, a client this package did not write). Errors are
summed by the trainer's ``loss_terms``/``Accumulator`` and printed with retrain's units and names, so
``eval`` of a checkpoint on its test set reports the numbers ``retrain`` does (energy per atom). A large
DATA file is read prepared on disk as ``load_data`` reads it; predictions are written one frame at a time.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from nanopet.data.batch import GraphDataset
from nanopet.data.dataset import Dataset
from nanopet.data.structure import Structure
from nanopet.errors import InputError

PROGRESS_SECONDS = 5.0  # a progress line at most this often on long sets
SHOWN_TARGETS = ("energy", "forces", "stress", "virial")


@dataclass
class Prediction:
    energy: float  # eV
    forces: np.ndarray  # (n, 3) eV/A
    energies: np.ndarray | None  # (n,) per-atom energies, eV
    stress: np.ndarray | None  # (3, 3) eV/A^3 (ASE sign), periodic structures only


# ---------------------------------------------------------------------------------------------
# Data


def read_dataset(path: str | Path, cutoff: float) -> tuple[str, Dataset]:
    """(name, dataset at ``cutoff``) of DATA: a structure file (prepared on disk when large, as ``load_data``
    decides), or an options.yaml whose ``test_set`` is used. Frames without an energy are read unlabelled (in
    memory): they get predictions, not errors."""
    from nanopet.data.splits import open_dataset, read_data
    from nanopet.options import resolve_options

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix in (".yaml", ".yml"):
        try:
            options = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        test = read_data(resolve_options(options), path.parent, cutoff).test
        if not len(test):
            raise InputError(f"{path}: test_set is empty; give it a file or a fraction (e.g. test_set: 0.1)")
        return f"{path} test_set", test
    try:
        return str(path), open_dataset(str(path), ".", cutoff, str(path))
    except InputError as error:
        if "energy key" not in str(error) or "not found" not in str(error):
            raise
    return str(path), GraphDataset(read_unlabelled(path), cutoff)


def read_unlabelled(path: Path) -> list[Structure]:
    from nanopet.data.frames import read_frames

    structures = []
    for index, atoms in enumerate(read_frames(path)):
        source = f"{path}:{index}"
        for what, values in (("positions", atoms.positions), ("cell", atoms.cell.array)):
            if not np.isfinite(values).all():
                raise InputError(f"{source}: {what} are not finite (NaN or inf)")
        if len(atoms) == 0:
            raise InputError(f"{source}: structure has no atoms")
        structures.append(Structure.from_atoms(atoms, source=source))
    return structures


def check_species(dataset: Dataset, atomic_types: list[int], model_path: Path) -> None:
    known = set(int(t) for t in atomic_types)
    present = dataset.atomic_types
    if set(present) <= known:
        return
    counts = dataset.species_counts(present)
    unknown_columns = [c for c, z in enumerate(present) if z not in known]
    first = int(np.flatnonzero(counts[:, unknown_columns].sum(axis=1))[0])
    unknown = [present[c] for c in unknown_columns if counts[first, c]]
    from ase.data import chemical_symbols

    names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
    raise InputError(f"{dataset.structure(first).source}: species {names} unknown to {model_path} (trained on {sorted(known)})")


# ---------------------------------------------------------------------------------------------
# Models


class Progress:
    """'eval: 1200/5000 structures' on stderr, at most every PROGRESS_SECONDS."""

    def __init__(self, total: int, out: Callable[[str], None] | None):
        self.total, self.done, self.out, self.last = total, 0, out, time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        if self.out is not None and time.monotonic() - self.last > PROGRESS_SECONDS and self.done < self.total:
            self.out(f"eval: {self.done}/{self.total} structures")
            self.last = time.monotonic()


def checkpoint_predictions(model, dataset: Dataset, batch_size: int, progress: Progress) -> list[Prediction]:
    """The trainer's batches and model: energies (with composition), forces, per-atom energies, stress."""
    from nanopet.train import epoch_batches

    dtype = next(model.parameters()).dtype
    results: list[Prediction | None] = [None] * len(dataset)
    for indices in epoch_batches(dataset, batch_size, None):
        batch = dataset.batch(indices, dtype=dtype)
        periodic = dataset.periodic[indices]
        out = model(batch, forces=True, stress=bool(periodic.any()))
        with torch.no_grad():
            per_atom = model.atomic_energies(batch.positions, batch.cells, batch)
            per_atom = per_atom + model.composition_weights[model.species(batch.numbers)]
        sizes = batch.n_atoms.tolist()
        for position, (k, forces, energies) in enumerate(zip(indices, out["forces"].split(sizes), per_atom.split(sizes))):
            stress = out["stress"][position].double().numpy() if periodic[position] else None
            results[k] = Prediction(float(out["energy"][position].double()), forces.double().numpy(),
                                    energies.double().numpy(), stress)
        progress.advance(len(indices))
    return results


def metatomic_predictions(model, dataset: Dataset, batch_size: int, progress: Progress) -> list[Prediction]:
    """metatomic's ASE calculator on the exported model, ``batch_size`` structures a call (periodic and
    open structures in separate calls: the calculator computes stress only when all are periodic)."""
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(model)
    results: list[Prediction | None] = [None] * len(dataset)
    for periodic in (True, False):
        chosen = np.flatnonzero(dataset.periodic == periodic).tolist()
        for start in range(0, len(chosen), batch_size):
            indices = chosen[start : start + batch_size]
            out = calculator.compute_energy([dataset.structure(k).to_atoms() for k in indices], compute_forces_and_stresses=True,
                                            per_atom=True)
            for position, k in enumerate(indices):
                stress = np.asarray(out["stress"][position]).reshape(3, 3) if periodic else None
                results[k] = Prediction(float(out["energy"][position]), np.asarray(out["forces"][position]),
                                        np.asarray(out["energies"][position]), stress)
            progress.advance(len(indices))
    return results


def load_model(path: Path) -> tuple[object, bool, list[int], float]:
    """(model, is_metatomic, atomic types, cutoff) of a checkpoint or an exported metatomic .pt."""
    if path.suffix != ".pt":
        from nanopet.checkpoints import model_from_checkpoint

        model = model_from_checkpoint(path).eval()
        return model, False, list(model.atomic_types), model.cutoff
    from metatomic.torch import load_atomistic_model

    try:
        model = load_atomistic_model(str(path))
        atomic_types = list(model.capabilities().atomic_types)
    except Exception as error:  # noqa: BLE001 - whatever torch.jit.load says, the file is not a model for us
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: not a metatomic model ({first})") from None
    cutoff = max([options.cutoff for options in model.requested_neighbor_lists()] + [1.0])
    return model, True, atomic_types, float(cutoff)


# ---------------------------------------------------------------------------------------------
# Errors


def error_metrics(dataset: Dataset, predictions: list[Prediction], batch_size: int) -> dict:
    """RMSE and MAE per target over the labelled structures, with the trainer's own sums (energy per atom,
    stress in GPa): {"test_energy_rmse": ..., ...}."""
    from nanopet.loss import Accumulator, Loss, loss_terms

    labelled = np.flatnonzero(~np.isnan(dataset.energies))
    if not len(labelled):
        return {}
    dataset = dataset.subset(labelled)
    accumulator = Accumulator(Loss({"type": "mse", "reduction": "mean", "weights": {}}, ()))
    for start in range(0, len(labelled), batch_size):
        indices = list(range(start, min(start + batch_size, len(labelled))))
        batch = dataset.batch(indices, dtype=torch.float64)
        chosen = [predictions[labelled[k]] for k in indices]
        out = {"energy": torch.tensor([p.energy for p in chosen], dtype=torch.float64)}
        if batch.forces is not None:
            out["forces"] = torch.from_numpy(np.concatenate([p.forces for p in chosen]))
        if batch.stress is not None:
            out["stress"] = torch.from_numpy(np.stack([p.stress if p.stress is not None else np.zeros((3, 3))
                                                       for p in chosen]))
        accumulator.add(loss_terms(out, batch, per_structure=False))
    return accumulator.metrics("test")


def metric_table(name: str, dataset: Dataset, metrics: dict) -> list[str]:
    from nanopet.runs import describe_metric, shown, unit_of

    n_labelled = int((~np.isnan(dataset.energies)).sum())
    head = f"{name}: {len(dataset)} structures, {int(dataset.n_atoms.sum())} atoms, {n_labelled} labelled"
    lines = [head, f"  {'':<28} {'RMSE':>10} {'MAE':>10}"]
    for target in SHOWN_TARGETS:
        rmse, mae = f"test_{target}_rmse", f"test_{target}_mae"
        if rmse in metrics:
            label = f"{describe_metric(rmse)[:-5]} ({unit_of(rmse, display=True)})"
            lines.append(f"  {label:<28} {shown(metrics[rmse], rmse):>10} {shown(metrics[mae], mae):>10}")
    if len(lines) == 2:
        lines.append("  no labels: predictions only")
    return lines


# ---------------------------------------------------------------------------------------------
# The command


def write_predictions(handle, dataset: Dataset, predictions: list[Prediction]) -> None:
    """Append each structure with its predictions to ``handle`` as extended XYZ, one frame at a time."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    for k, prediction in enumerate(predictions):
        atoms = dataset.structure(k).to_atoms()
        results = {"energy": prediction.energy, "forces": prediction.forces}
        if prediction.energies is not None:
            results["energies"] = prediction.energies
        if prediction.stress is not None:
            results["stress"] = prediction.stress
        atoms.calc = SinglePointCalculator(atoms, **results)
        ase.io.write(handle, atoms, format="extxyz")


def evaluate_model(model_path: str | Path, data: list[str | Path], output: str | Path | None = None, batch_size: int = 16,
                   out: Callable[[str], None] = print, progress: Callable[[str], None] | None = None) -> dict:
    """``nanopet-tune eval``: predictions and error tables of a .ckpt or exported .pt on each DATA; returns
    {dataset name: metrics}. With ``output``, all predictions are written there as extended XYZ."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputError(f"{model_path}: no such model file")
    if progress is None:
        progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    output = Path(output) if output is not None else None
    if output is not None and not output.parent.is_dir():
        raise InputError(f"{output}: cannot write predictions (no folder {output.parent})")
    model, is_metatomic, atomic_types, cutoff = load_model(model_path)
    datasets = [read_dataset(path, cutoff) for path in data]
    for _, dataset in datasets:  # every problem is found before anything runs or is written
        check_species(dataset, atomic_types, model_path)

    all_metrics = {}
    temporary = output.with_name(output.name + ".tmp") if output is not None else None
    try:
        with open(temporary, "w") if temporary is not None else contextlib.nullcontext() as handle:
            for name, dataset in datasets:
                tracker = Progress(len(dataset), progress)
                if is_metatomic:
                    predictions = metatomic_predictions(model, dataset, batch_size, tracker)
                else:
                    predictions = checkpoint_predictions(model, dataset, batch_size, tracker)
                metrics = error_metrics(dataset, predictions, batch_size)
                for line in metric_table(name, dataset, metrics):
                    out(line)
                all_metrics[name] = metrics
                if handle is not None:
                    write_predictions(handle, dataset, predictions)
        if output is not None:
            temporary.replace(output)
            out(f"predictions: {output}")
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    return all_metrics
