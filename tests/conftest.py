"""Shared fixtures. Names start with ``emt_``: small labelled Cu/Au EMT datasets for fast tests."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from nanopet.data import Structure, generate_emt_alloy
from nanopet.data.batch import GraphDataset

EMT_CUTOFF = 4.0  # neighbour lists of the emt_* datasets; tiny models use this or less


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every model in the tests is tiny: intra-op threads only add synchronisation, which on a busy
    2-core machine makes them up to 100x slower. (Subprocess tests choose their own threads.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def emt_to_structure(atoms) -> Structure:
    """A labelled ``ase.Atoms`` (energy, forces, stress in its calculator) as a nanopet Structure."""
    return Structure.from_atoms(
        atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress(voigt=False)
    )


@pytest.fixture(scope="session")
def emt_structures() -> list[Structure]:
    """40 labelled fcc Cu/Au supercells (32 atoms each; rattled and MD snapshots, shuffled)."""
    frames = generate_emt_alloy(40, seed=0)
    order = np.random.default_rng(0).permutation(len(frames))
    return [emt_to_structure(frames[i]) for i in order]


@pytest.fixture(scope="session")
def emt_data(emt_structures):
    """``nanopet.data.splits.Data`` with 20 train / 5 validation / 5 test structures at cutoff 4.0 A."""
    from nanopet.data.splits import Data

    s = emt_structures
    return Data(GraphDataset(s[:20], EMT_CUTOFF), GraphDataset(s[20:25], EMT_CUTOFF), GraphDataset(s[25:30], EMT_CUTOFF))


@pytest.fixture
def emt_options():
    """Factory of options for a tiny NanoPET: ``emt_options(model={...}, **training_overrides)``."""

    def make(model: dict | None = None, seed: int = 0, base_precision: int = 32, **training) -> dict:
        hypers = {"cutoff": EMT_CUTOFF, "cutoff_width": 0.5, "d_pet": 8, "num_heads": 2,
                  "num_gnn_layers": 1, "num_attention_layers": 1}
        hypers.update(model or {})
        defaults = {"num_epochs": 2, "batch_size": 5, "learning_rate": 1e-2, "log_interval": 1, "checkpoint_interval": 1000}
        defaults.update(training)
        return copy.deepcopy({
            "seed": seed, "device": "cpu", "base_precision": base_precision,
            "training_set": "unused.xyz",  # the tests pass data= directly
            "architecture": {"model": hypers, "training": defaults},
        })

    return make
