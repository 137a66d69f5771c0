"""``inspect_data(paths) -> DataReport``: read structure files once and say what they hold.

One streaming pass (``collect``) reads every frame; afterwards the label statistics, the unit hints, the
neighbour counts of a seeded sample and the suspicious-frame rules work on what it kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..read import _energy_units, _unit_factor
from . import suspicious
from .collect import collect
from .neighbours import CANDIDATE_CUTOFFS, neighbour_counts
from .report import DataReport, Species, Spread

NEIGHBOUR_SAMPLE = 500  # structures whose neighbour lists are computed
LARGE_FORCE_RMS = 20.0  # eV/A: larger looks like another energy unit
SMALL_FORCE_RMS = 0.01  # eV/A
LARGE_ENERGY_SPREAD = 1.0  # eV/atom, after the per-species baseline
LARGE_STRESS = 1.0  # eV/A^3 (160 GPa)
EV_PER_A3_IN_GPA = 160.21766


def inspect_data(paths, energy_unit: str | None = None, sample_size: int = NEIGHBOUR_SAMPLE, seed: int = 0,
                 cutoffs=CANDIDATE_CUTOFFS) -> DataReport:
    """Inspect one or more structure files (extended XYZ read fast; other formats through ase).

    ``energy_unit``: the unit of the energies in the files (eV when None: the files cannot tell, so it is
    assumed, and the report says so); forces are in that unit per A, stress per A^3. Neighbours are counted
    on a ``seed``-ed random sample of ``sample_size`` structures. A missing file or an unreadable frame is an
    ``InputError`` naming it.
    """
    started = time.perf_counter()
    paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise InputError("inspect: give at least one structure file")
    factor = _unit_factor(energy_unit or "eV", _energy_units(), "energy unit (--energy-unit)")
    collected = collect(paths, sample_size, seed)
    read = time.perf_counter()
    facts, keys = collected.facts, collected.keys
    if not facts:
        raise InputError(f"{paths[0]}: empty file (no frames)")

    n_atoms = np.array([f.n_atoms for f in facts])
    report = DataReport(
        files=paths, structures=len(facts), atoms=int(n_atoms.sum()),
        atoms_per_structure=(int(n_atoms.min()), float(np.median(n_atoms)), int(n_atoms.max())),
        species=_species(facts), geometry=_geometry(facts), keys=keys, key_frames=collected.key_frames,
        energy_unit=energy_unit or "eV", energy_unit_given=energy_unit is not None,
        energy_per_atom=None, energy_residual=None, force_rms=None, force_max=None, stress_max=None,
        unit_hints=[], neighbours=None, suspicious=[], notes=[], timings={},
    )
    checks = [suspicious.unreadable_values(facts), suspicious.overlapping_atoms(facts),
              suspicious.duplicated_frames(facts, report.frame_name)]
    report.checked = ["unusable values", "overlapping atoms", "duplicated frames"]
    if report.energy_key:
        energies = np.array([f.energies.get(report.energy_key, np.nan) for f in facts]) * factor
        finite = np.isfinite(energies)
        if finite.any():
            per_atom = energies[finite] / n_atoms[finite]
            report.energy_per_atom = Spread(float(per_atom.mean()), float(per_atom.std()), float(per_atom.min()),
                                            float(per_atom.max()))
        outliers, report.energy_residual = suspicious.energy_outliers(
            [f.ref for f in facts], energies, _compositions(facts, report.species), n_atoms)
        checks.append(outliers)
        report.checked.append("energy per atom outliers")
    if report.forces_key:
        key = report.forces_key
        squares, components = (sum(f.forces[key][k] for f in facts if key in f.forces) for k in (0, 1))
        if components and np.isfinite(squares):
            report.force_rms = float(np.sqrt(squares / components)) * factor
            report.force_max = max(f.forces[key][2] for f in facts if key in f.forces) * factor
            checks.append(suspicious.force_outliers(facts, key, factor))
            report.checked.append("force outliers")
    stress_key = report.stress_key or report.virial_key
    if stress_key:
        values = [f.stresses[stress_key] for f in facts if stress_key in f.stresses]
        report.stress_max = float(np.nanmax(values)) * factor if np.isfinite(values).any() else None
    report.suspicious = [check for check in checks if check is not None]
    report.unit_hints = unit_hints(report)
    report.notes = _notes(report, collected)
    checked = time.perf_counter()
    report.neighbours = neighbour_counts(collected.sample, cutoffs)
    done = time.perf_counter()
    report.timings = {"read": read - started, "checks": checked - read, "neighbours": done - checked, "total": done - started}
    return report


def unit_hints(report: DataReport) -> list:
    """Lines saying which values look implausible in the assumed units, and what unit they look like."""
    hints, unit = [], report.energy_unit
    if report.force_rms is not None and report.force_rms > LARGE_FORCE_RMS:
        hints.append(f"forces: RMS {report.force_rms:.3g} eV/A looks large for eV/A (DFT forces are rarely above "
                     f"~10 eV/A); kcal/mol/A is 23x eV/A and kJ/mol/A 96x: if so, set --energy-unit kcal/mol or kJ/mol")
    if report.force_rms is not None and 0 < report.force_rms < SMALL_FORCE_RMS:
        hints.append(f"forces: RMS {report.force_rms:.3g} eV/A looks small: relaxed structures, or Hartree/Bohr "
                     "(51x smaller than eV/A)?")
    if report.energy_residual is not None and report.energy_residual > LARGE_ENERGY_SPREAD:
        hints.append(f"energies: per atom they spread by {report.energy_residual:.3g} eV/atom around a per-species "
                     f"baseline, large for {unit}; another unit (kcal/mol is 23x eV), or mixed reference energies?")
    if report.stress_max is not None and report.stress_max > LARGE_STRESS:
        hints.append(f"stress: largest component {report.stress_max:.3g} eV/A^3 ({report.stress_max * EV_PER_A3_IN_GPA:.0f}"
                     " GPa) looks large; stored in GPa or kbar? Extended XYZ stress is eV/A^3")
    return hints


def _notes(report: DataReport, collected) -> list:
    notes = []
    for kind, used in (("energy", report.energy_key), ("forces", report.forces_key)):
        found = getattr(report.keys, kind)
        if len(found) > 1:
            notes.append(f"several {kind} keys: {', '.join(found)}; '{used}' (in the most frames) is used here")
        if used and report.key_frames.get(used, 0) < report.structures:
            missing = report.structures - report.key_frames.get(used, 0)
            notes.append(f"{kind} key '{used}' is missing in {missing} of {report.structures} frames")
    if report.forces_key and report.forces_key != "forces":
        notes.append(f"forces are under '{report.forces_key}', not 'forces': set targets: energy: "
                     f"{{forces: {{key: {report.forces_key}}}}}")
    if report.energy_key and report.energy_key != "energy":
        notes.append(f"the energy is under '{report.energy_key}', not 'energy': set targets: energy: {{key: {report.energy_key}}}")
    if report.energy_key is None:
        notes.append("no energy found (a number in the comment line whose name contains 'energy'): "
                     "nothing to train on; eval still predicts")
    for key in sorted(collected.short_tensors):
        notes.append(f"'{key}' is given as 6 numbers in some frames: train reads extended XYZ with ase, which "
                     f"needs 9 (3x3 in Fortran order) for {key}")
    return notes


def _species(facts) -> list:
    from ase.data import chemical_symbols

    atoms, structures = {}, {}
    for f in facts:
        for z, count in zip(f.species.tolist(), f.counts.tolist()):
            atoms[z] = atoms.get(z, 0) + count
            structures[z] = structures.get(z, 0) + 1
    return [Species(chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z), z, atoms[z], structures[z])
            for z in sorted(atoms)]


def _geometry(facts) -> dict:
    counts = {}
    for f in facts:
        counts[f.geometry] = counts.get(f.geometry, 0) + 1
    return {kind: counts[kind] for kind in ("periodic", "slab", "wire", "molecule", "unusable") if kind in counts}


def _compositions(facts, species) -> np.ndarray:
    column = {s.number: k for k, s in enumerate(species)}
    matrix = np.zeros((len(facts), len(species)))
    for row, f in enumerate(facts):
        matrix[row, [column[z] for z in f.species.tolist()]] = f.counts
    return matrix
