"""Built-in dataset: small organic molecules from MD, labelled with GFN2-xTB (``tblite``).

Ethanol (9 atoms), malonaldehyde (9, the enol form with its intramolecular hydrogen bond) and
aspirin (21) in one set, so the composition baseline over H, C and O matters. Each structure
is a snapshot of a Langevin run of one molecule at 300, 600 or 1000 K, driven by xtb itself;
the runs cycle over every molecule at every temperature. Molecules are in vacuum: no cell,
``pbc`` false, energies (eV) and forces (eV/A), no stress. Generation is fully determined by
the seed (xtb runs on one OpenMP thread, so its sums are always taken in the same order).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

import numpy as np

from ..errors import InputError
from .md import langevin_snapshots

METHOD = "GFN2-xTB"
MOLECULES = ("ethanol", "malonaldehyde", "aspirin")
MD_TEMPERATURES_K = (300.0, 600.0, 1000.0)
MD_TIMESTEP_FS = 1.0
MD_FRICTION_PER_FS = 0.02
MD_EQUILIBRATION_STEPS = 30
MD_STEPS_BETWEEN_SNAPSHOTS = 8  # 8 fs: most of an O-H or C-H vibration period (about 11 fs)
MD_SNAPSHOTS_PER_RUN = 20  # at most; fewer for small sets, so that every molecule and temperature is in

# GFN2-xTB minima (BFGS, fmax 0.005 eV/A), centred on the centre of mass. Ethanol comes from ase's g2 set.
_MALONALDEHYDE = [
    ("O", 1.3066, -0.8175, 0.0000), ("C", 1.2219, 0.4049, 0.0000), ("C", -0.0172, 1.1282, 0.0000),
    ("C", -1.1924, 0.4497, 0.0000), ("O", -1.2920, -0.8572, 0.0000), ("H", 2.1372, 1.0186, 0.0000),
    ("H", -0.0027, 2.2030, 0.0000), ("H", -2.1497, 0.9611, 0.0000), ("H", -0.3635, -1.2268, 0.0000),
]
_ASPIRIN = [
    ("C", -0.0012, -1.1554, 0.0000), ("C", -0.4767, 0.1709, 0.0000), ("C", -1.8460, 0.4094, 0.0000),
    ("C", -2.7351, -0.6511, 0.0000), ("C", -2.2770, -1.9579, 0.0000), ("C", -0.9185, -2.2042, 0.0000),
    ("C", 1.4505, -1.4470, 0.0000), ("O", 2.3458, -0.6414, 0.0000), ("O", 1.7072, -2.7700, 0.0000),
    ("H", 2.6672, -2.9072, 0.0000), ("O", 0.4832, 1.1475, 0.0000), ("C", 0.2806, 2.4774, 0.0000),
    ("O", -0.7864, 3.0284, 0.0000), ("C", 1.6152, 3.1688, 0.0000), ("H", 1.4735, 4.2449, 0.0000),
    ("H", 2.1781, 2.8596, 0.8770), ("H", 2.1781, 2.8596, -0.8770), ("H", -2.2128, 1.4222, 0.0000),
    ("H", -3.7954, -0.4476, 0.0000), ("H", -2.9756, -2.7803, 0.0000), ("H", -0.5465, -3.2163, 0.0000),
]


def generate_xtb_molecules(n: int, seed: int = 0, progress=None, molecules=MOLECULES, temperatures=MD_TEMPERATURES_K) -> list:
    """``n`` labelled molecule snapshots (``ase.Atoms`` with a SinglePointCalculator).

    Run ``r`` simulates molecule ``r % M`` at temperature ``(r // M) % T`` (M ``molecules``, T ``temperatures``;
    the built-in set: 3 and 3), so the first M x T runs cover every pair; a run gives ``n / (M T)`` snapshots (at
    least 1, at most ``MD_SNAPSHOTS_PER_RUN``). A molecule is one of ``MOLECULES`` or a name of ASE's g2 set
    (e.g. ``CH3COOH``). ``progress(i, n)`` is called after each structure.
    """
    if int(n) < 0:
        raise InputError(f"xtb-molecules: the number of structures must be >= 0, got {n}")
    n = int(n)
    rng = np.random.default_rng(seed)
    per_run = min(MD_SNAPSHOTS_PER_RUN, max(1, -(-n // (len(molecules) * len(temperatures)))))
    structures = []
    run_index = 0
    with _one_openmp_thread():
        while len(structures) < n:
            name = molecules[run_index % len(molecules)]
            temperature = temperatures[(run_index // len(molecules)) % len(temperatures)]
            n_snapshots = min(per_run, n - len(structures))
            for atoms in _md_snapshots(rng, name, temperature, n_snapshots):
                structures.append(atoms)
                if progress is not None:
                    progress(len(structures), n)
            run_index += 1
    return structures


def xtb_calculator():
    """A fresh GFN2-xTB calculator (neutral, closed shell, quiet)."""
    try:
        from tblite.ase import TBLite
    except ImportError:
        raise InputError("xtb-molecules: needs the 'tblite' package (pip install tblite)") from None
    return TBLite(method=METHOD, verbosity=0)


def molecule(name: str):
    """The starting geometry of one of ``MOLECULES`` (or of a molecule of ASE's g2 set) as ``ase.Atoms`` (no cell)."""
    import ase
    from ase.build import molecule as g2_molecule

    if name == "ethanol":
        return g2_molecule("CH3CH2OH")
    tables = {"malonaldehyde": _MALONALDEHYDE, "aspirin": _ASPIRIN}
    if name not in tables:
        return g2_molecule(name)
    table = tables[name]
    return ase.Atoms([row[0] for row in table], positions=[row[1:] for row in table])


def _md_snapshots(rng, name: str, temperature: float, n_snapshots: int) -> list:
    """Snapshots of one Langevin run of ``name`` at ``temperature`` (K), after an equilibration."""
    from ase.calculators.singlepoint import SinglePointCalculator

    def labelled(atoms):
        snapshot = _without_momenta(atoms)
        labels = {key: atoms.calc.get_property(key, atoms) for key in ("energy", "forces")}
        snapshot.calc = SinglePointCalculator(snapshot, **labels)
        snapshot.info.update(sampling="md", molecule=name, temperature_K=float(temperature))
        return snapshot

    atoms = molecule(name)
    atoms.calc = xtb_calculator()
    return langevin_snapshots(atoms, rng, temperature, MD_TIMESTEP_FS, MD_FRICTION_PER_FS, MD_EQUILIBRATION_STEPS,
                              MD_STEPS_BETWEEN_SNAPSHOTS, n_snapshots, labelled)


def _without_momenta(atoms):
    """A bare copy (numbers and positions): labels only, to keep the files small."""
    import ase

    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions.copy(), pbc=False)


@contextlib.contextmanager
def _one_openmp_thread():
    """Run tblite on one OpenMP thread: reproducible sums, and faster for molecules this small."""
    path = ctypes.util.find_library("gomp")
    try:
        library = ctypes.CDLL(path or "libgomp.so.1")
        previous = library.omp_get_max_threads()
    except (OSError, AttributeError):
        yield  # another OpenMP runtime: tblite keeps its own thread count
        return
    library.omp_set_num_threads(1)
    try:
        yield
    finally:
        library.omp_set_num_threads(previous)
