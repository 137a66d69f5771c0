"""What ``inspect_data`` finds in a dataset: one ``DataReport``, plain data for the table and for ``init``.

Every energy is in eV (after ``energy_unit``), every length in Angstrom; frame references are 0-based
(``FrameRef``: the file and the frame's index in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..labels import LabelKeys

# Training memory of the default model (d_pet 128, 2 GNN x 2 attention layers, float32), energy + forces + stress,
# one forward and double backward pass, per edge of the neighbour list (the atoms' own share folded in): the slope of
# peak resident memory (CPU) from 2 to 8 EMT cells, 117-149 kB at cutoffs 4.0 and 5.5 A (16 and 47 neighbours per
# atom) over three runs (benchmarks/bench_inspect.py --memory). An estimate for other sizes and devices.
TRAINING_BYTES_PER_EDGE = 130_000
GB = 1e9


@dataclass(frozen=True)
class FrameRef:
    """One frame: ``files[file]`` and its 0-based ``index`` there."""

    file: int
    index: int


@dataclass
class Species:
    symbol: str
    number: int
    atoms: int  # atoms of this element in the whole dataset
    structures: int  # structures holding at least one


@dataclass
class Spread:
    """mean, standard deviation, min and max of a quantity over structures."""

    mean: float
    std: float
    min: float
    max: float


@dataclass
class NeighbourRow:
    cutoff: float  # A
    mean: float  # neighbours per atom (full list: each pair counted for both atoms)
    max: int

    def training_bytes_per_atom(self) -> float:
        """Estimated training memory per atom at this cutoff (see ``TRAINING_BYTES_PER_EDGE``)."""
        return TRAINING_BYTES_PER_EDGE * self.mean


@dataclass
class Neighbours:
    """Neighbour counts of a seeded random sample of the structures (all of them when there are few)."""

    sampled: int  # structures looked at
    rows: list  # NeighbourRow per candidate cutoff, ascending
    cutoff_for_20: float | None  # A: the median atom has 20 neighbours within it; None: not within the largest row
    molecule_diameter: float | None = None  # A: when every sampled structure is a molecule smaller than the largest
    # cutoff, its largest atom-atom distance: every atom sees its whole molecule within it
    radii: list = field(default_factory=list)  # A, a fine grid up to the largest cutoff ...
    mean_counts: list = field(default_factory=list)  # ... and the mean neighbours per atom within each radius
    shell_ends: list = field(default_factory=list)  # A: where the first two neighbour shells end (peaks of the pair
    # distribution; fewer when they do not end within the largest cutoff)

    def mean_at(self, cutoff: float) -> float:
        """Mean neighbours per atom within ``cutoff`` (interpolated on the grid; at most the largest row's)."""
        import numpy as np

        return float(np.interp(cutoff, self.radii, self.mean_counts)) if self.radii else 0.0


@dataclass
class Suspicious:
    """Frames that break one rule: ``rule`` says what was checked, ``details`` one short text per frame."""

    kind: str  # "overlapping atoms", "force outliers", "duplicated frames", "energy per atom outliers", ...
    rule: str
    frames: list  # FrameRef, in file order
    details: dict = field(default_factory=dict)  # FrameRef -> text


@dataclass
class DataReport:
    """Everything ``inspect`` says about one or more structure files, read together."""

    files: list  # the paths, as given
    structures: int
    atoms: int
    atoms_per_structure: tuple  # (min, median, max)
    species: list  # Species, by atomic number
    geometry: dict  # "periodic" / "slab" / "wire" / "molecule" / "unusable" -> structures (slab, wire: periodic
    # directions with a vacuum gap count as open; a molecule may sit in a periodic box)
    keys: LabelKeys  # every key of each kind found, the likeliest first
    key_frames: dict  # key -> frames holding it
    energy_unit: str  # the unit the energies were read in
    energy_unit_given: bool  # False: assumed (eV), the file cannot tell
    energy_per_atom: Spread | None  # eV/atom
    energy_residual: float | None  # eV/atom: robust spread of energy per atom after a per-species baseline
    force_rms: float | None  # eV/A, every component of every atom
    force_max: float | None  # eV/A, largest |component|
    stress_max: float | None  # eV/A^3, largest |component| of the stress (or virial / volume)
    unit_hints: list  # "looks like ..." lines
    neighbours: Neighbours | None
    suspicious: list  # Suspicious, only rules that found something
    notes: list  # other findings, one line each
    timings: dict  # step -> seconds
    checked: list = field(default_factory=list)  # the rules that were checked, found something or not

    @property
    def energy_key(self) -> str | None:
        """The energy key used: the one in most frames (the likeliest name first among equals)."""
        return self._most_held(self.keys.energy)

    @property
    def forces_key(self) -> str | None:
        return self._most_held(self.keys.forces)

    @property
    def stress_key(self) -> str | None:
        return self._most_held(self.keys.stress)

    @property
    def virial_key(self) -> str | None:
        """None when a stress is found (it is used instead)."""
        return None if self.keys.stress else self._most_held(self.keys.virial)

    def _most_held(self, keys) -> str | None:
        return max(keys, key=lambda k: self.key_frames.get(k, 0)) if keys else None

    def targets(self) -> dict:
        """The ``targets:`` of a dataset entry in an options file that reads the labels found."""
        if self.energy_key is None:
            return {}
        energy = {"key": self.energy_key, "unit": self.energy_unit}
        energy["forces"] = {"key": self.forces_key} if self.forces_key else False
        if self.stress_key:
            energy["stress"] = {"key": self.stress_key}
        elif self.virial_key:
            energy["virial"] = {"key": self.virial_key}
        else:
            energy["stress"] = False
        return {"energy": energy}

    def atoms_per_pass(self, memory_gb: float, cutoff: float) -> int | None:
        """Estimated atoms of one training pass (forward and double backward) that fit in ``memory_gb``."""
        if self.neighbours is None:
            return None
        per_atom = TRAINING_BYTES_PER_EDGE * self.neighbours.mean_at(cutoff)
        return int(memory_gb * GB // per_atom) if per_atom > 0 else None

    def frame_name(self, frame: FrameRef) -> str:
        """``index`` for a single file, ``file:index`` for several."""
        return str(frame.index) if len(self.files) == 1 else f"{self.files[frame.file]}:{frame.index}"
