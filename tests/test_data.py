"""Tests of the built-in EMT dataset generator and of metatrain-style dataset reading."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from nanopet.data import builtin_dataset, generate_emt_alloy, load_splits, read_structures, write_emt_alloy
from nanopet.data import builtin as builtin_module
from nanopet.errors import InputError

# ----------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def emt_frames():
    """4 structures: 2 rattled and 2 MD snapshots."""
    return generate_emt_alloy(4, seed=3)


def labelled_copper(n_frames=3, energy=1.0, **extra):
    """Small periodic Cu frames with energy/forces/stress in a SinglePointCalculator."""
    frames = []
    for i in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += 0.01 * i
        forces = np.full((len(atoms), 3), 0.1 * (i + 1))
        stress = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) * 1e-3
        atoms.calc = SinglePointCalculator(atoms, energy=energy + i, forces=forces, stress=stress)
        frames.append(atoms)
    return frames


def write(path, frames):
    ase.io.write(path, frames, format="extxyz")
    return path


def assert_input_error(dataset, *fragments, base_dir="."):
    with pytest.raises(InputError) as error:
        read_structures(dataset, base_dir=base_dir)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


# ----------------------------------------------------------------------------------------------
# EMT generator


def test_generator_is_deterministic_by_seed(emt_frames):
    again = generate_emt_alloy(4, seed=3)
    other = generate_emt_alloy(4, seed=4)
    for a, b in zip(emt_frames, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)
        assert a.get_potential_energy() == b.get_potential_energy()
    assert not np.allclose(emt_frames[0].positions, other[0].positions)
    assert emt_frames[-1].get_potential_energy() != other[-1].get_potential_energy()


def test_generator_labels_are_present_and_finite(emt_frames):
    assert [a.info["sampling"] for a in emt_frames] == ["rattled", "rattled", "md", "md"]
    for atoms in emt_frames:
        assert len(atoms) == 32 and atoms.pbc.all()
        assert set(atoms.get_chemical_symbols()) <= {"Cu", "Au"}
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (32, 3) and np.isfinite(atoms.get_forces()).all()
        assert atoms.get_stress().shape == (6,) and np.isfinite(atoms.get_stress()).all()


def test_generator_progress_callback():
    calls = []
    generate_emt_alloy(3, seed=0, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("index", [0, 3])  # one rattled, one MD snapshot
def test_generator_labels_equal_emt(emt_frames, index):
    labelled = emt_frames[index]
    fresh = labelled.copy()
    fresh.calc = EMT()
    np.testing.assert_allclose(fresh.get_forces(), labelled.get_forces(), atol=1e-10)
    np.testing.assert_allclose(fresh.get_potential_energy(), labelled.get_potential_energy(), atol=1e-10)
    np.testing.assert_allclose(fresh.get_stress(), labelled.get_stress(), atol=1e-10)


def test_generator_stress_follows_ase_sign_convention(emt_frames):
    """stress_xx = (1/V) dE/d(strain_xx), checked by finite differences."""
    atoms = emt_frames[0]
    step = 1e-5
    energies = []
    for sign in (1, -1):
        strained = atoms.copy()
        strain = np.eye(3)
        strain[0, 0] += sign * step
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        strained.calc = EMT()
        energies.append(strained.get_potential_energy())
    numeric = (energies[0] - energies[1]) / (2 * step) / atoms.get_volume()
    assert numeric == pytest.approx(atoms.get_stress()[0], rel=1e-4, abs=1e-7)


def test_write_read_round_trip_with_default_keys(tmp_path, emt_frames):
    path = write_emt_alloy(tmp_path / "emt.xyz", 4, seed=3)
    structures = read_structures(str(path))
    assert len(structures) == 4
    for index, (structure, atoms) in enumerate(zip(structures, emt_frames)):
        assert structure.source == f"{path}:{index}"
        # extxyz stores 8 decimals
        np.testing.assert_allclose(structure.positions, atoms.positions, atol=1e-7)
        np.testing.assert_allclose(structure.cell, atoms.cell.array, atol=1e-7)
        assert structure.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(structure.forces, atoms.get_forces(), atol=1e-7)
        np.testing.assert_allclose(structure.stress, atoms.get_stress(voigt=False), atol=1e-7)


def test_builtin_dataset_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOPET_CACHE", str(tmp_path))
    first = builtin_dataset("emt-alloy", 2, seed=5)
    assert (tmp_path / "emt-alloy-n2-s5.xyz").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["emt-alloy-n2-s5.xyz"]  # no temporary left

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached file should be reused")

    monkeypatch.setitem(builtin_module.GENERATORS, "emt-alloy", no_generation)
    second = builtin_dataset("emt-alloy", 2, seed=5)
    assert [s.energy for s in first] == [s.energy for s in second]
    from_config = read_structures({"systems": {"builtin": "emt-alloy", "n": 2, "seed": 5}})
    assert [s.energy for s in from_config] == [s.energy for s in first]


def test_builtin_dataset_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOPET_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="emt-aloy.*did you mean 'emt-alloy'.*known: emt-alloy, xtb-molecules"):
        builtin_dataset("emt-aloy", 2, seed=0)
    with pytest.raises(InputError, match="training_set.systems.builtin: unknown built-in dataset 'emt'"):
        read_structures({"systems": {"builtin": "emt", "n": 2}})


# ----------------------------------------------------------------------------------------------
# Reading: keys, units, paths


def test_custom_keys(tmp_path):
    frames = []
    for i, atoms in enumerate(labelled_copper(2)):
        atoms.calc = None
        atoms.info["my_E"] = -3.0 - i
        atoms.arrays["my_F"] = np.full((len(atoms), 3), 0.5)
        frames.append(atoms)
    write(tmp_path / "custom.xyz", frames)
    dataset = {
        "systems": {"read_from": "custom.xyz"},
        "targets": {"energy": {"key": "my_E", "forces": {"key": "my_F"}}},
    }
    structures = read_structures(dataset, base_dir=tmp_path)
    assert [s.energy for s in structures] == [-3.0, -4.0]
    np.testing.assert_allclose(structures[1].forces, 0.5)
    assert structures[0].stress is None


def test_gradients_are_optional_and_can_be_disabled(tmp_path):
    frames = labelled_copper(2)
    write(tmp_path / "a.xyz", frames)
    disabled = {"systems": "a.xyz", "targets": {"energy": {"forces": False, "stress": False}}}
    structure = read_structures(disabled, base_dir=tmp_path)[0]
    assert structure.forces is None and structure.stress is None
    no_gradients = [bulk("Cu", cubic=True) for _ in range(2)]
    for atoms in no_gradients:
        atoms.info["energy"] = 1.0
    write(tmp_path / "b.xyz", no_gradients)
    structure = read_structures(str(tmp_path / "b.xyz"))[0]
    assert structure.energy == 1.0 and structure.forces is None and structure.stress is None


def test_energy_and_length_unit_conversion(tmp_path):
    from ase import units

    write(tmp_path / "mev.xyz", labelled_copper(1, energy=1500.0))
    dataset = {"systems": {"read_from": "mev.xyz", "length_unit": "bohr"}, "targets": {"energy": {"unit": "meV"}}}
    structure = read_structures(dataset, base_dir=tmp_path)[0]
    raw = labelled_copper(1)[0]
    assert structure.energy == pytest.approx(1.5)
    np.testing.assert_allclose(structure.positions, raw.positions * units.Bohr)
    np.testing.assert_allclose(structure.forces, 0.1 * 1e-3 / units.Bohr)
    np.testing.assert_allclose(structure.stress, raw.get_stress(voigt=False) * 1e-3 / units.Bohr**3)


def test_virial_is_converted_to_stress(tmp_path):
    atoms = bulk("Cu", cubic=True)
    stress = np.diag([0.01, 0.02, 0.03])
    atoms.info["energy"] = 1.0
    atoms.info["virial"] = -stress * atoms.get_volume()
    write(tmp_path / "v.xyz", [atoms])
    dataset = {"systems": "v.xyz", "targets": {"energy": {"virial": {"key": "virial"}}}}
    np.testing.assert_allclose(read_structures(dataset, base_dir=tmp_path)[0].stress, stress)


def test_relative_paths_resolve_against_base_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "a.xyz", labelled_copper(2))
    assert len(read_structures("sub/a.xyz", base_dir=tmp_path)) == 2
    assert len(read_structures([{"systems": "sub/a.xyz"}, "sub/a.xyz"], base_dir=tmp_path)) == 4


# ----------------------------------------------------------------------------------------------
# Reading: one-line errors naming file, frame and key


def test_file_not_found_and_empty_and_unreadable(tmp_path):
    assert_input_error(str(tmp_path / "missing.xyz"), "missing.xyz", "not found")
    (tmp_path / "empty.xyz").write_text("")
    assert_input_error(str(tmp_path / "empty.xyz"), "empty.xyz", "empty")
    (tmp_path / "broken.xyz").write_text("3\ncomment\nCu 0 0 0\n")
    assert_input_error(str(tmp_path / "broken.xyz"), "broken.xyz", "cannot read")


def test_missing_energy_key_lists_available_keys(tmp_path):
    frames = labelled_copper(3)
    write(tmp_path / "e.xyz", frames)
    dataset = {"systems": "e.xyz", "targets": {"energy": {"key": "E"}}}
    assert_input_error(dataset, "e.xyz:0", "'E'", "available keys", "energy", "forces", base_dir=tmp_path)


def test_explicit_forces_key_missing(tmp_path):
    write(tmp_path / "f.xyz", labelled_copper(2))
    dataset = {"systems": "f.xyz", "targets": {"energy": {"forces": {"key": "my_forces"}}}}
    assert_input_error(dataset, "f.xyz:0", "my_forces", base_dir=tmp_path)


def test_default_forces_missing_in_some_frames(tmp_path):
    frames = labelled_copper(3)
    frames[2].calc = SinglePointCalculator(frames[2], energy=1.0)
    write(tmp_path / "mixed.xyz", frames)
    assert_input_error(str(tmp_path / "mixed.xyz"), "mixed.xyz:2", "forces", "forces: false")


def test_forces_of_wrong_shape(tmp_path):
    frames = labelled_copper(3)
    for atoms in frames:
        atoms.info["bad_F"] = np.zeros(3)
    write(tmp_path / "shape.xyz", frames)
    dataset = {"systems": "shape.xyz", "targets": {"energy": {"forces": {"key": "bad_F"}}}}
    assert_input_error(dataset, "shape.xyz:0", "bad_F", "(4, 3)", base_dir=tmp_path)


def test_stress_of_wrong_size(tmp_path):
    frames = labelled_copper(2)
    frames[1].info["bad_S"] = np.zeros(4)
    frames[0].info["bad_S"] = np.zeros(6)
    write(tmp_path / "stress.xyz", frames)
    dataset = {"systems": "stress.xyz", "targets": {"energy": {"stress": {"key": "bad_S"}}}}
    assert_input_error(dataset, "stress.xyz:1", "bad_S", "4 values", base_dir=tmp_path)


@pytest.mark.parametrize("what", ["energy", "forces", "stress", "positions"])
def test_non_finite_values(tmp_path, what):
    frames = labelled_copper(3)
    atoms = frames[1]
    results = dict(atoms.calc.results)
    if what == "positions":
        atoms.positions[0, 0] = np.nan
    elif what == "energy":
        results["energy"] = np.inf
    else:
        results[what] = results[what].copy()
        results[what][0] = np.nan
    atoms.calc = SinglePointCalculator(atoms, **results)
    write(tmp_path / "nan.xyz", frames)
    assert_input_error(str(tmp_path / "nan.xyz"), "nan.xyz:1", what, "NaN")


def test_structure_without_atoms(tmp_path):
    (tmp_path / "zero.xyz").write_text('0\nLattice="1 0 0 0 1 0 0 0 1" energy=1.0 pbc="T T T"\n')
    assert_input_error(str(tmp_path / "zero.xyz"), "zero.xyz:0", "no atoms")


def test_virial_needs_a_volume(tmp_path):
    atoms = bulk("Cu", cubic=True)
    atoms.cell[:] = 0.0
    atoms.pbc = False
    atoms.info["energy"] = 1.0
    atoms.info["virial"] = np.zeros(9)
    write(tmp_path / "novol.xyz", [atoms])
    dataset = {"systems": "novol.xyz", "targets": {"energy": {"virial": "virial"}}}
    assert_input_error(dataset, "novol.xyz:0", "virial", "volume", base_dir=tmp_path)


@pytest.mark.parametrize(
    "dataset, fragments",
    [
        ({"systems": "a.xyz", "targets": {"energy": {"untis": "eV"}}}, ["training_set.targets.energy.untis", "'unit'"]),
        ({"system": "a.xyz"}, ["training_set.system", "'systems'"]),
        ({"systems": {"read_from": "a.xyz", "lenght_unit": "bohr"}}, ["training_set.systems.lenght_unit"]),
        ({"systems": "a.xyz", "targets": {"energy": {"forces": {"kye": "f"}}}}, ["training_set.targets.energy.forces.kye"]),
        ({"systems": "a.xyz", "targets": {"enrgy": {}}}, ["training_set.targets.enrgy", "'energy'"]),
        ({"systems": "a.xyz", "targets": {"energy": {"unit": "Joule"}}}, ["Joule", "eV, meV, Hartree"]),
        ({"systems": {"read_from": "a.xyz", "length_unit": "pm"}}, ["pm", "angstrom, bohr, nm"]),
    ],
)
def test_bad_config_keys_and_units(tmp_path, dataset, fragments):
    write(tmp_path / "a.xyz", labelled_copper(1))
    assert_input_error(dataset, *fragments, base_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# Splits


@pytest.fixture
def twenty_frames(tmp_path):
    frames = labelled_copper(20)
    write(tmp_path / "train.xyz", frames)
    return tmp_path


def test_load_splits_fractions_are_disjoint_and_seeded(twenty_frames):
    options = {"training_set": "train.xyz", "validation_set": 0.2, "test_set": 0.1}
    train, validation, test = load_splits(options, base_dir=twenty_frames, seed=7)
    assert (len(train), len(validation), len(test)) == (14, 4, 2)
    sources = [s.source for s in train + validation + test]
    assert len(set(sources)) == 20
    again = load_splits(options, base_dir=twenty_frames, seed=7)
    assert [s.source for s in again[1]] == [s.source for s in validation]
    other = load_splits(options, base_dir=twenty_frames, seed=8)
    assert [s.source for s in other[1]] != [s.source for s in validation]


def test_load_splits_defaults_and_datasets(twenty_frames):
    train, validation, test = load_splits({"training_set": "train.xyz"}, base_dir=twenty_frames)
    assert (len(train), len(validation), len(test)) == (18, 2, 0)
    options = {"training_set": "train.xyz", "validation_set": "train.xyz", "test_set": 0.5}
    train, validation, test = load_splits(options, base_dir=twenty_frames)
    assert (len(train), len(validation), len(test)) == (10, 20, 10)


@pytest.mark.parametrize(
    "splits, fragment",
    [
        ({"validation_set": 1.0}, "[0, 1)"),
        ({"validation_set": -0.1}, "[0, 1)"),
        ({"validation_set": 0.6, "test_set": 0.5}, "less than 1"),
    ],
)
def test_load_splits_bad_fractions(twenty_frames, splits, fragment):
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        load_splits({"training_set": "train.xyz", **splits}, base_dir=twenty_frames)


def test_load_splits_errors(twenty_frames):
    with pytest.raises(InputError, match="training_set"):
        load_splits({}, base_dir=twenty_frames)
    write(twenty_frames / "one.xyz", labelled_copper(1))
    with pytest.raises(InputError, match="nothing is left for training"):
        load_splits({"training_set": "one.xyz"}, base_dir=twenty_frames)
