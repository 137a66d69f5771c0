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

from nanopet.data.dataset import Dataset
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


class GraphDataset(Dataset):
    """Structures plus their neighbour lists at one cutoff, computed once and reused every epoch (in memory; a
    ``PreparedDataset`` gives the same batches from a prepared folder)."""

    def __init__(self, structures: list[Structure], cutoff: float, half_lists: list[HalfNeighborList] | None = None):
        self.structures = list(structures)
        self.cutoff = float(cutoff)
        if half_lists is None:
            half_lists = [neighbor_list(s, cutoff) for s in self.structures]
        self.half_lists = half_lists
        self.graphs: list[EdgeGraph] = [edge_graph(h, len(s)) for h, s in zip(half_lists, self.structures)]
        self._summarise()

    def _summarise(self) -> None:
        """What the trainer asks of the whole set: per-structure arrays, whether forces and stress are labelled."""
        structures = self.structures
        self.max_neighbors = np.array([g.max_neighbors for g in self.graphs], dtype=np.int64)
        self.n_atoms = np.array([len(s) for s in structures], dtype=np.int64)
        self.energies = np.array([np.nan if s.energy is None else s.energy for s in structures], dtype=np.float64)
        self.stress_mask = np.array([s.stress is not None and bool(s.pbc.all()) for s in structures], dtype=bool)
        self.has_forces = bool(structures) and all(s.forces is not None for s in structures)
        self.has_stress = bool(self.stress_mask.any())
        self.periodic = np.array([bool(s.pbc.all()) for s in structures], dtype=bool)
        self._stresses = np.array([s.stress if m else np.zeros((3, 3)) for s, m in zip(structures, self.stress_mask)]).reshape(-1, 3, 3)
        self._volumes = np.array([s.volume for s in structures], dtype=np.float64)

    def structure(self, k: int) -> Structure:
        return self.structures[k]

    def atom_numbers(self) -> np.ndarray:
        return np.concatenate([s.numbers for s in self.structures]) if self.structures else np.zeros(0, dtype=np.int64)

    def atom_forces(self) -> np.ndarray:
        """(atoms, 3): every structure's forces, one after the other (all structures need forces)."""
        return np.concatenate([s.forces for s in self.structures]).reshape(-1, 3)

    def stresses(self) -> np.ndarray:
        """(len, 3, 3) stress labels, zeros where ``stress_mask`` is False."""
        return self._stresses

    def volumes(self) -> np.ndarray:
        return self._volumes

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

    def widened(self, cutoff: float) -> "GraphDataset":
        return GraphDataset(self.structures, cutoff)

    def batch(self, indices, dtype=torch.float32, device="cpu", energy_offsets: np.ndarray | None = None) -> Batch:
        """Collate ``indices`` into one Batch; ``energy_offsets[k]`` is subtracted from structure k's energy."""
        structures = [self.structures[k] for k in indices]
        graphs = [self.graphs[k] for k in indices]
        n_atoms = np.array([len(s) for s in structures], dtype=np.int64)
        n_edges = np.array([g.num_edges for g in graphs], dtype=np.int64)
        atom_offset = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
        edge_offset = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
        edges = EdgeGraph(
            centers=np.concatenate([g.centers + o for g, o in zip(graphs, atom_offset)]),
            neighbors=np.concatenate([g.neighbors + o for g, o in zip(graphs, atom_offset)]),
            shifts=np.concatenate([g.shifts for g in graphs]).reshape(-1, 3),
            slot=np.concatenate([g.slot for g in graphs]),
            reverse=np.concatenate([g.reverse + o for g, o in zip(graphs, edge_offset)]),
            max_neighbors=0,
        )
        chosen = np.asarray(indices, dtype=np.int64)
        has_forces = all(s.forces is not None for s in structures)
        return collate(
            positions=np.concatenate([s.positions for s in structures]),
            numbers=np.concatenate([s.numbers for s in structures]),
            cells=np.stack([s.cell for s in structures]),
            n_atoms=n_atoms,
            edges=edges,
            energies=self.energies[chosen],
            forces=np.concatenate([s.forces for s in structures]).reshape(-1, 3) if has_forces else None,
            stresses=self._stresses[chosen],
            stress_mask=self.stress_mask[chosen],
            volumes=self._volumes[chosen],
            indices=indices, energy_offsets=energy_offsets, dtype=dtype, device=device,
        )


def collate(*, positions, numbers, cells, n_atoms, edges: EdgeGraph, energies, forces, stresses, stress_mask, volumes,
            indices, energy_offsets, dtype, device) -> Batch:
    """One Batch from the numpy arrays of its structures (one path for both kinds of dataset): atoms and cells, the
    batch's full edge list (``edges``: centres, neighbours, shifts, slots, reverse edges, atom indices of the batch),
    and per-structure labels (``energies`` NaN where unlabelled; ``forces`` None unless every structure has them;
    ``stresses`` zero where ``stress_mask`` is False). ``energy_offsets[indices]`` is subtracted from the energies."""
    n_total = int(np.sum(n_atoms))
    groups, row = slot_groups(np.bincount(edges.centers, minlength=n_total))

    def tensor(array, kind=dtype):
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=kind)

    batch = Batch(
        positions=tensor(positions),
        numbers=tensor(numbers, torch.long),
        cells=tensor(cells),
        structure_index=tensor(np.repeat(np.arange(len(n_atoms)), n_atoms), torch.long),
        n_atoms=tensor(n_atoms, torch.long),
        centers=tensor(edges.centers, torch.long),
        neighbors=tensor(edges.neighbors, torch.long),
        shifts=tensor(edges.shifts),
        slot_groups=groups,
        edge_slot=tensor(row[edges.centers] + edges.slot, torch.long),
        edge_reverse=tensor(edges.reverse, torch.long),
    )
    if not np.isnan(energies).any():
        energy = np.asarray(energies, dtype=np.float64)
        if energy_offsets is not None:
            energy = energy - np.asarray(energy_offsets, dtype=np.float64)[list(indices)]
        batch.energy = tensor(energy)
    if forces is not None:
        batch.forces = tensor(forces)
    if stress_mask.any():
        batch.stress = tensor(stresses)
        batch.stress_mask = tensor(stress_mask, torch.bool)
    batch.volume = tensor(volumes)
    return batch
