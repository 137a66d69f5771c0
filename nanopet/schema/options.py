"""The options file's schema: the run settings, the architecture (``hypers.py``), the datasets, and the
``compare_losses:`` section that ``nanopet-tune compare-losses`` reads from an options file.

A dataset (``training_set``, ``validation_set``, ``test_set``; read by nanopet/data/read.py) is a file, a list
of datasets, or a mapping::

    systems: {read_from: data.xyz, length_unit: angstrom}   # or `systems: data.xyz`, or {builtin: emt-alloy, n: 200, seed: 0}
    targets:
      energy: {key: energy, unit: eV, forces: {key: forces}, stress: {key: stress}}   # or virial: {key: virial}
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Literal, Optional, Union

from pydantic import BeforeValidator, Field, StrictBool

from nanopet.schema.base import By, Number, Section, problem
from nanopet.schema.hypers import LOSS_TYPES, REDUCTIONS, Architecture, Deltas, Hypers, PositiveInt, Weights

FilePath = Annotated[str, BeforeValidator(lambda value: str(value) if isinstance(value, PurePath) else value)]
Reader = Optional[Literal["ase"]]
DEFAULT_BUILTIN_SIZE = 1000


class Builtin(Section):
    """A built-in dataset, generated on first use and cached (nanopet/data/builtin.py)."""

    builtin: str = Field(description="emt-alloy | xtb-molecules")
    n: Annotated[int, Number(ge=1, strict=True)] = Field(DEFAULT_BUILTIN_SIZE, description="number of structures")
    seed: Annotated[int, Number(ge=0, strict=True)] = Field(0, description="the generator's seed")


class Systems(Section):
    """A structure file, read with ase.io.read."""

    read_from: FilePath = Field(description="the structure file, relative to the options file")
    reader: Reader = Field(None, description="ase (the only reader)")
    length_unit: str = Field("angstrom", description="angstrom | bohr | nm")


class Gradient(Section):
    """Where a gradient label is read."""

    read_from: Optional[FilePath] = Field(None, description="its file; default: the energy's")
    reader: Reader = Field(None, description="ase (the only reader)")
    key: Optional[str] = Field(None, description="its key in the file; default: the label's name")


def _gradient(value):
    if value is None or isinstance(value, (bool, str)):
        return Union[None, StrictBool, str], value
    if isinstance(value, dict):
        return Gradient, value
    raise problem(f"expected true/false, a key, or a mapping like {{key: forces}}, got {value!r}")


GradientLabel = Annotated[Union[StrictBool, str, Gradient, None], By(_gradient)]


class Energy(Section):
    """The energy target, and the labels of its gradients: true (the default key), false (off), a key, or a mapping."""

    quantity: Literal["energy"] = "energy"
    read_from: Optional[FilePath] = Field(None, description="the file of the energies; default: the systems' file")
    reader: Reader = Field(None, description="ase (the only reader)")
    key: Optional[str] = Field("energy", description="the energy's key in the file")
    unit: Optional[str] = Field("eV", description="eV | meV | Hartree | kcal/mol | kJ/mol | Ry")
    forces: GradientLabel = Field(True, description="forces: read from the key forces by default")
    stress: GradientLabel = Field(None, description="stress: read from the key stress where present, unless virial is given")
    virial: GradientLabel = Field(None, description="virial (instead of stress): off by default")


class Targets(Section):
    energy: Optional[Energy] = None


def _systems(value):
    if isinstance(value, (str, PurePath)):
        return FilePath, value
    if isinstance(value, dict):
        return (Builtin if "builtin" in value else Systems), value
    raise problem(f"expected a file path or a mapping with 'read_from', got {value!r}")


class Dataset(Section):
    """A dataset: its structures and where its labels are."""

    systems: Annotated[Union[FilePath, Systems, Builtin], By(_systems)] = Field(
        description="the structure file (e.g. systems: data.xyz), {read_from, length_unit} or {builtin, n, seed}")
    targets: Optional[Targets] = None


def _entry(value):
    if isinstance(value, (str, PurePath)):
        return FilePath, value
    if isinstance(value, dict):
        return Dataset, value
    raise problem(f"expected a file path or a mapping with 'systems' and 'targets', got {value!r}")


DatasetEntry = Annotated[Union[FilePath, Dataset], By(_entry)]
Datasets = Annotated[Union[FilePath, Dataset, list[DatasetEntry]],
                     By(lambda value: (Annotated[list[DatasetEntry], Field(min_length=1)], value) if isinstance(value, list)
                        else _entry(value))]
Fraction = Annotated[float, Number(ge=0, lt=1, strict=True)]
Split = Annotated[Union[Fraction, Datasets, None],
                  By(lambda value: (type(None), None) if value is None else (Fraction, value)
                     if isinstance(value, (int, float)) and not isinstance(value, bool) else (Datasets, value))]


class Options(Hypers):
    """An options file (nanopet-tune train OPTIONS.yaml): anything not given takes its default."""

    seed: Annotated[int, Number(strict=True)] = Field(
        0, description="the training seed: initial weights, batches, augmentation and the split of fractions")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    base_precision: Literal[32, 64] = Field(32, description="32 | 64 (float32 the default here; upstream NanoPET defaults to 64)")
    architecture: Optional[Architecture] = Field(None, description=Architecture.__doc__)
    training_set: Datasets = Field(description="the training data: a file (training_set: data.xyz), a list of datasets, "
                                               "or a mapping {systems: .., targets: ..}, e.g. {systems: {builtin: emt-alloy}}")
    validation_set: Split = Field(0.1, description="a fraction of training_set in [0, 1), or a dataset; null: none")
    test_set: Split = Field(0.0, description="a fraction of training_set in [0, 1), or a dataset; null: none")


def _listed(value):
    return [value] if isinstance(value, (str, dict)) else value


def axis(kind):
    """A list of values (a single value is a list of one)."""
    return Annotated[list[kind], BeforeValidator(_listed), Field(min_length=1)]


class CompareLosses(Section):
    """The loss variants nanopet-tune compare-losses trains: the product of the axes given (the command line wins
    per axis); a file with this section is for compare-losses, not for train."""

    types: Optional[axis(Literal[LOSS_TYPES])] = Field(None, description="loss types, e.g. [mse, mae, huber]")
    reductions: Optional[axis(Literal[REDUCTIONS])] = Field(None, description="reductions, e.g. [mean, sum]")
    weights: Optional[axis(Weights)] = Field(
        None, description="weight sets, each over the hypers' weights, e.g. [{forces: 1}, {forces: 10}]")
    deltas: Optional[Deltas] = Field(None, description="Huber deltas (default: the hypers', then 0.1 x RMS of the term's target)")
    seeds: PositiveInt = Field(3, description="seeds per variant (the options' seed, seed + 1, ...)")
    epochs: Optional[PositiveInt] = Field(None, description="epochs of every run; default: the options' num_epochs")


class OptionsFile(Options):
    """An options file, as an editor checks it: the options, and the compare_losses: section compare-losses reads."""

    compare_losses: Optional[CompareLosses] = Field(None, description=CompareLosses.__doc__)
