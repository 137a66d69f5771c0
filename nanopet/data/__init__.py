"""Datasets: labelled structures, metatrain-style dataset reading, and the built-in datasets
(EMT fcc alloys, xtb molecules)."""

from .builtin import BUILTIN_DATASETS, write_builtin_dataset
from .emt import generate_emt_alloy, write_emt_alloy
from .read import builtin_dataset, load_splits, read_structures
from .structure import Structure
from .xtb import generate_xtb_molecules

__all__ = [
    "Structure",
    "read_structures",
    "load_splits",
    "generate_emt_alloy",
    "write_emt_alloy",
    "generate_xtb_molecules",
    "BUILTIN_DATASETS",
    "write_builtin_dataset",
    "builtin_dataset",
]
