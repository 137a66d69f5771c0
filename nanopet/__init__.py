"""nanopet-tune: NanoPET machine-learning interatomic potential and its hyperparameter workbench.

Public API (everything else is internal):

- ``NanoPET``: the model (``nanopet.model``), ``default_hypers()`` its documented defaults (``nanopet.options``)
- ``train(options, on_epoch=...)``: the trainer, ``load_data`` / ``Data`` to reuse neighbour lists
- ``NanoPETCalculator``: an ASE calculator from a checkpoint
- ``Structure``, ``read_structures``, ``load_splits``, ``generate_emt_alloy``: data
"""

from nanopet.calculator import NanoPETCalculator
from nanopet.checkpoints import load_checkpoint, model_from_checkpoint
from nanopet.data import Structure, generate_emt_alloy, load_splits, read_structures
from nanopet.data.splits import Data, load_data
from nanopet.errors import InputError, NanoPETError, NonFiniteLossError
from nanopet.model import NanoPET
from nanopet.options import default_hypers, resolve_options
from nanopet.train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "NanoPET",
    "default_hypers",
    "train",
    "TrainResult",
    "Data",
    "load_data",
    "load_checkpoint",
    "model_from_checkpoint",
    "resolve_options",
    "NanoPETCalculator",
    "Structure",
    "read_structures",
    "load_splits",
    "generate_emt_alloy",
    "NanoPETError",
    "InputError",
    "NonFiniteLossError",
]
