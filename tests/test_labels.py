"""Which keys hold what (``nanopet.data.labels``), and the reader's one-line note about labels no target uses."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule

from nanopet.data import generate_emt_alloy, generate_xtb_molecules, load_splits, read_structures
from nanopet.data.extxyz import read_frames
from nanopet.data.labels import LabelKeys, dataset_label_keys, label_keys

from data_support import relabelled


def read_frames_of(path, *frames):
    ase.io.write(path, list(frames), format="extxyz")
    return read_frames(path)


@pytest.fixture(scope="module")
def emt():
    return generate_emt_alloy(4, seed=2)


def test_label_keys_put_the_conventional_name_first(tmp_path):
    atoms = bulk("Cu", cubic=True)
    atoms.info.update(free_energy=1.0, energy=2.0, E=3.0, dft_virial=np.arange(9.0).reshape(3, 3), stress_gpa=np.ones(6),
                      label="energy", is_energy=True)
    n = len(atoms)
    for key in ("dft_forces", "forces", "gradients", "velocities", "momenta"):
        atoms.arrays[key] = np.ones((n, 3))
    atoms.arrays["charges_int"] = np.ones((n, 3), dtype=int)
    (frame,) = read_frames_of(tmp_path / "keys.xyz", atoms)
    assert label_keys(frame) == LabelKeys(energy=("energy", "free_energy", "E"), forces=("forces", "dft_forces", "gradients"),
                                          stress=("stress_gpa",), virial=("dft_virial",))


def test_dataset_label_keys_is_the_union_over_frames(tmp_path):
    water, copper = molecule("H2O"), bulk("Cu", cubic=True)
    water.info["energy"] = 1.0
    copper.arrays["force"] = np.zeros((len(copper), 3))
    assert dataset_label_keys(read_frames_of(tmp_path / "two.xyz", water, copper)) == LabelKeys(energy=("energy",), forces=("force",))


def test_builtin_data_gives_no_note(tmp_path, emt, capsys):
    molecules = generate_xtb_molecules(2, seed=0)
    for name, frames in (("emt.xyz", emt), ("molecules.xyz", molecules)):
        ase.io.write(tmp_path / name, frames, format="extxyz")
        assert len(read_structures(str(tmp_path / name))) == len(frames)
    assert capsys.readouterr().err == ""


def test_forces_under_another_key_give_one_note_naming_it(tmp_path, emt, capsys):
    ase.io.write(tmp_path / "force.xyz", relabelled(emt, forces="force"), format="extxyz")
    structures = read_structures(str(tmp_path / "force.xyz"))
    assert all(s.forces is None for s in structures) and all(s.stress is not None for s in structures)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"note: training_set {tmp_path / 'force.xyz'} holds a per-atom 3-vector 'force' that no target uses; "
                     "to train on it as forces set targets: energy: {forces: {key: force}}"]
    # set as the note says: read, and no note
    read_structures({"systems": str(tmp_path / "force.xyz"), "targets": {"energy": {"forces": {"key": "force"}}}})
    assert capsys.readouterr().err == ""


def test_unused_stress_and_forces_share_one_line_and_switched_off_labels_are_quiet(tmp_path, emt, capsys):
    ase.io.write(tmp_path / "both.xyz", relabelled(emt, forces="dft_forces", stress="dft_stress"), format="extxyz")
    read_structures(str(tmp_path / "both.xyz"), name="validation_set")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "validation_set" in line and "'dft_forces'" in line and "a stress 'dft_stress'" in line
    assert line.endswith("set targets: energy: {forces: {key: dft_forces}, stress: {key: dft_stress}}")
    read_structures({"systems": str(tmp_path / "both.xyz"), "targets": {"energy": {"forces": False, "stress": False}}})
    assert capsys.readouterr().err == ""


def test_a_split_dataset_is_noted_once(tmp_path, emt, capsys):
    ase.io.write(tmp_path / "force.xyz", relabelled(emt * 2, forces="force"), format="extxyz")
    load_splits({"training_set": str(tmp_path / "force.xyz"), "validation_set": 0.25, "test_set": 0.25})
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
