"""Neighbours per atom at candidate cutoffs, from one neighbour list per sampled structure at the largest.

Counts are of the full list (a pair counts for both of its atoms; a periodic image counts too), as the model
sees them. The cutoff that gives the median atom ``TARGET_NEIGHBOURS`` neighbours is the median, over atoms,
of each atom's ``TARGET_NEIGHBOURS``-th nearest neighbour distance. The neighbour shells are the peaks of the pair
distribution (pairs per atom per 0.1 A, smoothed over three bins); a shell ends at the first local minimum after its
peak that lies below ``SHELL_DIP`` of it (fcc Cu-Au: 3.3 and 4.2 A; silicon 3.2-3.5 and 4.2 A).
"""

from __future__ import annotations

import numpy as np

from ..neighbors import neighbor_list
from ..structure import Structure
from .report import NeighbourRow, Neighbours

CANDIDATE_CUTOFFS = (3.0, 4.0, 5.0, 6.0, 7.0)  # A
TARGET_NEIGHBOURS = 20
GRID_STEP = 0.1  # A, of the curve kept for ``Neighbours.mean_at``
SHELLS = 2  # neighbour shells whose ends are kept (``Neighbours.shell_ends``)
SHELL_DIP = 0.9  # a shell ends where the pair distribution falls below this share of its peak, then rises


def neighbour_counts(frames, cutoffs=CANDIDATE_CUTOFFS) -> Neighbours | None:
    """The neighbour statistics of ``frames`` (objects with numbers, positions, cell, pbc); None without any
    usable frame (one with finite positions and, when periodic, a cell with volume)."""
    cutoffs = sorted(float(c) for c in cutoffs)
    largest = cutoffs[-1]
    distances, largest_counts, nth, atoms, used = [], np.zeros(len(cutoffs), dtype=np.int64), [], 0, 0
    diameter = 0.0  # of the molecules seen whole; None once a structure is periodic or larger than the cutoff
    for frame in frames:
        if not _usable(frame):
            continue
        half = neighbor_list(Structure(frame.numbers, frame.positions, frame.cell, frame.pbc), largest)
        n = len(frame.numbers)
        centres, both = np.concatenate([half.i, half.j]), np.concatenate([half.distances, half.distances])
        for k, cutoff in enumerate(cutoffs):
            largest_counts[k] = max(largest_counts[k], np.bincount(centres[both < cutoff], minlength=n).max(initial=0))
        nth.append(_nth_distances(centres, both, n, TARGET_NEIGHBOURS))
        distances.append(half.distances)
        whole = not frame.pbc.any() and len(half.i) == n * (n - 1) // 2
        diameter = max(diameter, float(half.distances.max(initial=0.0))) if whole and diameter is not None else None
        atoms += n
        used += 1
    if not used:
        return None
    pairs = np.sort(np.concatenate(distances))

    def mean(radius: float) -> float:
        return 2.0 * np.searchsorted(pairs, radius, side="left") / atoms

    rows = [NeighbourRow(c, mean(c), int(m)) for c, m in zip(cutoffs, largest_counts)]
    median = float(np.median(np.concatenate(nth)))
    radii = np.round(np.arange(0.0, largest + GRID_STEP / 2, GRID_STEP), 6)
    counts = [mean(r) for r in radii]
    return Neighbours(used, rows, median if np.isfinite(median) else None, diameter, radii.tolist(), counts,
                      shell_ends(radii, counts))


def shell_ends(radii, counts, shells: int = SHELLS) -> list:
    """Where the first ``shells`` peaks of the pair distribution end (A), from the mean neighbours within each radius
    of an even grid; fewer where the grid ends first."""
    density = np.convolve(np.diff(np.asarray(counts, dtype=float)), np.ones(3) / 3, mode="same")
    ends, peak = [], 0.0
    for k in range(1, len(density) - 1):
        peak = max(peak, density[k])
        if density[k] <= density[k - 1] and density[k] < density[k + 1] and density[k] < SHELL_DIP * peak:
            ends.append(float(radii[k + 1]))
            peak = 0.0
            if len(ends) == shells:
                break
    return ends


def _nth_distances(centres: np.ndarray, distances: np.ndarray, n_atoms: int, nth: int) -> np.ndarray:
    """Each atom's ``nth`` nearest neighbour distance (inf when it has fewer neighbours in the list)."""
    order = np.lexsort((distances, centres))
    counts = np.bincount(centres, minlength=n_atoms)
    starts = np.cumsum(counts) - counts
    result = np.full(n_atoms, np.inf)
    enough = counts >= nth
    result[enough] = distances[order][starts[enough] + nth - 1]
    return result


def _usable(frame) -> bool:
    if not (np.isfinite(frame.positions).all() and np.isfinite(frame.cell).all()):
        return False
    return not frame.pbc.any() or abs(np.linalg.det(frame.cell)) > 1e-6
