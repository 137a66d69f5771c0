"""What the trainer reads of a set of labelled structures, in memory or prepared on disk: ``Dataset``.

Two kinds give the same interface and the same batches, bit for bit: ``GraphDataset`` (``nanopet.data.batch``:
Structures and their neighbour lists as Python objects, for small sets, the calculator and the tests) and
``PreparedDataset`` (``nanopet.data.prepared``: flat arrays memory-mapped from a prepared folder, for sets of any
size). The trainer and the baselines use only what is listed here, as arrays over the set's structures (or
atoms), never a list of per-structure objects.

Per structure (arrays of ``len(dataset)``): ``n_atoms``, ``energies`` (NaN where unlabelled), ``periodic`` (in
all three directions), ``stress_mask`` (a stress label on a periodic structure), ``max_neighbors`` (at the set's
cutoff); ``has_forces`` (every
structure), ``has_stress`` (any structure). Per atom, the set's atoms in order, as new arrays:
``atom_numbers()``, ``atom_forces()``. Then ``stresses()``, ``volumes()``, ``structure(k)`` (one Structure, for messages and
output), ``batch(indices, ...)``, ``subset(indices)``, ``restrict(cutoff)``, ``at_cutoff(cutoff)``.
"""

from __future__ import annotations

import math

import numpy as np


class Dataset:
    """A set of labelled structures with neighbour lists at ``cutoff``; see the module docstring."""

    cutoff: float
    n_atoms: np.ndarray
    energies: np.ndarray
    periodic: np.ndarray
    stress_mask: np.ndarray
    max_neighbors: np.ndarray
    has_forces: bool
    has_stress: bool

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def atomic_types(self) -> list[int]:
        """The atomic numbers present, sorted."""
        return [int(z) for z in np.flatnonzero(np.bincount(self.atom_numbers(), minlength=1))]

    def species_counts(self, atomic_types) -> np.ndarray:
        """Atoms of each of ``atomic_types`` per structure, (len, types) float64: the composition fit's design matrix."""
        lookup = species_lookup(atomic_types)
        structure = np.repeat(np.arange(len(self)), self.n_atoms)
        types = len(atomic_types)
        counts = np.bincount(structure * types + lookup[self.atom_numbers()], minlength=len(self) * types)
        return counts.reshape(len(self), types).astype(np.float64)

    def atom_sums(self, values: np.ndarray) -> np.ndarray:
        """The sum of a per-atom value (in the order of ``atom_numbers()``) over each structure's atoms, rounded as
        numpy rounds the sum of that structure's own array: structures of one size at once, one row each."""
        sums = np.zeros(len(self), dtype=values.dtype)
        first = np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64)
        for size in np.unique(self.n_atoms):
            chosen = np.flatnonzero(self.n_atoms == size)
            sums[chosen] = values[first[chosen, None] + np.arange(size)].sum(axis=1)
        return sums

    def at_cutoff(self, cutoff: float) -> "Dataset":
        """This set at ``cutoff``: itself at (nearly) its own cutoff, the lists filtered by distance below it."""
        if cutoff > self.cutoff + 1e-9:
            return self.widened(cutoff)
        return self if math.isclose(self.cutoff, cutoff) else self.restrict(cutoff)

    def widened(self, cutoff: float) -> "Dataset":
        """The same structures with neighbour lists at a larger ``cutoff`` (computed anew)."""
        raise NotImplementedError

    def restrict(self, cutoff: float) -> "Dataset":
        raise NotImplementedError

    def atom_numbers(self) -> np.ndarray:
        raise NotImplementedError


def species_lookup(atomic_types) -> np.ndarray:
    """Atomic number -> position in ``atomic_types`` (-1 for others)."""
    lookup = np.full(max([*map(int, atomic_types), 0]) + 1 if len(atomic_types) else 1, -1, dtype=np.int64)
    lookup[np.asarray(atomic_types, dtype=np.int64)] = np.arange(len(atomic_types))
    return lookup


def atom_ranges(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices ``first[k] .. first[k] + counts[k] - 1`` of every k, one after the other."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(counts) - counts
    return np.repeat(np.asarray(first, dtype=np.int64) - before, counts) + np.arange(total, dtype=np.int64)
