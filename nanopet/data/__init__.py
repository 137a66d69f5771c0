"""Datasets: labelled structures, metatrain-style dataset reading, and the built-in EMT dataset."""

from .emt import builtin_dataset, generate_emt_alloy, write_emt_alloy
from .read import load_splits, read_structures
from .structure import Structure

__all__ = [
    "Structure",
    "read_structures",
    "load_splits",
    "generate_emt_alloy",
    "write_emt_alloy",
    "builtin_dataset",
]
