"""The data splits as neighbour-listed datasets, and the rules that keep their neighbour lists built once.

- ``load_data``: the splits named in an options file, read and neighbour-listed once.
- ``Data``: train/val/test ``GraphDataset``s; ``at_cutoff`` restricts them to a smaller cutoff by distance
  filtering (no new neighbour lists), so a search builds them once at the largest cutoff any trial uses;
  ``training_share`` cuts the training set to a nested share (a search's data-size fidelity).
- ``largest_cutoff``: that cutoff, from the base options' cutoff and the tuned parameters, keyed by the
  parameter's resolved path (``cutoff`` and ``architecture.model.cutoff`` are the same parameter).
- ``absolute_datasets``: relative dataset file paths made absolute against the folder they were written in,
  the one rule for every options file written elsewhere (``best.yaml``, ``retrain``'s ``hypers.yaml``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanopet.data.batch import GraphDataset
from nanopet.options import resolve_options

CUTOFF = ("architecture", "model", "cutoff")  # where a trial's cutoff is in its options
DATASET_KEYS = ("training_set", "validation_set", "test_set")


@dataclass
class Data:
    """The splits as neighbour-listed datasets; a search worker builds it once and passes it to every trial."""

    train: GraphDataset
    val: GraphDataset
    test: GraphDataset

    def at_cutoff(self, cutoff: float) -> "Data":
        def restricted(dataset):
            if cutoff > dataset.cutoff + 1e-9:
                return GraphDataset(dataset.structures, cutoff)
            return dataset if math.isclose(dataset.cutoff, cutoff) else dataset.restrict(cutoff)

        return Data(restricted(self.train), restricted(self.val), restricted(self.test))

    def training_share(self, share: float, seed: int = 0) -> "Data":
        """The training set cut to its first ``share`` in a permutation drawn from ``seed`` (so a smaller share's
        structures are among a larger one's), at least one structure; validation and test sets unchanged."""
        if share >= 1.0:
            return self
        count = max(1, round(share * len(self.train)))
        keep = np.sort(np.random.default_rng(seed).permutation(len(self.train))[:count])
        return Data(self.train.subset(keep), self.val, self.test)


def load_data(options: dict, base_dir: str | Path = ".", cutoff: float | None = None) -> Data:
    """Read the splits named in ``options`` and compute neighbour lists once, at ``cutoff``."""
    options = resolve_options(options)
    return read_data(options, base_dir, cutoff or cutoff_of(options))


def read_data(options: dict, base_dir: str | Path, cutoff: float) -> Data:
    """Read the splits named in resolved ``options`` and compute neighbour lists once, at ``cutoff``."""
    from nanopet.data.read import load_splits

    train_set, val_set, test_set = load_splits(options, base_dir=base_dir, seed=options["seed"])
    return Data(GraphDataset(train_set, cutoff), GraphDataset(val_set, cutoff), GraphDataset(test_set, cutoff))


def cutoff_of(options: dict) -> float:
    """The cutoff resolved ``options`` train with."""
    return float(options["architecture"]["model"]["cutoff"])


def largest_cutoff(cutoff: float, parameters=()) -> float:
    """The largest cutoff of a search: the base ``cutoff`` and the highest value of any tuned parameter whose
    path is the cutoff's (``parameters``: objects with ``path``, ``type``, ``choices``, ``high``)."""
    cutoffs = [cutoff]
    for parameter in parameters:
        if tuple(parameter.path) == CUTOFF:
            cutoffs += list(parameter.choices) if parameter.type == "categorical" else [parameter.high]
    return float(max(cutoffs))


def absolute_datasets(options: dict, base_dir: str | Path) -> dict:
    """``options`` with relative dataset file paths made absolute (against ``base_dir``): a plain path, and
    the ``systems`` / ``read_from`` paths of a dataset mapping (a ``builtin`` name is not a path)."""
    base_dir = Path(base_dir)

    def fix(value, key=None):
        if isinstance(value, str) and key in (None, "systems", "read_from"):
            return value if Path(value).is_absolute() else str((base_dir / value).resolve())
        if isinstance(value, dict):
            return {k: (v if k == "builtin" else fix(v, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    options = copy.deepcopy(options)
    for key in DATASET_KEYS:
        if key in options and not isinstance(options[key], (int, float)):
            options[key] = fix(options[key])
    return options
