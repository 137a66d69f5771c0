"""Dataset paths in options files: relative dataset file paths made absolute against the folder they were
written in, the one rule for every options file written elsewhere (``best.yaml``, ``retrain``'s ``hypers.yaml``).
"""

from __future__ import annotations

import copy
from pathlib import Path

DATASET_KEYS = ("training_set", "validation_set", "test_set")


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
