"""Loss and metrics (spec 3.5, 3.7): what the trainer minimises and what every split reports.

- ``loss_terms``: predictions and targets as the loss sees them (energy and virial per atom unless
  ``per_structure_targets``; stress kept aside for its metric);
- ``Loss``: the sum over terms of weight x mse | mae | huber, reduced by mean | sum (a batch's parts add up);
- ``Accumulator``: epoch sums per term, all-reduced in DDP, giving the whole-set loss and the metrics: RMSE and
  MAE per target (stress in GPa) and ``<split>_rmse_gmean`` (each target's RMSE over its spread, geometric mean);
- ``metric_parts``: the metrics as printed (meV/atom, meV/A, GPa).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanopet.data.batch import Batch
from nanopet.errors import InputError
from nanopet.options import loss_type

EV_PER_A3_IN_GPA = 160.21766208
# how metrics are printed (files keep eV/atom, eV/A, GPa): the unit and the factor from the file's value
GMEAN_TERMS = ("energy", "forces", "stress")  # the targets of <split>_rmse_gmean (virial repeats stress)
NO_SKILL_GMEAN = 1.0  # <split>_rmse_gmean of a model that predicts each target's mean over the set: RMSE = spread
SHOWN_UNITS = {"energy": ("meV/atom", 1000.0), "forces": ("meV/A", 1000.0), "virial": ("meV/atom", 1000.0), "stress": ("GPa", 1.0)}


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
# Printed metrics


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


