"""Suspicious frames: overlapping atoms, force outliers, duplicated frames, energies per atom far from the rest.

Per frame, during the reading pass: ``closest_overlap`` and ``fingerprint``. Over the dataset, afterwards:
one function per rule, each returning a ``Suspicious`` (or None when no frame breaks it). The thresholds are
the module's constants; each rule's text says what it checked.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from ..neighbors import neighbor_list
from ..read import _energy_units
from ..structure import Structure
from .report import Suspicious

OVERLAP_FRACTION = 0.5  # a pair closer than this fraction of the sum of its covalent radii overlaps
# A force component larger than this many times the median, over frames, of each frame's largest component. (The
# dataset's force RMS is no yardstick for heavy tails: the built-in EMT set, rattled up to 0.15 A, has components
# at 23x its RMS, 12x that median, in 1000 frames.)
FORCE_OUTLIER_FACTOR = 20.0
MINIMUM_IMAGE_ATOMS = 200  # frames up to this size look for overlaps among all pairs in numpy (n^2 / 2 pairs)
ENERGY_OUTLIER_SPREADS = 20.0  # energy per atom residual this many robust spreads from the median
ENERGY_RESOLUTION = 1e-3  # eV/atom: the smallest robust spread used (identical energies do not make outliers)
FINGERPRINT_DECIMALS = 5  # positions and cell rounded to 1e-5 A before hashing
UNIT_MATCH = 0.05  # a frame whose energy is within 5% of a unit's factor times what the rest predict looks in that unit


def closest_overlap(frame) -> str | None:
    """The closest pair closer than OVERLAP_FRACTION x the sum of their covalent radii, in words; None when
    no pair is that close."""
    from ase.data import chemical_symbols, covalent_radii

    radii = covalent_radii[frame.numbers]
    cutoff = OVERLAP_FRACTION * 2.0 * float(radii.max())
    i, j, distances = close_pairs(frame, cutoff)
    if not len(i):
        return None
    ratio = distances / (radii[i] + radii[j])
    worst = int(np.argmin(ratio))
    if ratio[worst] >= OVERLAP_FRACTION:
        return None
    i, j = int(i[worst]), int(j[worst])
    pair = f"{chemical_symbols[frame.numbers[i]]}-{chemical_symbols[frame.numbers[j]]}"
    return f"atoms {i} and {j} ({pair}) {distances[worst]:.2f} A apart, {ratio[worst]:.2f} x their covalent radii"


def close_pairs(frame, cutoff: float) -> tuple:
    """``(i, j, distance)`` of the pairs closer than ``cutoff`` (each once; a periodic image too). Small frames
    whose periodic widths exceed twice the cutoff take every pair at its minimum image in numpy, which then
    finds each such pair exactly once; the others take a vesin neighbour list."""
    n, periodic = len(frame.numbers), frame.pbc
    if n <= MINIMUM_IMAGE_ATOMS:
        inverse = np.linalg.inv(frame.cell) if periodic.any() else np.zeros((3, 3))
        widths = 1.0 / np.maximum(np.linalg.norm(inverse, axis=0), 1e-300)  # between lattice planes
        if np.all(widths[periodic] > 2.0 * cutoff):
            i, j = _upper_pairs(n)
            vectors = frame.positions[j] - frame.positions[i]
            if periodic.any():
                fractional = vectors @ inverse
                fractional[:, periodic] -= np.round(fractional[:, periodic])
                vectors = fractional @ frame.cell
            distances = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            close = distances < cutoff
            return i[close], j[close], distances[close]
    pairs = neighbor_list(Structure(frame.numbers, frame.positions, frame.cell, frame.pbc), cutoff)
    return pairs.i, pairs.j, pairs.distances


@functools.lru_cache(maxsize=64)
def _upper_pairs(n: int) -> tuple:
    return np.triu_indices(n, k=1)


def fingerprint(frame) -> bytes:
    """A hash of the numbers, positions (rounded), cell (rounded) and pbc: equal for duplicated frames."""
    digest = hashlib.blake2b(digest_size=16)
    for values in (frame.numbers.astype(np.int64), np.round(frame.positions, FINGERPRINT_DECIMALS) + 0.0,
                   np.round(frame.cell, FINGERPRINT_DECIMALS) + 0.0, frame.pbc.astype(np.int8)):
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.digest()


# ----------------------------------------------------------------------------------------------
# Rules over the dataset


def unreadable_values(facts) -> Suspicious | None:
    flagged = {f.ref: "; ".join(f.problems) for f in facts if f.problems}
    return _found("unusable values", "NaN or inf, a value that is not a number, a periodic cell without volume", flagged)


def overlapping_atoms(facts) -> Suspicious | None:
    flagged = {f.ref: f.overlap for f in facts if f.overlap is not None}
    rule = f"a pair closer than {OVERLAP_FRACTION:g} x the sum of their covalent radii"
    return _found("overlapping atoms", rule, flagged)


def duplicated_frames(facts, name) -> Suspicious | None:
    """``name(ref)``: how a frame is called in the text (``DataReport.frame_name``)."""
    first, flagged = {}, {}
    for f in facts:
        if not f.fingerprint:
            continue
        if f.fingerprint in first:
            flagged[f.ref] = f"same structure as frame {name(first[f.fingerprint])}"
        else:
            first[f.fingerprint] = f.ref
    rule = f"same species, positions and cell to 1e-{FINGERPRINT_DECIMALS} A as an earlier frame"
    return _found("duplicated frames", rule, flagged)


def force_outliers(facts, key: str, factor: float) -> Suspicious | None:
    """Frames with a force component above FORCE_OUTLIER_FACTOR x the median of the frames' largest components;
    ``factor`` converts the file's forces to eV/A."""
    largest = {f.ref: f.forces[key][2] * factor for f in facts if key in f.forces and np.isfinite(f.forces[key][2])}
    typical = float(np.median(list(largest.values()))) if largest else 0.0
    if typical <= 0:
        return None
    limit = FORCE_OUTLIER_FACTOR * typical
    flagged = {ref: f"largest component {value:.3g} eV/A ({value / typical:.0f}x the median frame's)"
               for ref, value in largest.items() if value > limit}
    rule = (f"a force component above {FORCE_OUTLIER_FACTOR:g} x the median of each frame's largest "
            f"({limit:.3g} eV/A)")
    return _found("force outliers", rule, flagged)


def energy_outliers(refs, energies, compositions, n_atoms) -> tuple[Suspicious | None, float | None]:
    """Frames whose energy per atom (eV) is more than ENERGY_OUTLIER_SPREADS robust spreads from the rest after a
    per-species baseline (least absolute deviations, so the outliers do not move it), and that spread (eV/atom).

    The spread is the 10-90% range of the residuals over 2.563, the standard deviation of a normal distribution
    with that range: unmoved by up to a tenth of outliers, and, unlike the median absolute deviation, not made
    tiny by many near-identical frames (an MD run at one composition) beside a wider rest (rattled cells).
    ``compositions``: atoms of each species per frame. Needs 5 frames or more."""
    valid = np.isfinite(energies)
    if valid.sum() < 5:
        return None, None
    per_atom, features = energies[valid] / n_atoms[valid], compositions[valid] / n_atoms[valid, None]
    weights = _least_absolute_deviations(features, per_atom)
    residuals = per_atom - features @ weights
    centre = float(np.median(residuals))
    low, high = np.percentile(residuals, [10, 90])
    spread = max(float(high - low) / 2.563, ENERGY_RESOLUTION)
    scores = np.abs(residuals - centre) / spread
    flagged = {}
    for ref, score, energy, predicted in zip(np.array(refs, dtype=object)[valid], scores, per_atom, features @ weights):
        if score > ENERGY_OUTLIER_SPREADS:
            flagged[ref] = f"{energy:.4g} eV/atom, {score:.0f} spreads off{_unit_guess(energy, predicted)}"
    rule = (f"energy per atom more than {ENERGY_OUTLIER_SPREADS:g} robust spreads ({ENERGY_OUTLIER_SPREADS * spread:.3g} eV/atom) "
            "from a per-species baseline")
    return _found("energy per atom outliers", rule, flagged), spread


def _least_absolute_deviations(features: np.ndarray, values: np.ndarray, rounds: int = 50) -> np.ndarray:
    """Weights minimising sum |values - features @ weights|, by iteratively reweighted least squares."""
    weights = np.linalg.lstsq(features, values, rcond=None)[0]
    for _ in range(rounds):
        scale = 1.0 / np.sqrt(np.maximum(np.abs(values - features @ weights), 1e-9))
        updated = np.linalg.lstsq(features * scale[:, None], values * scale, rcond=None)[0]
        if np.allclose(updated, weights, rtol=1e-9, atol=1e-12):
            return updated
        weights = updated
    return weights


def _unit_guess(energy: float, predicted: float) -> str:
    """``; 23.1x what the rest predict: looks like kcal/mol`` when the ratio is within UNIT_MATCH of the number a
    value in eV becomes in some unit."""
    if abs(predicted) < 10 * ENERGY_RESOLUTION:
        return ""
    ratio = energy / predicted
    for unit, ev_per_unit in _energy_units().items():
        if unit != "eV" and abs(ratio * ev_per_unit - 1.0) < UNIT_MATCH:
            return f"; {ratio:.3g}x what the rest predict: looks like {unit}"
    return ""


def _found(kind: str, rule: str, flagged: dict) -> Suspicious | None:
    if not flagged:
        return None
    order = sorted(flagged, key=lambda ref: (ref.file, ref.index))
    return Suspicious(kind, rule, order, {ref: flagged[ref] for ref in order})
