"""Tests of the built-in xtb molecules dataset and of built-in dataset generation on first use."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nanopet.data import builtin_dataset, generate_xtb_molecules, load_splits, read_structures
from nanopet.data.builtin import builtin_dataset_path
from nanopet.data.xtb import MD_TEMPERATURES_K, MOLECULES, xtb_calculator

N_FRAMES = 6  # one snapshot per run: the three molecules at 300 K, then at 600 K


@pytest.fixture(scope="module")
def xtb_frames():
    return generate_xtb_molecules(N_FRAMES, seed=1)


def test_generator_is_deterministic_by_seed(xtb_frames):
    again = generate_xtb_molecules(N_FRAMES, seed=1)
    other = generate_xtb_molecules(2, seed=2)
    for a, b in zip(xtb_frames, again):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
    assert not np.allclose(xtb_frames[0].positions, other[0].positions)


def test_small_sets_mix_every_molecule_and_temperatures(xtb_frames):
    assert [a.info["molecule"] for a in xtb_frames] == list(MOLECULES) * 2
    assert [a.info["temperature_K"] for a in xtb_frames] == [MD_TEMPERATURES_K[0]] * 3 + [MD_TEMPERATURES_K[1]] * 3
    assert {a.get_chemical_formula() for a in xtb_frames} == {"C2H6O", "C3H4O2", "C9H8O4"}


def test_labels_are_finite_molecules_without_cell_or_stress(xtb_frames):
    for atoms in xtb_frames:
        assert not atoms.pbc.any() and not atoms.cell.array.any()
        assert set(atoms.get_chemical_symbols()) == {"H", "C", "O"}
        assert np.isfinite(atoms.get_potential_energy())
        forces = atoms.get_forces()
        assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
        assert 0.05 < np.sqrt((forces**2).mean()) < 20.0  # thermal, not a minimum and not exploded
        assert "stress" not in atoms.calc.results


def test_labels_are_xtb_and_forces_are_minus_the_energy_gradient(xtb_frames):
    atoms = xtb_frames[1]  # malonaldehyde
    fresh = atoms.copy()
    fresh.calc = xtb_calculator()
    assert fresh.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(fresh.get_forces(), atoms.get_forces(), atol=1e-3)
    step = 1e-3
    for atom, axis in [(0, 0), (5, 2)]:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * step
            displaced.calc = xtb_calculator()
            energies.append(displaced.get_potential_energy())
        numeric = -(energies[0] - energies[1]) / (2 * step)
        assert numeric == pytest.approx(atoms.get_forces()[atom, axis], abs=2e-3)


def test_builtin_config_reads_through_load_splits(tmp_path, monkeypatch, xtb_frames):
    monkeypatch.setenv("NANOPET_CACHE", str(tmp_path))
    options = {"training_set": {"systems": {"builtin": "xtb-molecules", "n": N_FRAMES, "seed": 1}},
               "validation_set": 0.34, "test_set": 0.0}
    train, validation, test = load_splits(options, seed=0)
    assert (len(train), len(validation), len(test)) == (4, 2, 0)
    assert (tmp_path / f"xtb-molecules-n{N_FRAMES}-s1.xyz").is_file()
    by_energy = {round(a.get_potential_energy(), 6): a for a in xtb_frames}
    for structure in train + validation:
        atoms = by_energy[round(structure.energy, 6)]
        np.testing.assert_allclose(structure.positions, atoms.positions, atol=1e-7)
        np.testing.assert_allclose(structure.forces, atoms.get_forces(), atol=1e-7)
        assert not structure.pbc.any() and structure.stress is None


def test_first_use_generation_prints_progress_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOPET_CACHE", str(tmp_path))
    path = builtin_dataset_path("emt-alloy", 20, seed=2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"generating built-in dataset emt-alloy (n=20, seed 2) into {path}: 2/20 structures"
    assert [line.rsplit(": ", 1)[1] for line in lines] == [f"{i}/20 structures" for i in range(2, 21, 2)]
    assert builtin_dataset_path("emt-alloy", 20, seed=2) == path
    assert len(builtin_dataset("emt-alloy", 20, seed=2)) == 20
    assert capsys.readouterr().err == ""  # cached: no generation, no progress


def test_one_epoch_training_on_molecules(tmp_path, monkeypatch, xtb_frames):
    from nanopet.train import train

    monkeypatch.setenv("NANOPET_CACHE", str(tmp_path))
    options = {
        "seed": 0, "device": "cpu", "base_precision": 32,
        "training_set": {"systems": {"builtin": "xtb-molecules", "n": N_FRAMES, "seed": 1}},
        "validation_set": 0.34, "test_set": 0.0,
        "architecture": {"model": {"cutoff": 3.5, "d_pet": 8, "num_heads": 2, "num_gnn_layers": 1, "num_attention_layers": 1},
                         "training": {"num_epochs": 1, "batch_size": 2, "learning_rate": 1e-3}},
    }
    result = train(options, log=lambda line: None)
    assert len(result.history) == 1
    row = result.history[0]
    assert np.isfinite(row["val_forces_rmse"]) and np.isfinite(row["val_energy_rmse"])
    # the composition baseline, fitted on the mixed molecules, explains their total energies
    assert result.model.atomic_types == [1, 6, 8]
    weights = dict(zip(result.model.atomic_types, result.model.composition_weights.tolist()))
    for atoms in xtb_frames:
        baseline = sum(weights[int(z)] for z in atoms.numbers)
        assert abs(atoms.get_potential_energy() - baseline) / len(atoms) < 0.5


def test_make_data_xtb_molecules_writes_extxyz_that_reads_back(tmp_path):
    path = tmp_path / "molecules.xyz"
    result = subprocess.run([sys.executable, "-m", "nanopet.cli", "make-data", "xtb-molecules", str(path), "--n", "3",
                             "--seed", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"generating built-in dataset xtb-molecules (n=3, seed 1) into {path}: 3/3 structures" in result.stderr
    structures = read_structures(str(path))
    expected = generate_xtb_molecules(3, seed=1)
    assert [len(s.numbers) for s in structures] == [9, 9, 21]
    for structure, atoms in zip(structures, expected):
        assert structure.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(structure.forces, atoms.get_forces(), atol=1e-7)
        assert not structure.pbc.any() and structure.stress is None
