"""The fast extended-XYZ reader: the same frames as ``ase.io.read`` (calculator results put back where the file
had them), odd files, the ase fallback, and one-line errors naming the file, frame and line."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from nanopet.data import generate_emt_alloy
from nanopet.data.extxyz import frame_from_atoms, iter_frames, read_frames
from nanopet.errors import InputError

ODD = """3
Lattice="5 0 0 0 5 0 0 0 6" Properties=species:S:1:pos:R:3:forces:R:3:tag:I:1:fixed:L:1:label:S:1:dft_force:R:3 energy=-1.5 name="hello world" pbc="T T F" flag note='single quoted' braces={1 2 3} esc="say \\"hi\\"" virial="1 2 3 4 5 6 7 8 9" count=7 x = 3.5
h 0 0 0 0.1 0.2 0.3 1 T a 1 2 3
O 0 0 1.0 0.1 0.2 0.3 2 F bb 4 5 6
H 0 1.0 0 0.1 0.2 0.3 3 T c 7 8 9
2
Properties=species:S:1:pos:R:3 pbc="F F F" E=2
C 0 0 0
C 0 0 1.2
2
Plain comment line
C 0 0 0
C 0 0 1.2
2
Lattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3:Z:I:1 stress="1 2 3 2 5 6 3 6 9"
Cu 0 0 0 29
Cu 2 2 2 29
"""


def assert_same_frames(path):
    """Every frame of ``path`` as ``read_frames`` gives it equals ``ase.io.read``'s."""
    ours, theirs = read_frames(path), ase.io.read(path, ":")
    assert len(ours) == len(theirs)
    for index, (frame, atoms) in enumerate(zip(ours, theirs)):
        reference = frame_from_atoms(atoms, index)
        assert frame.index == index
        np.testing.assert_array_equal(frame.numbers, reference.numbers)
        np.testing.assert_array_equal(frame.positions, reference.positions)
        np.testing.assert_array_equal(frame.cell, reference.cell)
        np.testing.assert_array_equal(frame.pbc, reference.pbc)
        assert frame.info.keys() == reference.info.keys() and frame.arrays.keys() == reference.arrays.keys()
        for key, value in frame.info.items():
            expected = reference.info[key]
            if key == "stress":  # ase keeps a 3x3 stress as Voigt in its calculator
                value = full(value)
                expected = full(expected)
            if isinstance(value, str):
                assert value == expected, key
            else:
                np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=key)
        for key, value in frame.arrays.items():
            np.testing.assert_array_equal(value, reference.arrays[key], err_msg=key)
    return ours


def full(stress):
    stress = np.asarray(stress, dtype=float)
    if stress.size == 6:
        xx, yy, zz, yz, xz, xy = stress
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return stress.reshape(3, 3)


def test_builtin_emt_frames_equal_ase(tmp_path):
    path = tmp_path / "emt.xyz"
    ase.io.write(path, generate_emt_alloy(4, seed=1), format="extxyz")
    frames = assert_same_frames(path)
    assert frames[0].info["stress"].shape == (3, 3) and frames[0].arrays["forces"].shape == (32, 3)
    assert [frame.line for frame in frames] == [1, 35, 69, 103]


def test_molecules_and_extra_columns_equal_ase(tmp_path):
    frames = []
    for name in ("CH3CH2OH", "H2O", "C6H6"):
        atoms = molecule(name)
        atoms.arrays["dft_forces"] = np.random.default_rng(0).normal(size=(len(atoms), 3))
        atoms.arrays["tags_i"] = np.arange(len(atoms))
        atoms.info["smiles"] = "C C O"
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 * len(atoms), forces=np.ones((len(atoms), 3)))
        frames.append(atoms)
    path = tmp_path / "molecules.xyz"
    ase.io.write(path, frames, format="extxyz")
    ours = assert_same_frames(path)
    assert not ours[0].pbc.any() and not ours[0].cell.any()
    assert ours[1].info == {"smiles": "C C O", "energy": -30.0}


def test_odd_comment_lines_and_columns_equal_ase(tmp_path):
    path = tmp_path / "odd.xyz"
    path.write_text(ODD)
    frames = assert_same_frames(path)
    first = frames[0]
    assert first.info["name"] == "hello world" and first.info["note"] == "single quoted" and first.info["esc"] == 'say "hi"'
    assert first.info["flag"] is True and first.info["x"] == 3.5 and first.info["count"] == 7
    np.testing.assert_array_equal(first.pbc, [True, True, False])
    np.testing.assert_array_equal(first.numbers, [1, 8, 1])
    assert first.arrays["label"].tolist() == ["a", "bb", "c"] and first.arrays["fixed"].tolist() == [True, False, True]
    assert first.arrays["dft_force"].shape == (3, 3) and first.arrays["tag"].dtype.kind == "i"
    assert not frames[1].pbc.any() and frames[2].info == {"Plain": True, "comment": True, "line": True}
    assert frames[3].pbc.all() and frames[3].cell[0, 0] == 4.0 and frames[3].info["stress"].shape == (3, 3)


def test_a_stress_of_six_numbers_is_kept_though_ase_refuses_it(tmp_path):
    path = tmp_path / "six.xyz"
    path.write_text('1\nLattice="3 0 0 0 3 0 0 0 3" energy=1.0 stress="1 2 3 4 5 6"\nAu 0 0 0\n')
    with pytest.raises(ValueError):
        ase.io.read(path)
    (frame,) = read_frames(path)
    np.testing.assert_array_equal(frame.info["stress"], [1, 2, 3, 4, 5, 6])


def test_frames_it_cannot_parse_go_to_ase_from_there(tmp_path):
    atoms = bulk("Cu", cubic=True)
    atoms.info["settings"] = {"kpoints": [2, 2, 2], "code": "vasp"}  # written as _JSON, which ase decodes
    plain = bulk("Au", cubic=True)
    path = tmp_path / "json.xyz"
    ase.io.write(path, [plain, atoms, plain], format="extxyz")
    frames = read_frames(path)
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[1].info["settings"] == {"kpoints": [2, 2, 2], "code": "vasp"}
    traj = tmp_path / "frames.traj"
    ase.io.write(traj, [plain, atoms])
    assert [len(f) for f in read_frames(traj)] == [4, 4]


def test_errors_name_the_file_frame_and_line(tmp_path):
    good = "1\nenergy=1\nAu 0 0 0\n"
    broken = tmp_path / "broken.xyz"
    broken.write_text(good + good + "3\nenergy=2\nAu 0 0 0\nAu 1 1 1\n")
    with pytest.raises(InputError, match=r"broken.xyz: frame 2 \(line 7\): cannot read it") as error:
        list(iter_frames(broken))
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="nothere.xyz: file not found"):
        list(iter_frames(tmp_path / "nothere.xyz"))
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(InputError, match="empty file"):
        list(iter_frames(tmp_path / "empty.xyz"))
