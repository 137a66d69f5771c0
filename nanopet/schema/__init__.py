"""One typed schema for the files users write: options files, search spaces and the loss comparison.

Each option is declared once, as a pydantic model field: its type and bounds here, its default and one-line
doc in ``nanopet/default-hypers.yaml`` for the hyperparameters. The validator, the one-line error with its key
path (``base.input_error``) and the JSON Schema editors use (``nanopet-tune schema options|space``) all come
from these declarations; what a type cannot say (a relation between two options) is checked where the file
is read (nanopet/options.py, nanopet/tune/space.py, nanopet/data/read.py, nanopet/compare_losses.py).

- ``base``: Section (unknown and missing keys), Number, Expect, By, ``validate`` and ``input_error``;
- ``hypers``: architecture.model / architecture.training from default-hypers.yaml;
- ``options``: an options file: run settings, datasets, the compare_losses section;
- ``space``: a search-space file's sections.
"""

from __future__ import annotations

from nanopet.schema.base import Section, input_error, validate
from nanopet.schema.options import CompareLosses, Options, OptionsFile
from nanopet.schema.space import SearchSpaceFile

SCHEMAS = {"options": OptionsFile, "space": SearchSpaceFile}
DIALECT = "https://json-schema.org/draft/2020-12/schema"

__all__ = ["CompareLosses", "Options", "OptionsFile", "SCHEMAS", "SearchSpaceFile", "Section", "input_error", "json_schema",
           "validate"]


def json_schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of an options file (``options``) or a search-space file (``space``)."""
    return {"$schema": DIALECT, **SCHEMAS[kind].model_json_schema()}
