"""The data splits as neighbour-listed datasets, and the rules that keep their neighbour lists built once.

- ``load_data``: the splits named in an options file, read and neighbour-listed once: in memory
  (``GraphDataset``), or, for large sets, prepared on disk once and memory-mapped by every process that reads
  them (``PreparedDataset``, ``nanopet.data.prepare``); ``prepare_data`` prepares them ahead (a search's launcher,
  before its workers start).
- ``Data``: train/val/test datasets; ``at_cutoff`` restricts them to a smaller cutoff by distance
  filtering (no new neighbour lists), so a search builds them once at the largest cutoff any trial uses;
  ``training_share`` cuts the training set to a nested share (a search's data-size fidelity).
- ``largest_cutoff``: that cutoff, from the base options' cutoff and the tuned parameters, keyed by the
  parameter's resolved path (``cutoff`` and ``architecture.model.cutoff`` are the same parameter).
- ``absolute_datasets``: relative dataset file paths made absolute against the folder they were written in,
  the one rule for every options file written elsewhere (``best.yaml``, ``retrain``'s ``hypers.yaml``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanopet.data.batch import GraphDataset
from nanopet.data.dataset import Dataset
from nanopet.errors import InputError
from nanopet.options import resolve_options

CUTOFF = ("architecture", "model", "cutoff")  # where a trial's cutoff is in its options
DATASET_KEYS = ("training_set", "validation_set", "test_set")


@dataclass
class Data:
    """The splits as neighbour-listed datasets; a search worker builds it once and passes it to every trial."""

    train: Dataset
    val: Dataset
    test: Dataset

    def at_cutoff(self, cutoff: float) -> "Data":
        return Data(self.train.at_cutoff(cutoff), self.val.at_cutoff(cutoff), self.test.at_cutoff(cutoff))

    @property
    def atomic_types(self) -> list[int]:
        """The atomic numbers of all three splits, sorted."""
        return sorted(set(self.train.atomic_types) | set(self.val.atomic_types) | set(self.test.atomic_types))

    @property
    def prepared_folders(self) -> list[str]:
        """The prepared folders the splits are mapped from (none: read into memory)."""
        stores = {getattr(d, "store", None) for d in (self.train, self.val, self.test)} - {None}
        return sorted(str(store.folder) for store in stores)

    def training_share(self, share: float, seed: int = 0) -> "Data":
        """The training set cut to its first ``share`` in a permutation drawn from ``seed`` (so a smaller share's
        structures are among a larger one's), at least one structure; validation and test sets unchanged."""
        if share >= 1.0:
            return self
        count = max(1, round(share * len(self.train)))
        keep = np.sort(np.random.default_rng(seed).permutation(len(self.train))[:count])
        return Data(self.train.subset(keep), self.val, self.test)


def load_data(options: dict, base_dir: str | Path = ".", cutoff: float | None = None, prepared: bool | None = None) -> Data:
    """Read the splits named in ``options`` and compute neighbour lists once, at ``cutoff``. ``prepared``: read each
    dataset prepared on disk (True), in memory (False), or as ``nanopet.data.prepare.prepared_folder`` decides."""
    options = resolve_options(options)
    return read_data(options, base_dir, cutoff or cutoff_of(options), prepared)


def read_data(options: dict, base_dir: str | Path, cutoff: float, prepared: bool | None = None) -> Data:
    """Read the splits named in resolved ``options`` and compute neighbour lists once, at ``cutoff``."""
    from nanopet.data.read import split_indices

    if not isinstance(options, dict) or options.get("training_set") is None:
        raise InputError("options: 'training_set' is required (a file path or a dataset dict)")
    train = open_dataset(options["training_set"], base_dir, cutoff, "training_set", prepared)
    chosen = split_indices(options, len(train), options["seed"])
    sets = {key: open_dataset(options[key], base_dir, cutoff, key, prepared) if indices is None else train.subset(indices)
            for key, indices in chosen.items()}
    return Data(sets["training_set"], sets["validation_set"], sets["test_set"])


def open_dataset(dataset, base_dir: str | Path, cutoff: float, name: str = "training_set", prepared: bool | None = None) -> Dataset:
    """One dataset config (a path, a dict, or a list of them) neighbour-listed at ``cutoff``: prepared on disk and
    memory-mapped, or read into memory (``prepared`` as in ``load_data``)."""
    from nanopet.data.prepare import prepared_folder
    from nanopet.data.prepared import PreparedDataset, open_store
    from nanopet.data.read import dataset_specs, spec_structures

    specs = dataset_specs(dataset, base_dir, name)
    folder = prepared_folder(specs, cutoff, prepared)
    if folder is None:
        return GraphDataset([s for spec in specs for s in spec_structures(spec)], cutoff)
    return PreparedDataset(open_store(folder), cutoff=cutoff, specs=specs)


def prepare_data(options: dict, base_dir: str | Path, cutoff: float, prepared: bool | None = None) -> None:
    """Prepare on disk now, once, the datasets of ``options`` that ``load_data`` would read prepared at ``cutoff``
    (so that the processes started next open them instead of each preparing or reading them)."""
    from nanopet.data.prepare import prepared_folder
    from nanopet.data.read import dataset_specs

    options = resolve_options(options)
    for key in DATASET_KEYS:
        dataset = options.get(key)
        if dataset is not None and not isinstance(dataset, (int, float)):
            prepared_folder(dataset_specs(dataset, base_dir, key), cutoff, prepared)


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
