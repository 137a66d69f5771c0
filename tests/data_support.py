"""Helpers of the data tests (and of benchmarks/bench_inspect.py): labelled frames written under other keys or
in other units."""

from __future__ import annotations

from ase.calculators.singlepoint import SinglePointCalculator


def relabelled(frames, energy: str | None = "energy", forces: str | None = "forces", stress: str | None = "stress",
               virial: str | None = None) -> list:
    """Copies of calculator-labelled ``frames`` with their labels in ``info`` / ``arrays`` under these keys (None:
    left out). A ``virial`` is written as -stress x volume; a frame without a stress gets neither."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        if energy:
            copy.info[energy] = atoms.get_potential_energy()
        if forces:
            copy.arrays[forces] = atoms.get_forces()
        if "stress" in atoms.calc.results:
            if stress:
                copy.info[stress] = atoms.get_stress(voigt=False)
            if virial:
                copy.info[virial] = -atoms.get_stress(voigt=False) * atoms.get_volume()
        out.append(copy)
    return out


def scaled(atoms, factor: float):
    """A copy whose energy, forces (and stress) are ``factor`` times the original's: a frame in another unit."""
    copy = atoms.copy()
    results = {key: atoms.calc.results[key] * factor for key in ("energy", "forces", "stress") if key in atoms.calc.results}
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


def overlapping(atoms, distance: float):
    """A copy with atom 1 moved to ``distance`` A from atom 0, labels kept (a corrupted geometry)."""
    copy = atoms.copy()
    copy.positions[1] = copy.positions[0] + [distance, 0.0, 0.0]
    copy.calc = SinglePointCalculator(copy, **atoms.calc.results)
    return copy
