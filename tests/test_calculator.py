"""The ASE calculator of a trained NanoPET: consistency with the model, derivatives, MD and relaxation.

One tiny float64 model is trained for a few epochs on EMT Cu/Au structures (written to an extxyz
file and read back like a user's dataset) and loaded from its ``model.ckpt``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from nanopet.calculator import NanoPETCalculator
from nanopet.checkpoints import model_from_checkpoint
from nanopet.composition import fit_composition_weights
from nanopet.data import read_structures, write_emt_alloy
from nanopet.data.batch import GraphDataset
from nanopet.data.splits import Data
from nanopet.data.structure import Structure
from nanopet.errors import InputError
from nanopet.train import train

CUTOFF = 4.0


@pytest.fixture(scope="module")
def physics_trained(tmp_path_factory):
    """(checkpoint path, training structures, TrainResult) of a tiny float64 model trained for 4 epochs."""
    directory = tmp_path_factory.mktemp("physics_trained")
    structures = read_structures(str(write_emt_alloy(directory / "emt.xyz", 8, seed=1)))
    assert all(s.stress is not None and s.forces is not None for s in structures)
    data = Data(GraphDataset(structures[:6], CUTOFF), GraphDataset(structures[6:], CUTOFF), GraphDataset([], CUTOFF))
    options = {
        "seed": 0, "device": "cpu", "base_precision": 64, "training_set": "unused.xyz",
        "architecture": {
            "model": {"cutoff": CUTOFF, "cutoff_width": 1.0, "d_pet": 16, "num_heads": 2,
                      "num_attention_layers": 1, "num_gnn_layers": 2},
            "training": {"num_epochs": 4, "batch_size": 3, "learning_rate": 3e-3, "log_interval": 1,
                         "checkpoint_interval": 1000},
        },
    }
    result = train(options, output_dir=directory, data=data, log=None)
    path = directory / "model.ckpt"
    assert path.is_file()
    return path, structures, result


@pytest.fixture
def calculator(physics_trained):
    return NanoPETCalculator.from_checkpoint(physics_trained[0])


def emt_atoms(structures, k: int) -> Atoms:
    return structures[k].to_atoms()


# ----------------------------------------------------------------------------------------------
# The calculator is the model


def test_calculator_equals_model_predictions(physics_trained, calculator):
    path, structures, result = physics_trained
    atoms = emt_atoms(structures, 7)  # a validation structure
    atoms.calc = calculator
    assert calculator.dtype == torch.float64

    model = model_from_checkpoint(path)
    batch = GraphDataset([Structure.from_atoms(atoms)], model.cutoff).batch([0], dtype=torch.float64)
    full = model(batch, forces=True, stress=True)
    network = model(batch, forces=False, with_composition=False)

    # the composition baseline is the least-squares fit on the training structures, and is included
    # (to float32 precision: see test_composition_baseline_keeps_float64_precision)
    weights = model.composition_weights.numpy()
    np.testing.assert_allclose(weights, fit_composition_weights(structures[:6], model.atomic_types), rtol=1e-6)
    assert np.abs(weights).max() > 0.1
    counts = [int((atoms.numbers == z).sum()) for z in model.atomic_types]
    baseline = float(np.dot(counts, weights))
    energy = atoms.get_potential_energy()
    assert energy == pytest.approx(float(full["energy"][0]), abs=1e-10)
    assert energy == pytest.approx(float(network["energy"][0]) + baseline, abs=1e-9)
    assert abs(energy - float(network["energy"][0])) > 0.1  # the baseline really is there
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(energy, abs=1e-12)

    np.testing.assert_allclose(atoms.get_forces(), full["forces"].numpy(), atol=1e-10)
    sigma = full["stress"][0].numpy()
    voigt = [sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]]  # ASE order
    np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), sigma, atol=1e-12)

    # the checkpoint holds the best-validation weights the trainer returned
    returned = result.model.to(torch.float64)(batch, forces=True)
    assert float(returned["energy"][0]) == pytest.approx(energy, abs=1e-10)


def test_composition_baseline_keeps_float64_precision(physics_trained):
    path, structures, _ = physics_trained
    model = model_from_checkpoint(path)
    assert model.composition_weights.dtype == torch.float64
    np.testing.assert_allclose(model.composition_weights.numpy(), fit_composition_weights(structures[:6], model.atomic_types),
                               rtol=1e-12)


def test_per_atom_energies_sum_to_the_energy(physics_trained, calculator):
    atoms = emt_atoms(physics_trained[1], 0)
    atoms.calc = calculator
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    assert np.ptp(energies) > 1e-4  # not just the total spread evenly
    # per-atom energies are local: a 2x1x1 supercell repeats them
    supercell = atoms.repeat((2, 1, 1))
    supercell.calc = calculator
    np.testing.assert_allclose(supercell.get_potential_energies(), np.tile(energies, 2), atol=1e-10)


def test_calculator_forces_are_minus_energy_gradient(physics_trained, calculator):
    atoms = emt_atoms(physics_trained[1], 2)
    atoms.calc = calculator
    forces = atoms.get_forces()
    h = 1e-4
    for a in (0, 5, 17, 31):
        for k in range(3):
            moved = atoms.copy()
            moved.calc = calculator
            moved.positions[a, k] += h
            plus = moved.get_potential_energy()
            moved.positions[a, k] -= 2 * h
            minus = moved.get_potential_energy()
            assert forces[a, k] == pytest.approx(-(plus - minus) / (2 * h), rel=1e-6, abs=1e-8)
    assert np.abs(forces).max() > 1e-3


def test_calculator_stress_matches_numerical_stress(physics_trained, calculator):
    atoms = emt_atoms(physics_trained[1], 4)
    atoms.calc = calculator
    stress = atoms.get_stress()
    try:  # ASE >= 3.23; older versions only have the (now deprecated) calculator method
        from ase.calculators.fd import calculate_numerical_stress

        numeric = calculate_numerical_stress(atoms, eps=1e-5, voigt=True)
    except ImportError:
        numeric = calculator.calculate_numerical_stress(atoms, d=1e-5, voigt=True)
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, numeric, rtol=1e-5, atol=1e-9)


def test_stress_of_an_open_structure_is_refused(calculator):
    atoms = Atoms("CuAu", positions=[[0, 0, 0], [2.5, 0, 0]])
    atoms.calc = calculator
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_isolated_atom_has_composition_energy_and_no_force(calculator):
    atoms = Atoms("Au", positions=[[0.0, 0.0, 0.0]])
    atoms.calc = calculator
    weights = dict(zip(calculator.model.atomic_types, calculator.model.composition_weights.tolist()))
    assert atoms.get_potential_energy() == weights[79]
    assert np.array_equal(atoms.get_forces(), np.zeros((1, 3)))


def test_missing_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        NanoPETCalculator.from_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(InputError):
        NanoPETCalculator(str(tmp_path / "missing.ckpt"))
    not_a_checkpoint = tmp_path / "garbage.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(InputError):
        NanoPETCalculator.from_checkpoint(not_a_checkpoint)


def test_device_defaults_to_auto_like_options(physics_trained, monkeypatch):
    asked = []
    monkeypatch.setattr("nanopet.calculator.select_device", lambda name: asked.append(name) or torch.device("cpu"))
    NanoPETCalculator.from_checkpoint(physics_trained[0])
    NanoPETCalculator(physics_trained[0])
    assert asked == ["auto", "auto"]  # a GPU when one is visible, as `device: auto` in options files


# ----------------------------------------------------------------------------------------------
# Dynamics and relaxation


def test_nve_md_conserves_energy(physics_trained, calculator):
    atoms = emt_atoms(physics_trained[1], 1)
    atoms.calc = calculator
    # Maxwell-Boltzmann momenta at 300 K (by hand: the ASE helper's name changed across versions)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(np.random.default_rng(0).normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300.0))
    Stationary(atoms)
    kinetic0 = atoms.get_kinetic_energy()
    total0 = atoms.get_potential_energy() + kinetic0
    totals, kinetics = [], []

    def record():
        kinetics.append(atoms.get_kinetic_energy())
        totals.append(atoms.get_potential_energy() + kinetics[-1])

    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.attach(record, interval=5)
    dynamics.run(200)
    totals, kinetics = np.array(totals), np.array(kinetics)
    assert len(totals) >= 40
    assert np.ptp(kinetics) > 0.05 * kinetic0  # atoms really moved and exchanged energy
    drift = np.abs(totals - total0).max()
    assert drift < 0.05 * kinetic0, (drift, kinetic0)
    assert drift / len(atoms) < 1e-4  # eV/atom (measured: ~1e-6)
    assert np.all(np.isfinite(atoms.positions))


def test_bfgs_lowers_the_energy(physics_trained, calculator):
    atoms = emt_atoms(physics_trained[1], 3)
    atoms.rattle(0.05, seed=3)
    atoms.calc = calculator
    start = atoms.get_potential_energy()
    energies = []
    optimizer = BFGS(atoms, logfile=None)
    optimizer.attach(lambda: energies.append(atoms.get_potential_energy()))
    optimizer.run(fmax=1e-3, steps=15)
    assert optimizer.nsteps >= 5
    assert np.all(np.isfinite(atoms.positions))
    # a briefly trained model has no well-defined minimum nearby, but BFGS must go downhill
    assert energies[-1] < start - 1e-3
    assert energies[-1] < energies[len(energies) // 2] < energies[0]
