"""ASE calculator: a trained NanoPET as energy, forces and stress for any ``ase.Atoms``.

Neighbour lists and batching come from the same code the trainer uses; the composition
baseline (and ZBL, if trained with it) is included, so energies are total energies in eV.
``device="auto"`` (the default, as in options files) runs on the GPU when one is visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from nanopet.checkpoints import model_from_checkpoint
from nanopet.data.batch import GraphDataset
from nanopet.data.structure import Structure
from nanopet.model import NanoPET
from nanopet.runtime import select_device


class NanoPETCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, checkpoint: str | Path | NanoPET, device: str = "auto", **kwargs):
        super().__init__(**kwargs)
        model = checkpoint if isinstance(checkpoint, NanoPET) else model_from_checkpoint(checkpoint)
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.dtype = next(self.model.parameters()).dtype

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", **kwargs) -> "NanoPETCalculator":
        return cls(path, device=device, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        structure = Structure.from_atoms(self.atoms)
        batch = GraphDataset([structure], self.model.cutoff).batch([0], dtype=self.dtype).to(self.device)
        want_stress = "stress" in properties and bool(structure.pbc.all())
        if "stress" in properties and not want_stress:
            raise PropertyNotImplementedError("stress needs a periodic cell in all three directions")
        results = self.model(batch, forces=True, stress=want_stress)
        energy = float(results["energy"].double().item())
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = results["forces"].double().cpu().numpy()
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(results["stress"][0].double().cpu().numpy())
        if "energies" in properties:
            self.results["energies"] = self._atomic_energies(batch)

    def _atomic_energies(self, batch) -> np.ndarray:
        with torch.no_grad():
            per_atom = self.model.atomic_energies(batch.positions, batch.cells, batch)
            per_atom = per_atom + self.model.composition_weights[self.model.species(batch.numbers)]
        return per_atom.double().cpu().numpy()
