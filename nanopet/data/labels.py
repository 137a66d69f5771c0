"""Which keys of a frame hold what: energies, forces (per-atom 3-vectors), stresses and virials.

One answer shared by ``inspect`` (the keys it reports) and the dataset reader (its note when the data
holds a label that no target uses). It works on ``extxyz.Frame`` objects, where a frame's calculator
results are back in ``info`` (per structure) and ``arrays`` (per atom).

- energy: a real number in ``info`` whose name contains ``energy`` (or is ``E``);
- forces: a per-atom (n, 3) float array other than positions, velocities, momenta and magnetic moments;
- stress / virial: 6 or 9 numbers in ``info`` whose name contains ``stress`` / ``virial``.

Each list puts the conventional name first (``energy``, ``forces``, ``stress``, ``virial``), then names
that contain it, then the rest, alphabetically.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from numbers import Real

import numpy as np

NOT_FORCES = ("positions", "momenta", "velocities", "vel", "velo", "initial_magmoms", "magmoms", "spins", "dipoles")
KINDS = ("energy", "forces", "stress", "virial")
STEMS = {"energy": "energy", "forces": "force", "stress": "stress", "virial": "virial"}  # "force" finds "dft_force"


@dataclass(frozen=True)
class LabelKeys:
    """The keys of each kind of label found, the likeliest first."""

    energy: tuple = ()
    forces: tuple = ()
    stress: tuple = ()
    virial: tuple = ()

    def union(self, other: "LabelKeys") -> "LabelKeys":
        """The keys found in either (as in a file whose frames differ)."""
        return LabelKeys(**{kind: _ordered(kind, set(getattr(self, kind)) | set(getattr(other, kind))) for kind in KINDS})

    def __bool__(self) -> bool:
        return any(getattr(self, kind) for kind in KINDS)


def label_keys(frame) -> LabelKeys:
    """The label keys of one frame (anything with ``info``, ``arrays`` and a length)."""
    found = {kind: set() for kind in KINDS}
    for key, value in frame.info.items():
        lower = key.lower()
        if _is_real(value) and ("energy" in lower or key == "E"):
            found["energy"].add(key)
        elif np.size(value) in (6, 9) and _is_real_array(value):
            for kind in ("stress", "virial"):
                if kind in lower:
                    found[kind].add(key)
    for key, value in frame.arrays.items():
        if (key.lower() not in NOT_FORCES and isinstance(value, np.ndarray) and value.shape == (len(frame), 3)
                and value.dtype.kind == "f"):
            found["forces"].add(key)
    return LabelKeys(**{kind: _ordered(kind, keys) for kind, keys in found.items()})


class LabelKeyFinder:
    """``label_keys`` of frame after frame, looking once at each distinct set of key names (the frames of a
    file usually share one); ``found`` is the union so far."""

    def __init__(self):
        self._by_names = {}

    def __call__(self, frame) -> LabelKeys:
        names = (tuple(frame.info), tuple(frame.arrays))
        if names not in self._by_names:
            self._by_names[names] = label_keys(frame)
        return self._by_names[names]

    @property
    def found(self) -> LabelKeys:
        return functools.reduce(LabelKeys.union, self._by_names.values(), LabelKeys())


def dataset_label_keys(frames) -> LabelKeys:
    """The union of the label keys of ``frames``."""
    finder = LabelKeyFinder()
    for frame in frames:
        finder(frame)
    return finder.found


def _ordered(kind: str, keys) -> tuple:
    return tuple(sorted(keys, key=lambda k: (k != kind, STEMS[kind] not in k.lower(), k)))


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _is_real_array(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "if"
