"""Neighbour lists (vesin) and the per-structure edge graph the model consumes.

The spec (section 2.2) builds a *full* list as a half list followed by its reversed copy:
edges ``0..P-1`` are ``(i, j, S)`` and edges ``P..2P-1`` are ``(j, i, -S)``. That makes the
reverse of every edge known by construction (``e <-> e +- P``), so message passing never has
to search for reverse edges. Periodic self-images (``i == j``, ``S != 0``) appear once in the
half list and therefore in both directions in the full list; ``i == j, S == 0`` never appears.

A half list is computed once per structure at the largest cutoff anyone will ask for and
*restricted* by distance for smaller cutoffs (a search over ``cutoff`` never recomputes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vesin

from nanopet.data.structure import Structure


@dataclass
class HalfNeighborList:
    """Each unordered pair within ``cutoff`` once: ``r_ij = x_j - x_i + S @ cell``."""

    cutoff: float
    i: np.ndarray  # (P,) int64
    j: np.ndarray  # (P,) int64
    shifts: np.ndarray  # (P, 3) int64
    distances: np.ndarray  # (P,) float64

    def restrict(self, cutoff: float) -> "HalfNeighborList":
        """The same list for a smaller cutoff (strict: only pairs with r < cutoff)."""
        if cutoff > self.cutoff + 1e-12:
            raise ValueError(f"cannot restrict a {self.cutoff} A neighbour list to a larger cutoff {cutoff}")
        keep = self.distances < cutoff
        return HalfNeighborList(cutoff, self.i[keep], self.j[keep], self.shifts[keep], self.distances[keep])


def neighbor_list(structure: Structure, cutoff: float) -> HalfNeighborList:
    """Half neighbour list of one structure with vesin (periodic, open or mixed boundaries)."""
    box = structure.cell if structure.pbc.any() else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    i, j, shifts, distances = calculator.compute(
        points=structure.positions, box=box, periodic=structure.pbc.tolist(), quantities="ijSd"
    )
    keep = distances < cutoff  # strict, as the spec asks
    return canonical(HalfNeighborList(
        float(cutoff),
        i[keep].astype(np.int64),
        j[keep].astype(np.int64),
        shifts[keep].astype(np.int64),
        distances[keep].astype(np.float64),
    ))


def canonical(half: HalfNeighborList) -> HalfNeighborList:
    """Each pair oriented i < j (or i == j with the first non-zero shift positive) and the list sorted by
    (i, j, shift). vesin's order and orientation depend on the cutoff; in this form a list restricted
    from a larger cutoff is identical, element by element, to one computed at the smaller cutoff, so a
    search trial trains exactly like a plain run (same floating-point summation order)."""
    shifts = half.shifts
    first_nonzero = np.where(shifts[:, 0] != 0, shifts[:, 0], np.where(shifts[:, 1] != 0, shifts[:, 1], shifts[:, 2]))
    swap = (half.j < half.i) | ((half.i == half.j) & (first_nonzero < 0))
    i, j = np.where(swap, half.j, half.i), np.where(swap, half.i, half.j)
    shifts = np.where(swap[:, None], -shifts, shifts)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return HalfNeighborList(half.cutoff, i[order], j[order], shifts[order], half.distances[order])


@dataclass
class EdgeGraph:
    """Full directed edge list of one structure, sorted by centre, with NEF slot and reverse edge.

    ``slot[e]`` is the position of edge ``e`` among its centre's edges (0..count-1) and
    ``reverse[e]`` the index of the edge going the other way with the opposite shift.
    """

    centers: np.ndarray  # (E,) int64
    neighbors: np.ndarray  # (E,) int64
    shifts: np.ndarray  # (E, 3) int64
    slot: np.ndarray  # (E,) int64
    reverse: np.ndarray  # (E,) int64
    max_neighbors: int

    @property
    def num_edges(self) -> int:
        return len(self.centers)


def edge_graph(half: HalfNeighborList, n_atoms: int) -> EdgeGraph:
    """Full list (half + reversed copy), stably sorted by centre, with slots and reverse edges."""
    p = len(half.i)
    centers = np.concatenate([half.i, half.j])
    neighbors = np.concatenate([half.j, half.i])
    shifts = np.concatenate([half.shifts, -half.shifts])
    reverse_unsorted = np.concatenate([np.arange(p, 2 * p), np.arange(0, p)])

    order = np.argsort(centers, kind="stable")
    position_of = np.empty_like(order)
    position_of[order] = np.arange(2 * p)

    centers, neighbors, shifts = centers[order], neighbors[order], shifts[order]
    reverse = position_of[reverse_unsorted[order]]
    counts = np.bincount(centers, minlength=n_atoms)
    first_edge = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(2 * p) - first_edge[centers]
    return EdgeGraph(
        centers.astype(np.int64),
        neighbors.astype(np.int64),
        shifts.astype(np.int64),
        slot.astype(np.int64),
        reverse.astype(np.int64),
        int(counts.max()) if n_atoms else 0,
    )
