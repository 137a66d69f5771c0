"""The composition baseline (spec 2.11): energy per species, fitted on the training set or given, and the
offsets it makes per structure. One rule for the trainer, ``retrain``'s evaluation and compare-losses' Huber
deltas, so they remove the same baseline.
"""

from __future__ import annotations

import math

import numpy as np

from nanopet.data.dataset import Dataset, species_lookup
from nanopet.errors import InputError
from nanopet.model import composition_features


def fit_composition_weights(structures, atomic_types) -> np.ndarray:
    """Least-squares energy per species (float64) of a list of Structures."""
    counts = composition_features([s.numbers for s in structures], atomic_types)
    return fit_weights(counts, np.array([s.energy for s in structures], dtype=np.float64))


def fit_weights(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Least-squares energy per species from species counts (structures x types) and energies, with the spec's
    escalating ridge for stability."""
    gram, rhs = counts.T @ counts, counts.T @ energies
    ridge = 1e-20
    while ridge <= 1e5:
        try:
            weights = np.linalg.solve(gram + ridge * np.eye(counts.shape[1]), rhs)
            if np.all(np.isfinite(weights)):
                return weights
        except np.linalg.LinAlgError:
            pass
        ridge *= 10
    raise InputError("composition baseline: the least-squares fit failed; check the training energies")


def fixed_composition(fixed: dict, atomic_types) -> np.ndarray | None:
    """``fixed_composition_weights: {energy: {29: -3.5, Au: -3.2}}`` -> weights, or None if not given."""
    from ase.data import atomic_numbers

    if not fixed:
        return None
    if not isinstance(fixed, dict) or not isinstance(fixed.get("energy") or {}, dict):
        raise InputError("architecture.training.fixed_composition_weights: expected {energy: {atomic number or symbol: eV}}")
    unknown = set(fixed) - {"energy"}
    if unknown:
        raise InputError(f"architecture.training.fixed_composition_weights: unknown target(s) {sorted(unknown)}; use energy")
    given = {}
    for key, value in (fixed["energy"] or {}).items():
        z = atomic_numbers.get(key) if isinstance(key, str) and not key.isdigit() else int(key)
        if z is None or z not in atomic_types:
            raise InputError(
                f"architecture.training.fixed_composition_weights.energy.{key}: element not in the dataset "
                f"(atomic numbers present: {list(atomic_types)})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"architecture.training.fixed_composition_weights.energy.{key}: must be a number (eV), got {value!r}")
        given[z] = float(value)
    missing = [z for z in atomic_types if z not in given]
    if missing:
        raise InputError(f"architecture.training.fixed_composition_weights.energy: missing atomic number(s) {missing}; list every species")
    return np.array([given[z] for z in atomic_types])


def composition_weights(training: dict, dataset: Dataset, atomic_types) -> np.ndarray:
    """The baseline of ``architecture.training`` (its ``fixed_composition_weights``), else the fit on ``dataset``
    (the training set)."""
    weights = fixed_composition(training["fixed_composition_weights"], atomic_types)
    return fit_weights(dataset.species_counts(atomic_types), dataset.energies) if weights is None else weights


def composition_offsets(weights: np.ndarray, atomic_types, dataset: Dataset) -> np.ndarray:
    """Each structure's baseline energy: the sum of its atoms' weights."""
    return dataset.atom_sums(weights[species_lookup(atomic_types)[dataset.atom_numbers()]])
