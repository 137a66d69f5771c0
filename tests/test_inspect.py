"""``inspect_data`` and ``nanopet-tune inspect`` on tiny files with known answers: every key, unit hint and
planted defect found, nothing on clean data, one-line errors."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from nanopet.data import generate_emt_alloy
from nanopet.data.inspection import FrameRef, inspect_data, render_report

from data_support import overlapping, relabelled, scaled

KCAL_PER_EV = 23.0605
REFERENCE = {1: -13.6, 6: -1030.0, 8: -2040.0}  # eV per atom, of the size xtb's are


def synthetic_molecules(n: int, seed: int = 0) -> list:
    """Water, ethanol and benzene snapshots with energies of a per-species reference plus a little noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = molecule(("H2O", "CH3CH2OH", "C6H6")[k % 3])
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        energy = sum(REFERENCE[z] for z in atoms.numbers) + rng.normal(0, 0.05) * len(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=rng.normal(0, 1.0, (len(atoms), 3)))
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def emt():
    return generate_emt_alloy(12, seed=5)


def kinds(report) -> dict:
    return {found.kind: found.frames for found in report.suspicious}


def test_clean_builtin_emt_finds_keys_and_nothing_suspicious(tmp_path, emt):
    path = tmp_path / "emt.xyz"
    ase.io.write(path, emt, format="extxyz")
    report = inspect_data([path])
    assert (report.structures, report.atoms, report.atoms_per_structure) == (12, 384, (32, 32.0, 32))
    assert [s.symbol for s in report.species] == ["Cu", "Au"] and report.geometry == {"periodic": 12}
    assert (report.energy_key, report.forces_key, report.stress_key, report.virial_key) == ("energy", "forces", "stress", None)
    assert report.energy_unit == "eV" and not report.energy_unit_given
    assert report.suspicious == [] and report.unit_hints == [] and report.notes == []
    assert 0.5 < report.force_rms < 3.0 and report.stress_max < 1.0
    rows = {row.cutoff: row for row in report.neighbours.rows}
    assert abs(rows[3.0].mean - 12.0) < 1.0  # fcc: 12 nearest neighbours
    assert 4.0 < report.neighbours.cutoff_for_20 < 5.0 and rows[4.0].mean < 20 < rows[5.0].mean
    # fcc Cu-Au: nearest neighbours at 2.55-2.88 A, the second shell at 3.61-4.08 A, the third from 4.42 A
    first, second = report.neighbours.shell_ends
    assert 3.0 < first < 3.6 and 4.05 < second < 4.45
    assert f"neighbour shells (peaks of the pair distribution) end at {first:g} and {second:g} A" in render_report(report)
    assert report.neighbours.sampled == 12
    assert report.atoms_per_pass(16, 5.0) > report.atoms_per_pass(16, 6.0) > 0
    assert report.targets() == {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"},
                                           "stress": {"key": "stress"}}}


def test_planted_defects_are_found_by_frame(tmp_path, emt):
    frames = list(emt)
    frames[2] = overlapping(emt[2], 0.3)
    frames[5] = scaled(emt[5], 1000.0)  # in meV
    glitch = emt[7].get_forces().copy()
    glitch[4] = [400.0, 0.0, 0.0]
    frames[7] = emt[7].copy()
    frames[7].calc = SinglePointCalculator(frames[7], energy=emt[7].get_potential_energy(), forces=glitch,
                                           stress=emt[7].get_stress())
    frames.append(emt[3])  # frame 12 duplicates frame 3
    path = tmp_path / "planted.xyz"
    ase.io.write(path, frames, format="extxyz")
    report = inspect_data(path)
    found = kinds(report)
    assert found["overlapping atoms"] == [FrameRef(0, 2)]
    assert found["duplicated frames"] == [FrameRef(0, 12)]
    assert found["energy per atom outliers"] == [FrameRef(0, 5)]
    assert found["force outliers"] == [FrameRef(0, 5), FrameRef(0, 7)]  # the meV frame's forces too
    text = render_report(report)
    assert "suspicious frames (0-based indexes)" in text
    assert "    2: atoms 0 and 1" in text and "12: same structure as frame 3" in text


def test_a_frame_in_kcal_per_mol_among_ev_frames_looks_like_kcal_per_mol(tmp_path):
    frames = synthetic_molecules(30)
    frames[17] = scaled(frames[17], KCAL_PER_EV)
    path = tmp_path / "mixed.xyz"
    ase.io.write(path, frames, format="extxyz")
    report = inspect_data(path)
    outliers = next(found for found in report.suspicious if found.kind == "energy per atom outliers")
    assert outliers.frames == [FrameRef(0, 17)]
    assert "looks like kcal/mol" in outliers.details[FrameRef(0, 17)]
    assert report.geometry == {"molecule": 30} and report.stress_key is None
    assert report.neighbours.cutoff_for_20 is None and 3.0 < report.neighbours.molecule_diameter < 7.0
    assert report.targets()["energy"]["stress"] is False


def test_a_file_in_kcal_per_mol_is_flagged_and_the_unit_can_be_given(tmp_path):
    path = tmp_path / "kcal.xyz"
    ase.io.write(path, [scaled(atoms, KCAL_PER_EV) for atoms in synthetic_molecules(9)], format="extxyz")
    assumed = inspect_data(path)
    assert any("looks large for eV/A" in hint and "--energy-unit kcal/mol" in hint for hint in assumed.unit_hints)
    given = inspect_data(path, energy_unit="kcal/mol")
    assert given.energy_unit_given and given.unit_hints == []
    assert given.force_rms == pytest.approx(assumed.force_rms / KCAL_PER_EV, rel=1e-4)
    assert "unit kcal/mol (given)" in render_report(given)
    assert given.targets()["energy"]["unit"] == "kcal/mol"


def test_keys_under_other_names_and_a_virial_are_found(tmp_path, emt):
    path = tmp_path / "keys.xyz"
    ase.io.write(path, relabelled(emt[:4], energy="REF_energy", forces="force", stress=None, virial="virial"),
                 format="extxyz")
    report = inspect_data(path)
    assert (report.energy_key, report.forces_key, report.stress_key, report.virial_key) == ("REF_energy", "force", None, "virial")
    assert report.targets() == {"energy": {"key": "REF_energy", "unit": "eV", "forces": {"key": "force"},
                                           "virial": {"key": "virial"}}}
    assert report.stress_max == pytest.approx(np.abs(emt[0].get_stress()).max(), rel=0.5)
    assert any("under 'force', not 'forces'" in note for note in report.notes)


def test_several_files_are_read_together_and_frames_named_by_file(tmp_path, emt):
    ase.io.write(tmp_path / "a.xyz", emt[:3], format="extxyz")
    ase.io.write(tmp_path / "b.xyz", emt[:2], format="extxyz")
    report = inspect_data([tmp_path / "a.xyz", tmp_path / "b.xyz"])
    assert report.structures == 5 and kinds(report)["duplicated frames"] == [FrameRef(1, 0), FrameRef(1, 1)]
    assert report.frame_name(FrameRef(1, 0)) == f"{tmp_path / 'b.xyz'}:0"


def test_cli_prints_the_table_and_errors_are_one_line(tmp_path, emt, capsys, monkeypatch):
    from nanopet.cli import main

    monkeypatch.chdir(tmp_path)
    ase.io.write(tmp_path / "emt.xyz", emt[:3], format="extxyz")
    assert main(["inspect", "emt.xyz", "--memory-gb", "8"]) == 0
    out = capsys.readouterr().out
    for fragment in ("structures           3 (96 atoms)", "unit eV assumed", "atoms per pass in 8 GB", "cutoff (A)",
                     "the median atom has 20 neighbours within", "none found: unusable values"):
        assert fragment in out, out
    (tmp_path / "broken.xyz").write_text((tmp_path / "emt.xyz").read_text() + "32\nenergy=1\nCu 0 0 0\n")
    for args, fragments in ((["nothere.xyz"], ["nothere.xyz: file not found"]),
                            (["broken.xyz"], ["broken.xyz: frame 3 (line 103): cannot read it"]),
                            (["emt.xyz", "--energy-unit", "kcal"], ["--energy-unit", "did you mean 'kcal/mol'"])):
        assert main(["inspect", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(fragment in err[0] for fragment in fragments), err


def test_slabs_boxed_molecules_unusable_values_and_short_stresses(tmp_path):
    from ase.build import fcc111

    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0, periodic=True)
    boxed = molecule("H2O", vacuum=8.0, pbc=True)
    text = "".join(f"{len(atoms)}\n{comment}\n" + "".join(f"{s} {x} {y} {z}\n" for s, (x, y, z) in
                                                          zip(atoms.get_chemical_symbols(), atoms.positions))
                   for atoms, comment in ((slab, 'Lattice="{}" energy=-40.0 stress="1 2 3 4 5 6"'),
                                          (boxed, 'Lattice="{}" energy=nan')))
    cells = [" ".join(str(v) for v in atoms.cell.array.reshape(-1)) for atoms in (slab, boxed)]
    (tmp_path / "mixed.xyz").write_text(text.replace("{}", cells[0], 1).replace("{}", cells[1], 1))
    report = inspect_data(tmp_path / "mixed.xyz")
    assert report.geometry == {"slab": 1, "molecule": 1}
    assert kinds(report)["unusable values"] == [FrameRef(0, 1)]
    assert any("'stress' is given as 6 numbers" in note for note in report.notes)


def test_neighbour_shells_end_between_the_shells_of_a_crystal():
    from ase.build import bulk

    from nanopet.data.inspection.neighbours import neighbour_counts

    frames = []
    for seed in range(4):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    first, second = neighbour_counts(frames).shell_ends
    # diamond silicon: 4 nearest neighbours at 2.35 A, 12 second neighbours at 3.84 A, 12 third at 4.50 A
    assert 2.4 < first < 3.8 and 3.9 < second < 4.5
