"""Batches of structures as flat atom/edge arrays plus padded NEF (node x edge-slot) indices.

A dataset computes its neighbour lists once (``GraphDataset``); each batch is then a few
numpy concatenations with atom/edge offsets, so nothing per-atom runs in Python.

NEF layout (spec 2.4): N centre atoms x M = ``num_slots`` edge slots (the most neighbours of any
atom in the batch). The model keeps tokens packed, one row per real edge, and places them into
that padded layout only for attention: ``edge_slot[e]`` is edge e's flat slot ``n * M + k`` (its
centre n, its position k among n's edges); ``edge_reverse[e]`` is the edge going the other way,
so message passing is one gather on the (E, d) tokens.
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
    num_slots: int  # M
    edge_slot: torch.Tensor  # (E,) flat index into N*M
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


class GraphDataset:
    """Structures plus their neighbour lists at one cutoff, computed once and reused every epoch."""

    def __init__(self, structures: list[Structure], cutoff: float, half_lists: list[HalfNeighborList] | None = None):
        self.structures = list(structures)
        self.cutoff = float(cutoff)
        if half_lists is None:
            half_lists = [neighbor_list(s, cutoff) for s in self.structures]
        self.half_lists = half_lists
        self.graphs: list[EdgeGraph] = [edge_graph(h, len(s)) for h, s in zip(half_lists, self.structures)]
        self.max_neighbors = np.array([g.max_neighbors for g in self.graphs], dtype=np.int64)
        self.has_forces = bool(self.structures) and all(s.forces is not None for s in self.structures)
        self.has_stress = any(s.stress is not None and s.pbc.all() for s in self.structures)

    def __len__(self) -> int:
        return len(self.structures)

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
        max_slots = max((g.max_neighbors for g in graphs), default=0)

        centers = np.concatenate([g.centers + o for g, o in zip(graphs, atom_offset)])
        neighbors = np.concatenate([g.neighbors + o for g, o in zip(graphs, atom_offset)])
        shifts = np.concatenate([g.shifts for g in graphs]).reshape(-1, 3)
        slot = np.concatenate([g.slot for g in graphs])
        reverse = np.concatenate([g.reverse + o for g, o in zip(graphs, edge_offset)])


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
            num_slots=int(max_slots),
            edge_slot=tensor(centers * max_slots + slot, torch.long),
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
