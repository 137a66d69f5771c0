"""A prepared dataset: structures, labels and neighbour lists as flat arrays in a folder, memory-mapped.

The format (written by ``nanopet.data.prepare``, read here) is a folder of numpy ``.npy`` files and a
``meta.json``. Why ``.npy``: ``np.load(mmap_mode="r")`` maps a file without reading it, the kernel's page cache
holds one copy of what any process has read, so every search worker, DDP rank and command on a machine shares
that one copy (proportional memory that does not grow with workers); no new dependency, and any numpy reads it.
HDF5 and Zarr read through their own caches (a copy per process), LMDB and Arrow add a dependency for what
offsets into flat arrays already do.

Arrays (S structures, N atoms, P pairs, each unordered pair within the cutoff once, as the half lists of
``nanopet.data.neighbors`` in their canonical order)::

    atom_offsets (S+1) int64, pair_offsets (S+1) int64   structure k: atoms [atom_offsets[k], atom_offsets[k+1]), same for pairs
    cells (S,3,3) f8, pbc (S,3) bool, energies (S) f8 (NaN: unlabelled), has_forces (S) bool,
    stresses (S,3,3) f8 (zero where stress_mask is False), stress_mask (S) bool (a stress on a fully periodic cell),
    volumes (S) f8, max_neighbors (S) int32 (at the folder's cutoff)
    numbers (N) uint8, positions (N,3) f8, forces (N,3) f8 (zero where has_forces is False)
    pair_i, pair_j (P) int32 (atom indices within the structure), pair_shifts (P,3) int16, pair_distances (P) f8

Per-atom and per-structure values stay float64 (a few percent of the bytes): one folder serves float32 and float64
training with exactly the in-memory path's inputs. Pairs are most of the bytes (22 per pair, 11 per directed edge,
against ~75 for the in-memory lists and graphs); their distances stay float64 because a smaller cutoff keeps exactly
the pairs with ``distance < cutoff``, as ``HalfNeighborList.restrict`` does on vesin's float64 distances.

``PreparedDataset`` is a view: a store and the rows (structures) it takes, at a cutoff no larger than the store's.
A smaller cutoff filters each batch's pairs by distance as the batch is made (nothing is copied per cutoff but the
neighbour counts, ``max_neighbors``, one int per structure); the full edge list of a batch (half list and its
reversed copy, sorted by centre, with slots and reverse edges) is built for the whole batch at once with numpy,
identical to the concatenation of ``edge_graph`` of each structure.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from nanopet.data.batch import Batch, collate
from nanopet.data.dataset import Dataset, atom_ranges
from nanopet.data.neighbors import EdgeGraph
from nanopet.data.prepare import ARRAYS, FORMAT, META, prepare
from nanopet.data.structure import Structure
from nanopet.errors import InputError

KEPT_CUTOFFS = 4  # neighbour counts kept per store for this many smaller cutoffs
COUNTING_CHUNK = 1 << 22  # pairs per step when counting neighbours at a smaller cutoff

_OPEN: dict = {}  # folder -> PreparedStore, one per process


class PreparedStore:
    """The arrays of one prepared folder, memory-mapped, and its description (``meta``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / META).read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{self.folder}: not a prepared dataset ({error}); delete the folder to prepare it again") from None
        if self.meta.get("format") != FORMAT:
            raise InputError(f"{self.folder}: prepared in format {self.meta.get('format')}, this version reads {FORMAT}; "
                             "delete the folder to prepare it again")
        self.cutoff = float(self.meta["cutoff"])
        self.count = int(self.meta["structures"])
        lengths = {"structures": self.count, "structures+1": self.count + 1, "atoms": int(self.meta["atoms"]),
                   "pairs": int(self.meta["pairs"])}
        self.arrays = {}
        for name, (dtype, shape, counted) in ARRAYS.items():
            try:  # a plain ndarray on the map (a np.memmap pays for its subclass on every indexing)
                array = np.asarray(np.load(self.folder / f"{name}.npy", mmap_mode="r"))
            except (OSError, ValueError) as error:
                raise InputError(f"{self.folder}: {name}.npy cannot be read ({error}); delete the folder to prepare it again") from None
            if array.dtype != np.dtype(dtype) or array.shape != (lengths[counted], *shape):
                raise InputError(f"{self.folder}: {name}.npy has {array.dtype} {array.shape}, expected {dtype} "
                                 f"{(lengths[counted], *shape)}; delete the folder to prepare it again")
            self.arrays[name] = array
        self._neighbors: OrderedDict = OrderedDict()

    def __reduce__(self):
        return open_store, (str(self.folder),)  # pickled by name: a process it is sent to maps the same files

    def max_neighbors(self, cutoff: float) -> np.ndarray:
        """Most neighbours of any atom of each structure at ``cutoff`` (at most the store's), (S,) int64."""
        if cutoff >= self.cutoff:
            return np.asarray(self.arrays["max_neighbors"], dtype=np.int64)
        key = round(cutoff, 9)
        if key not in self._neighbors:
            if len(self._neighbors) >= KEPT_CUTOFFS:
                self._neighbors.popitem(last=False)
            self._neighbors[key] = self._count_neighbors(cutoff)
        self._neighbors.move_to_end(key)
        return self._neighbors[key]

    def _count_neighbors(self, cutoff: float) -> np.ndarray:
        """Neighbour counts at a smaller cutoff, a few million pairs at a time (no per-structure loop)."""
        a = self.arrays
        atom_offsets, pair_offsets = np.asarray(a["atom_offsets"]), np.asarray(a["pair_offsets"])
        most = np.zeros(self.count, dtype=np.int64)
        start = 0
        while start < self.count:
            stop = int(np.searchsorted(pair_offsets, pair_offsets[start] + COUNTING_CHUNK, side="right"))
            stop = min(max(stop - 1, start + 1), self.count)
            first_atom, first_pair = atom_offsets[start], pair_offsets[start]
            pairs = slice(first_pair, pair_offsets[stop])
            owner = np.repeat(np.arange(start, stop), np.diff(pair_offsets[start : stop + 1]))
            keep = np.asarray(a["pair_distances"][pairs]) < cutoff
            base = atom_offsets[owner[keep]] - first_atom
            ends = np.concatenate([np.asarray(a["pair_i"][pairs])[keep] + base, np.asarray(a["pair_j"][pairs])[keep] + base])
            counts = np.bincount(ends, minlength=int(atom_offsets[stop] - first_atom))
            most[start:stop] = np.maximum.reduceat(counts, atom_offsets[start:stop] - first_atom)  # every structure has atoms
            start = stop
        return most


def open_store(folder: str | Path) -> PreparedStore:
    """The store of ``folder``, opened once per process (every split and subset shares its mappings)."""
    folder = Path(folder).resolve()
    if folder not in _OPEN:
        _OPEN[folder] = PreparedStore(folder)
    return _OPEN[folder]


class PreparedDataset(Dataset):
    """Structures ``rows`` of a prepared store (default: all), at ``cutoff`` (default: the store's); ``specs``: the
    dataset it was prepared from, to prepare it again at a larger cutoff (``widened``)."""

    def __init__(self, store: PreparedStore, rows=None, cutoff: float | None = None, specs: list | None = None):
        self.store = store
        self.rows = np.arange(store.count, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.cutoff = store.cutoff if cutoff is None else float(cutoff)
        if self.cutoff > store.cutoff + 1e-12:
            raise ValueError(f"cannot read {store.folder}, prepared at {store.cutoff} A, at a larger cutoff {self.cutoff}")
        self.filtered = self.cutoff < store.cutoff
        self.specs = specs
        a, rows = store.arrays, self.rows
        offsets = np.asarray(a["atom_offsets"])
        self.first_atom = offsets[rows]
        self.n_atoms = offsets[rows + 1] - self.first_atom
        self.energies = np.asarray(a["energies"][rows])
        self.stress_mask = np.asarray(a["stress_mask"][rows])
        self.periodic = np.asarray(a["pbc"][rows]).all(axis=1)
        self.max_neighbors = store.max_neighbors(self.cutoff)[rows]
        self.has_forces = len(rows) > 0 and bool(np.asarray(a["has_forces"][rows]).all())
        self.has_stress = bool(self.stress_mask.any())

    def _view(self, rows, cutoff: float) -> "PreparedDataset":
        return PreparedDataset(self.store, rows, cutoff, self.specs)

    def subset(self, indices) -> "PreparedDataset":
        return self._view(self.rows[np.asarray(indices, dtype=np.int64)], self.cutoff)

    def restrict(self, cutoff: float) -> "PreparedDataset":
        if cutoff > self.cutoff + 1e-12:
            raise ValueError(f"cannot restrict a {self.cutoff} A neighbour list to a larger cutoff {cutoff}")
        return self._view(self.rows, cutoff)

    def widened(self, cutoff: float) -> "PreparedDataset":
        if self.specs is None:
            raise InputError(f"{self.store.folder}: prepared at {self.store.cutoff} A, cannot serve cutoff {cutoff}; "
                             f"prepare the data at {cutoff} A or more")
        return PreparedDataset(open_store(prepare(self.specs, cutoff)), self.rows, cutoff, self.specs)

    # --- per atom and per structure values

    def _atoms(self) -> np.ndarray:
        return atom_ranges(self.first_atom, self.n_atoms)

    def atom_numbers(self) -> np.ndarray:
        return np.asarray(self.store.arrays["numbers"][self._atoms()])

    def atom_forces(self) -> np.ndarray:
        return np.asarray(self.store.arrays["forces"][self._atoms()])

    def stresses(self) -> np.ndarray:
        return np.asarray(self.store.arrays["stresses"][self.rows])

    def volumes(self) -> np.ndarray:
        return np.asarray(self.store.arrays["volumes"][self.rows])

    def source(self, k: int) -> str:
        """``file.xyz:frame`` of structure k, for messages."""
        row = int(self.rows[k])
        for part in self.store.meta["parts"]:
            if row < part["structures"]:
                return f"{part['systems']}:{row}"
            row -= part["structures"]
        return f"{self.store.folder}:{self.rows[k]}"

    def structure(self, k: int) -> Structure:
        """Structure k as a Structure (its stress only where ``stress_mask``)."""
        a, row = self.store.arrays, int(self.rows[k])
        atoms = slice(int(self.first_atom[k]), int(self.first_atom[k] + self.n_atoms[k]))
        energy = float(a["energies"][row])
        return Structure(
            numbers=np.asarray(a["numbers"][atoms], dtype=np.int64), positions=np.array(a["positions"][atoms]),
            cell=np.array(a["cells"][row]), pbc=np.array(a["pbc"][row]),
            energy=None if math.isnan(energy) else energy,
            forces=np.array(a["forces"][atoms]) if a["has_forces"][row] else None,
            stress=np.array(a["stresses"][row]) if a["stress_mask"][row] else None,
            source=self.source(k),
        )

    # --- batches

    def batch(self, indices, dtype=torch.float32, device="cpu", energy_offsets: np.ndarray | None = None) -> Batch:
        """The same Batch as ``GraphDataset.batch`` of these structures, from the mapped arrays."""
        a = self.store.arrays
        chosen = np.asarray(indices, dtype=np.int64)
        rows = self.rows[chosen]
        n_atoms = self.n_atoms[chosen]
        atoms = atom_ranges(self.first_atom[chosen], n_atoms)
        pair_offsets = a["pair_offsets"]
        first_pair = np.asarray(pair_offsets[rows])
        n_pairs = np.asarray(pair_offsets[rows + 1]) - first_pair
        pairs = atom_ranges(first_pair, n_pairs)
        owner = np.repeat(np.arange(len(rows)), n_pairs)
        if self.filtered:
            keep = np.asarray(a["pair_distances"][pairs]) < self.cutoff
            pairs, owner = pairs[keep], owner[keep]
        atom_offset = np.cumsum(n_atoms) - n_atoms
        i = a["pair_i"][pairs] + atom_offset[owner]
        j = a["pair_j"][pairs] + atom_offset[owner]
        has_forces = bool(np.asarray(a["has_forces"][rows]).all())
        return collate(
            positions=np.asarray(a["positions"][atoms]),
            numbers=np.asarray(a["numbers"][atoms]),
            cells=np.asarray(a["cells"][rows]),
            n_atoms=n_atoms,
            edges=full_edges(i, j, np.asarray(a["pair_shifts"][pairs], dtype=np.int64), int(n_atoms.sum())),
            energies=self.energies[chosen],
            forces=np.asarray(a["forces"][atoms]) if has_forces else None,
            stresses=np.asarray(a["stresses"][rows]),
            stress_mask=self.stress_mask[chosen],
            volumes=np.asarray(a["volumes"][rows]),
            indices=indices, energy_offsets=energy_offsets, dtype=dtype, device=device,
        )


def full_edges(i: np.ndarray, j: np.ndarray, shifts: np.ndarray, n_atoms: int) -> EdgeGraph:
    """The full directed edge list of a batch's half lists (atom indices of the batch, structures one after the
    other): the half list followed by its reversed copy, stably sorted by centre, with each edge's slot among its
    centre's edges and its reverse edge. A stable sort keeps, per centre, the half-list edges first and each part
    in its order, which is exactly ``edge_graph`` of each structure, concatenated."""
    p = len(i)
    centers = np.concatenate([i, j]).astype(np.int64)
    neighbors = np.concatenate([j, i]).astype(np.int64)
    shifts = np.concatenate([shifts, -shifts]).reshape(-1, 3)
    order = np.argsort(centers, kind="stable")
    position_of = np.empty_like(order)
    position_of[order] = np.arange(2 * p)
    reverse = position_of[np.concatenate([np.arange(p, 2 * p), np.arange(0, p)])[order]]
    centers, neighbors, shifts = centers[order], neighbors[order], shifts[order]
    counts = np.bincount(centers, minlength=n_atoms)
    first_edge = np.cumsum(counts) - counts
    slot = np.arange(2 * p) - first_edge[centers]
    return EdgeGraph(centers, neighbors, shifts, slot, reverse, int(counts.max()) if n_atoms else 0)
