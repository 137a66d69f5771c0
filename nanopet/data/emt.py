"""Built-in dataset: fcc alloy supercells labelled with ASE's EMT potential (no downloads).

Half of the structures are *rattled* (random Gaussian displacements of a strained lattice),
the other half are *MD-sampled* (snapshots of short Langevin runs at 300, 600 and 1200 K).
Every structure is a 2x2x2 conventional fcc supercell (32 atoms) with a random composition,
a lattice constant from Vegard's law and a random symmetric strain, so the dataset covers
energies, forces and stresses. Generation is fully determined by the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .md import langevin_snapshots

SUPERCELL = (2, 2, 2)  # conventional fcc cells (4 atoms each): 32 atoms
MAX_ISOTROPIC_STRAIN = 0.03
MAX_SHEAR_STRAIN = 0.02
RATTLE_SIGMA_RANGE = (0.02, 0.15)  # Angstrom, drawn per structure

MD_TEMPERATURES_K = (300.0, 600.0, 1200.0)
MD_TIMESTEP_FS = 2.0
MD_FRICTION_PER_FS = 0.02
MD_EQUILIBRATION_STEPS = 20
MD_STEPS_BETWEEN_SNAPSHOTS = 8
MD_SNAPSHOTS_PER_RUN = 8


def generate_emt_alloy(n: int, seed: int = 0, elements=("Cu", "Au"), progress=None) -> list:
    """``n`` labelled fcc alloy supercells (``ase.Atoms`` with a SinglePointCalculator).

    The first ``n // 2`` structures are rattled, the rest are MD snapshots. ``progress(i, n)`` is
    called after each structure with the number of structures done so far.
    """
    if int(n) < 0:
        raise InputError(f"emt-alloy: the number of structures must be >= 0, got {n}")
    n = int(n)
    lattice_constants = _fcc_lattice_constants(elements)
    rng = np.random.default_rng(seed)
    structures = []

    def add(atoms):
        structures.append(atoms)
        if progress is not None:
            progress(len(structures), n)

    for _ in range(n // 2):
        add(_rattled_structure(rng, lattice_constants))

    run_index = 0
    while len(structures) < n:
        temperature = MD_TEMPERATURES_K[run_index % len(MD_TEMPERATURES_K)]
        n_snapshots = min(MD_SNAPSHOTS_PER_RUN, n - len(structures))
        for atoms in _md_snapshots(rng, lattice_constants, temperature, n_snapshots):
            add(atoms)
        run_index += 1
    return structures


def write_emt_alloy(path, n: int, seed: int = 0, progress=None) -> Path:
    """Generate ``n`` structures and write them as extended XYZ (energy, forces, stress included)."""
    import ase.io

    path = Path(path)
    ase.io.write(path, generate_emt_alloy(n, seed=seed, progress=progress), format="extxyz")
    return path


def _fcc_lattice_constants(elements) -> dict:
    """Experimental fcc lattice constant of each element, checking that EMT supports it."""
    from ase.calculators.emt import parameters as emt_parameters
    from ase.data import atomic_numbers, reference_states

    elements = tuple(elements)
    if not elements:
        raise InputError("emt-alloy: at least one element is needed")
    constants = {}
    for symbol in elements:
        number = atomic_numbers.get(symbol)
        state = reference_states[number] if number is not None else None
        if symbol not in emt_parameters or state is None or state.get("symmetry") != "fcc":
            raise InputError(f"emt-alloy: element '{symbol}' is not an fcc metal supported by EMT")
        constants[symbol] = float(state["a"])
    return constants


def _random_lattice(rng, lattice_constants: dict):
    """Strained fcc supercell with a random composition and a Vegard's-law lattice constant."""
    from ase.build import bulk

    symbols = list(lattice_constants)
    fractions = rng.dirichlet(np.ones(len(symbols)))
    first = symbols[0]
    atoms = bulk(first, "fcc", a=lattice_constants[first], cubic=True).repeat(SUPERCELL)
    species = rng.choice(len(symbols), size=len(atoms), p=fractions)
    atoms.symbols = [symbols[s] for s in species]

    vegard = sum(fractions[i] * lattice_constants[s] for i, s in enumerate(symbols))
    atoms.set_cell(atoms.cell.array * vegard / lattice_constants[first], scale_atoms=True)
    atoms.set_cell(atoms.cell.array @ _random_strain(rng), scale_atoms=True)
    return atoms


def _random_strain(rng) -> np.ndarray:
    """Deformation matrix I + eps, with eps symmetric: isotropic part plus a random shear part."""
    isotropic = rng.uniform(-MAX_ISOTROPIC_STRAIN, MAX_ISOTROPIC_STRAIN)
    shear = rng.uniform(-MAX_SHEAR_STRAIN, MAX_SHEAR_STRAIN, size=(3, 3))
    return np.eye(3) * (1.0 + isotropic) + 0.5 * (shear + shear.T)


def _rattled_structure(rng, lattice_constants: dict):
    atoms = _random_lattice(rng, lattice_constants)
    sigma = rng.uniform(*RATTLE_SIGMA_RANGE)
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
    atoms.info["sampling"] = "rattled"
    atoms.info["rattle_sigma"] = float(sigma)
    return _labelled(atoms)


def _md_snapshots(rng, lattice_constants: dict, temperature: float, n_snapshots: int) -> list:
    """Snapshots of one Langevin run at ``temperature`` (K), after a short equilibration."""
    from ase.calculators.emt import EMT

    def labelled(atoms):
        snapshot = _labelled(atoms.copy(), atoms.calc)
        del snapshot.arrays["momenta"]  # labels only: keep the files small
        snapshot.info["sampling"] = "md"
        snapshot.info["temperature_K"] = float(temperature)
        return snapshot

    atoms = _random_lattice(rng, lattice_constants)
    atoms.calc = EMT()
    return langevin_snapshots(atoms, rng, temperature, MD_TIMESTEP_FS, MD_FRICTION_PER_FS, MD_EQUILIBRATION_STEPS,
                              MD_STEPS_BETWEEN_SNAPSHOTS, n_snapshots, labelled)


def _labelled(atoms, calculator=None):
    """Attach EMT's energy, forces and stress to ``atoms`` as a SinglePointCalculator.

    ``calculator`` is an EMT calculator to reuse (its neighbour list is kept up to date).
    """
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    calculator = calculator or EMT()
    labels = {name: calculator.get_property(name, atoms) for name in ("energy", "forces", "stress")}
    atoms.calc = SinglePointCalculator(atoms, **labels)
    return atoms
