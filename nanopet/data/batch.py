"""Batches of structures as flat atom/edge arrays plus padded NEF (node x edge-slot) indices.

A dataset computes its neighbour lists once (``GraphDataset``); each batch is then a few
numpy concatenations with atom/edge offsets, so nothing per-atom runs in Python.

NEF layout (spec 2.4): centre atoms x edge slots, one row of slots per centre. The model keeps
tokens packed, one row per real edge, and places them into that padded layout only for attention.
Attention costs about M^2 per centre for M slots, and neighbour counts can vary widely within a
batch (surfaces, molecules, or a cutoff near a neighbour shell: 18 to 33 neighbours at 4.5 A in the
built-in data), so the centres are split by neighbour count into at most ``MAX_SLOT_GROUPS``
groups, each padded to its own most neighbours: ``slot_groups`` lists (centres, slots) per group,
and the layouts lie one after the other. ``edge_slot[e]`` is edge e's flat slot in them: the start of
its centre's group + the centre's row in the group * that group's slots + e's position among the
centre's edges. Atoms without neighbours have no row. ``edge_reverse[e]`` is the edge going the
other way, so message passing is one gather on the (E, d) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from nanopet.data.neighbors import EdgeGraph, HalfNeighborList, edge_graph, neighbor_list
from nanopet.data.structure import Structure


@dataclass
class Batch:
    positions: torch.Tensor  # (N, 3)
    numbers: torch.Tensor  # (N,) atomic numbers
    cells: torch.Tensor  # (B, 3, 3)
    structure_index: torch.Tensor  # (N,) which structure each atom belongs to
    n_atoms: torch.Tensor  # (B,)
    centers: torch.Tensor  # (E,)
    neighbors: torch.Tensor  # (E,)
    shifts: torch.Tensor  # (E, 3) integer shifts, stored in the float dtype
    slot_groups: tuple[tuple[int, int], ...]  # (centres, slots) of each padded attention layout
    edge_slot: torch.Tensor  # (E,) flat index into the layouts, sum of centres * slots rows
    edge_reverse: torch.Tensor  # (E,) index of the reverse edge
    energy: torch.Tensor | None = None  # (B,) target, baseline-subtracted if offsets were given
    forces: torch.Tensor | None = None  # (N, 3)
    stress: torch.Tensor | None = None  # (B, 3, 3), zeros where stress_mask is False
    stress_mask: torch.Tensor | None = None  # (B,) bool
    volume: torch.Tensor | None = None  # (B,)

    @property
    def num_structures(self) -> int:
        return int(self.cells.shape[0])

    def to(self, device) -> "Batch":
        return Batch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(value, device):
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


MAX_SLOT_GROUPS = 3
EXTRA_GROUP_COST = 0.05  # an extra group must save this share of the single layout's M^2 area


def slot_groups(counts: np.ndarray, max_groups: int | None = None) -> tuple[tuple, np.ndarray]:
    """Groups of centres by neighbour count for attention, and each edge slot row's start.

    ``counts`` (N,) neighbours per atom. Returns ((centres, slots) per group, row (N,)): atom i's slot
    row starts at ``row[i]`` in the concatenated layouts (-1 without neighbours). Groups are ranges of
    counts chosen to minimise the attention area sum(centres * slots^2), a group at a time.
    """
    max_groups = MAX_SLOT_GROUPS if max_groups is None else max_groups
    counts = np.asarray(counts, dtype=np.int64)
    values, sizes = np.unique(counts[counts > 0], return_counts=True)
    if len(values) == 0:
        return (), np.full(len(counts), -1, dtype=np.int64)
    # area of a group holding the distinct counts a..b (inclusive): centres(a..b) * values[b]^2
    before = np.concatenate([[0], np.cumsum(sizes)])
    area = (before[None, 1:] - before[:-1, None]) * values[None, :] ** 2  # (a, b), used for a <= b
    last = len(values) - 1
    penalty = EXTRA_GROUP_COST * area[0, last]
    ends, best = [last], area[0, last]
    if max_groups >= 2 and last >= 1:  # first group 0..a, second a+1..last
        a = np.arange(last)
        two = area[0, a] + area[a + 1, last] + penalty
        if two.min() < best:
            ends, best = [int(a[two.argmin()]), last], float(two.min())
    if max_groups >= 3 and last >= 2:  # 0..a, a+1..b, b+1..last
        a, b = np.triu_indices(last, k=1)
        three = area[0, a] + area[a + 1, b] + area[b + 1, last] + 2 * penalty
        if three.min() < best:
            k = int(three.argmin())
            ends = [int(a[k]), int(b[k]), last]
    group_of_value = np.searchsorted(values[ends], values)  # distinct count -> its group
    group = np.full(len(counts), -1, dtype=np.int64)
    group[counts > 0] = group_of_value[np.searchsorted(values, counts[counts > 0])]
    groups, row, start = [], np.full(len(counts), -1, dtype=np.int64), 0
    for g, end in enumerate(ends):
        members = np.flatnonzero(group == g)
        slots = int(values[end])
        row[members] = start + np.arange(len(members)) * slots
        groups.append((len(members), slots))
        start += len(members) * slots
    return tuple(groups), row


class GraphDataset:
    """Structures plus their neighbour lists at one cutoff, computed once and reused every epoch."""

    def __init__(self, structures: list[Structure], cutoff: float, half_lists: list[HalfNeighborList] | None = None):
        self.structures = list(structures)
        self.cutoff = float(cutoff)
        if half_lists is None:
            half_lists = [neighbor_list(s, cutoff) for s in self.structures]
        self.half_lists = half_lists
        self.graphs: list[EdgeGraph] = [edge_graph(h, len(s)) for h, s in zip(half_lists, self.structures)]
        self._summarise()

    def _summarise(self) -> None:
        """What the trainer asks of the whole set: neighbour counts, whether forces and stress are labelled."""
        self.max_neighbors = np.array([g.max_neighbors for g in self.graphs], dtype=np.int64)
        self.has_forces = bool(self.structures) and all(s.forces is not None for s in self.structures)
        self.has_stress = any(s.stress is not None and s.pbc.all() for s in self.structures)

    def __len__(self) -> int:
        return len(self.structures)

    def subset(self, indices) -> "GraphDataset":
        """These structures at ``indices``, with their neighbour lists and graphs as computed (nothing recomputed)."""
        subset = GraphDataset([], self.cutoff, [])
        subset.structures = [self.structures[k] for k in indices]
        subset.half_lists = [self.half_lists[k] for k in indices]
        subset.graphs = [self.graphs[k] for k in indices]
        subset._summarise()
        return subset

    def restrict(self, cutoff: float) -> "GraphDataset":
        """The same structures at a smaller cutoff, filtering the stored lists by distance."""
        return GraphDataset(self.structures, cutoff, [h.restrict(cutoff) for h in self.half_lists])

    def batch(self, indices, dtype=torch.float32, device="cpu", energy_offsets: np.ndarray | None = None) -> Batch:
        """Collate ``indices`` into one Batch; ``energy_offsets[k]`` is subtracted from structure k's energy."""
        structures = [self.structures[k] for k in indices]
        graphs = [self.graphs[k] for k in indices]
        n_atoms = np.array([len(s) for s in structures], dtype=np.int64)
        n_edges = np.array([g.num_edges for g in graphs], dtype=np.int64)
        atom_offset = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
        edge_offset = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
        n_total = int(n_atoms.sum())

        centers = np.concatenate([g.centers + o for g, o in zip(graphs, atom_offset)])
        neighbors = np.concatenate([g.neighbors + o for g, o in zip(graphs, atom_offset)])
        shifts = np.concatenate([g.shifts for g in graphs]).reshape(-1, 3)
        slot = np.concatenate([g.slot for g in graphs])
        reverse = np.concatenate([g.reverse + o for g, o in zip(graphs, edge_offset)])
        groups, row = slot_groups(np.bincount(centers, minlength=n_total))

        def tensor(array, kind=dtype):
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=kind)

        batch = Batch(
            positions=tensor(np.concatenate([s.positions for s in structures])),
            numbers=tensor(np.concatenate([s.numbers for s in structures]), torch.long),
            cells=tensor(np.stack([s.cell for s in structures])),
            structure_index=tensor(np.repeat(np.arange(len(structures)), n_atoms), torch.long),
            n_atoms=tensor(n_atoms, torch.long),
            centers=tensor(centers, torch.long),
            neighbors=tensor(neighbors, torch.long),
            shifts=tensor(shifts),
            slot_groups=groups,
            edge_slot=tensor(row[centers] + slot, torch.long),
            edge_reverse=tensor(reverse, torch.long),
        )
        if all(s.energy is not None for s in structures):
            energy = np.array([s.energy for s in structures], dtype=np.float64)
            if energy_offsets is not None:
                energy = energy - np.asarray(energy_offsets, dtype=np.float64)[list(indices)]
            batch.energy = tensor(energy)
        if all(s.forces is not None for s in structures):
            batch.forces = tensor(np.concatenate([s.forces for s in structures]).reshape(-1, 3))
        stress_mask = np.array([s.stress is not None and bool(s.pbc.all()) for s in structures])
        if stress_mask.any():
            stress = np.stack([s.stress if m else np.zeros((3, 3)) for s, m in zip(structures, stress_mask)])
            batch.stress = tensor(stress)
            batch.stress_mask = tensor(stress_mask, torch.bool)
        batch.volume = tensor([s.volume for s in structures])
        return batch
