"""One labelled atomic structure, in the units the model uses (eV, Angstrom).

Targets are stored as the model sees them:
- ``energy``: total energy (eV)
- ``forces``: (n_atoms, 3) forces (eV/A), i.e. -dE/dr
- ``stress``: (3, 3) stress (eV/A^3) in ASE's sign convention, stress = (1/V) dE/d(strain);
  ``None`` when the structure has no stress label (open molecules, or no stress in the file).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Structure:
    numbers: np.ndarray  # (n,) int64 atomic numbers
    positions: np.ndarray  # (n, 3) float64, Angstrom
    cell: np.ndarray  # (3, 3) float64, rows are lattice vectors; zeros for open boundaries
    pbc: np.ndarray  # (3,) bool
    energy: float | None = None
    forces: np.ndarray | None = None  # (n, 3) float64
    stress: np.ndarray | None = None  # (3, 3) float64
    source: str = ""  # "file.xyz:frame" for error messages
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell))) if self.pbc.all() else 0.0

    @classmethod
    def from_atoms(cls, atoms, energy=None, forces=None, stress=None, source: str = "") -> "Structure":
        """Build from an ``ase.Atoms``; labels are passed in explicitly (the reader decides keys)."""
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64),
            cell=np.asarray(atoms.cell.array, dtype=np.float64),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            energy=None if energy is None else float(energy),
            forces=None if forces is None else np.asarray(forces, dtype=np.float64).reshape(-1, 3),
            stress=None if stress is None else np.asarray(stress, dtype=np.float64).reshape(3, 3),
            source=source,
        )

    def to_atoms(self):
        import ase

        return ase.Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
