"""One streaming pass over the frames of the files: a few numbers per frame (``FrameFacts``) and a seeded
random sample of whole frames for the neighbour counts; nothing per atom is kept for the whole dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..extxyz import iter_frames
from ..labels import LabelKeyFinder, LabelKeys
from .report import FrameRef
from .suspicious import closest_overlap, fingerprint

VACUUM = 6.0  # A: a periodic direction with an empty gap this wide between atom planes is vacuum


@dataclass
class FrameFacts:
    """What one frame contributes to the report (labels as the file stores them: no unit conversion)."""

    ref: FrameRef
    n_atoms: int
    species: np.ndarray  # atomic numbers present
    counts: np.ndarray  # atoms of each
    geometry: str  # "periodic", "slab", "wire", "molecule", or "unusable" (positions or cell not finite, ...)
    energies: dict = field(default_factory=dict)  # key -> value
    forces: dict = field(default_factory=dict)  # key -> (sum of squares, components, largest |component|)
    stresses: dict = field(default_factory=dict)  # key -> largest |component| (a virial divided by the volume)
    overlap: str | None = None  # the closest overlapping pair, in words (suspicious.closest_overlap)
    fingerprint: bytes = b""
    problems: list = field(default_factory=list)  # short texts: non-finite values, a cell without volume, ...


@dataclass
class Collected:
    facts: list  # FrameFacts, in file order
    sample: list  # Frames: a seeded uniform sample of at most ``sample_size`` of them
    keys: LabelKeys  # of all frames
    key_frames: dict  # key -> frames holding it
    short_tensors: set  # stress/virial keys given as 6 numbers somewhere


def collect(paths, sample_size: int, seed: int) -> Collected:
    """Read every frame of ``paths`` once (``extxyz.iter_frames``)."""
    rng = np.random.default_rng(seed)
    facts, sample, key_frames, short_tensors = [], [], {}, set()
    keys_of = LabelKeyFinder()
    for file, path in enumerate(paths):
        for frame in iter_frames(path):
            ref = FrameRef(file, frame.index)
            keys = keys_of(frame)
            facts.append(frame_facts(frame, ref, keys, short_tensors))
            for kind_keys in (keys.energy, keys.forces, keys.stress, keys.virial):
                for key in kind_keys:
                    key_frames[key] = key_frames.get(key, 0) + 1
            _reservoir(sample, frame, len(facts), sample_size, rng)
    return Collected(facts, sample, keys_of.found, key_frames, short_tensors)


def frame_facts(frame, ref: FrameRef, keys, short_tensors: set) -> FrameFacts:
    species, counts = np.unique(frame.numbers, return_counts=True)
    facts = FrameFacts(ref, len(frame), species, counts, "unusable")
    finite = bool(np.isfinite(frame.positions).all() and np.isfinite(frame.cell).all())
    if not finite:
        facts.problems.append("positions or cell not finite")
    volume = abs(float(np.linalg.det(frame.cell))) if finite else 0.0
    if frame.pbc.any() and finite and volume < 1e-6:
        facts.problems.append("periodic but its cell has no volume")
        finite = False
    if finite:
        facts.geometry = geometry(frame)
        facts.overlap = closest_overlap(frame)
        facts.fingerprint = fingerprint(frame)
    for key in keys.energy:
        facts.energies[key] = _number(frame.info[key], facts, f"energy '{key}'")
    for key in keys.forces:
        forces = np.asarray(frame.arrays[key], dtype=np.float64)
        facts.forces[key] = (float(np.square(forces).sum()), forces.size, float(np.abs(forces).max(initial=0.0)))
        if not np.isfinite(facts.forces[key][0]):
            facts.problems.append(f"forces '{key}' not finite")
    for key in keys.stress + keys.virial:
        tensor = np.asarray(frame.info[key], dtype=np.float64)
        if tensor.size == 6:
            short_tensors.add(key)
        largest = float(np.abs(tensor).max())
        facts.stresses[key] = largest / volume if key in keys.virial and volume > 0 else largest
    return facts


def _number(value, facts: FrameFacts, what: str) -> float:
    """``value`` as a float; NaN, with a problem noted, when it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = np.nan
    if not np.isfinite(number):
        facts.problems.append(f"{what} not a finite number")
    return number


def geometry(frame) -> str:
    """"periodic", "slab", "wire" or "molecule": the periodic directions without a vacuum gap of ``VACUUM``."""
    if not frame.pbc.any():
        return "molecule"
    inverse = np.linalg.inv(frame.cell)
    ordered = np.sort((frame.positions @ inverse) % 1.0, axis=0)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 1.0]), axis=0).max(axis=0)
    plane_spacing = 1.0 / np.linalg.norm(inverse, axis=0)  # between lattice planes, per axis
    bulk = int(np.sum(frame.pbc & (gaps * plane_spacing < VACUUM)))
    return ("molecule", "wire", "slab", "periodic")[bulk]


def _reservoir(sample: list, item, seen: int, size: int, rng) -> None:
    """Algorithm R: after ``seen`` items, ``sample`` is a uniform random sample of at most ``size`` of them."""
    if len(sample) < size:
        sample.append(item)
    else:
        slot = int(rng.integers(seen))
        if slot < size:
            sample[slot] = item
