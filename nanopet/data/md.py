"""Langevin dynamics for the built-in dataset generators (EMT alloys, xtb molecules)."""

from __future__ import annotations

import numpy as np


def hot_start_langevin(atoms, rng, temperature: float, timestep_fs: float, friction_per_fs: float):
    """An ASE Langevin integrator at ``temperature`` (K) for ``atoms`` (calculator attached).

    The momenta are Maxwell-Boltzmann at twice the target: about half of the kinetic energy
    flows into the potential energy, so the run starts near the target temperature. All random
    numbers come from ``rng``, so a run is fixed by its seed.
    """
    from ase import units
    from ase.md.langevin import Langevin

    thermal_momentum = np.sqrt(atoms.get_masses() * units.kB * 2 * temperature)
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * thermal_momentum[:, None])
    return Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )


def langevin_snapshots(atoms, rng, temperature: float, timestep_fs: float, friction_per_fs: float,
                       equilibration_steps: int, steps_between: int, n_snapshots: int, snapshot) -> list:
    """``n_snapshots`` labelled snapshots of one Langevin run of ``atoms`` (calculator attached) at
    ``temperature`` (K): ``equilibration_steps`` first, then ``steps_between`` steps before each
    ``snapshot(atoms)`` (which returns the labelled copy to keep)."""
    dynamics = hot_start_langevin(atoms, rng, temperature, timestep_fs, friction_per_fs)
    dynamics.run(equilibration_steps)
    snapshots = []
    for _ in range(n_snapshots):
        dynamics.run(steps_between)
        snapshots.append(snapshot(atoms))
    return snapshots
