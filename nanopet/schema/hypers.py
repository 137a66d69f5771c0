"""The hyperparameters' schema, built from ``nanopet/default-hypers.yaml``: the type and bounds of each one are
declared here, once; its default (the value) and its one-line doc (the comment after it) are read from the YAML,
which stays the one place for both. A key in the YAML without a type here (or the reverse) fails at import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import AfterValidator, Field, StrictBool, create_model, model_validator

from nanopet.schema.base import By, Expect, Number, Section, problem

DEFAULT_HYPERS_FILE = Path(__file__).resolve().parents[1] / "default-hypers.yaml"  # beside model.py, whose hypers it documents
LOSS_TERMS = ("energy", "forces", "virial")
LOSS_TYPES = ("mse", "mae", "huber")
REDUCTIONS = ("mean", "sum")
SCHEDULERS = ("cosine", "plateau")
INITIALISATIONS = ("torch", "balanced")
# mappings whose keys are the user's own (targets, species), not hyperparameter names
FREE_FORM = {"heads", "fixed_composition_weights", "deltas", "weights"}


def documented(path: Path = DEFAULT_HYPERS_FILE) -> tuple[dict, dict]:
    """(values, docs) of a YAML file: its mapping, and the comment after each key by dotted path (``model.cutoff``);
    comment lines indented past the key continue its comment."""
    text = path.read_text()
    docs, stack, last = {}, [], None
    for line in text.splitlines():
        key = re.match(r"( *)([A-Za-z_]\w*):(.*)", line)
        comment = re.match(r"( +)#\s?(.*)", line)
        if key:
            indent = len(key[1])
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key[2])]
            last = ".".join(k for _, k in stack)
            if " #" in key[3]:
                docs[last] = key[3].split(" #", 1)[1].strip()
        elif comment and last in docs and len(comment[1]) > stack[-1][0]:
            docs[last] += " " + comment[2].strip()
        else:
            last = None
    return yaml.safe_load(text), docs


HYPERS, DOCS = documented()

PositiveInt = Annotated[int, Number(gt=0, strict=True)]
PositiveFloat = Annotated[float, Number(gt=0, strict=True)]
Share = Annotated[float, Number(ge=0, lt=1, strict=True)]


class Hypers(Section):
    """A section of hyperparameters: a key is called an option."""

    noun = "option"


class Terms(Section):
    """A value per loss term."""

    noun = "loss term"


class Weights(Terms):
    """The weight of each loss term; a term not given weighs 1.0."""

    energy: Annotated[float, Number(ge=0, strict=True)] = 1.0
    forces: Annotated[float, Number(ge=0, strict=True)] = 1.0
    virial: Annotated[float, Number(ge=0, strict=True)] = 1.0


class Deltas(Terms):
    """Huber's delta of each loss term (huber only; compare-losses derives a missing one from the data)."""

    energy: PositiveFloat | None = None
    forces: PositiveFloat | None = None
    virial: PositiveFloat | None = None


class HuberDeltas(Hypers):
    deltas: Deltas | None = None


class MetatrainHuber(Hypers):
    """metatrain's spelling of a Huber loss: ``type: {huber: {deltas: {...}}}``."""

    huber: HuberDeltas | None = None


LossType = Annotated[Union[Literal[LOSS_TYPES], MetatrainHuber],
                     By(lambda value: (MetatrainHuber if isinstance(value, dict) else Literal[LOSS_TYPES], value))]


class ModelHypers(Hypers):
    """architecture.model: the network (nanopet/model.py)."""

    @model_validator(mode="after")
    def _heads_divide_the_width(self):
        if self.d_pet % self.num_heads:
            raise problem(f"must be divisible by num_heads ({self.num_heads}), got {self.d_pet}", "d_pet")
        return self


# Each hyperparameter's type and bounds; its default and doc are default-hypers.yaml's. A nested mapping is a section.
MODEL = {
    "cutoff": PositiveFloat,
    "cutoff_width": PositiveFloat,
    "d_pet": PositiveInt,
    "num_heads": PositiveInt,
    "num_attention_layers": PositiveInt,
    "num_gnn_layers": PositiveInt,
    "heads": dict[str, Literal["linear", "mlp"]],
    "zbl": StrictBool,
}
TRAINING = {
    "distributed": StrictBool,
    "distributed_port": PositiveInt,
    "batch_size": PositiveInt,
    "num_epochs": PositiveInt,
    "learning_rate": PositiveFloat,
    "scheduler": Literal[SCHEDULERS],
    "warmup_fraction": Share,
    "scheduler_epochs": Union[PositiveInt, None],
    "scheduler_patience": Annotated[int, Number(ge=0, strict=True)],
    "scheduler_factor": Annotated[float, Number(gt=0, lt=1, strict=True)],
    "log_interval": PositiveInt,
    "checkpoint_interval": PositiveInt,
    # its species are checked against the training set's (nanopet/composition.py)
    "fixed_composition_weights": Annotated[dict[str, dict], Expect("a mapping {energy: {atomic number or symbol: eV}}")],
    "per_structure_targets": list[str],
    "log_mae": StrictBool,
    "rotational_augmentation": StrictBool,
    "initialisation": Literal[INITIALISATIONS],
    "atoms_per_pass": Annotated[Union[Literal["auto"], PositiveInt], Expect("auto or a positive integer")],
    "loss": {"type": LossType, "deltas": Deltas, "weights": Weights, "reduction": Literal[REDUCTIONS]},
}


def section(name: str, path: str, types: dict, base: type[Section] = Hypers, doc: str | None = None) -> type[Section]:
    """The model of the mapping at ``path`` in default-hypers.yaml: ``types``' types, the YAML's defaults and docs."""
    values = HYPERS
    for part in path.split("."):
        values = values[part]
    if list(values) != list(types):
        raise RuntimeError(f"{DEFAULT_HYPERS_FILE}: {path} has keys {list(values)}, the schema {list(types)}")
    fields = {}
    for key, kind in types.items():
        if isinstance(kind, dict):
            kind = section(key.capitalize(), f"{path}.{key}", kind)
        fields[key] = (kind, Field(values[key], description=DOCS.get(f"{path}.{key}")))
    return create_model(name, __base__=base, __doc__=doc or f"architecture.{path}", __module__=__name__, **fields)


Model = section("Model", "model", MODEL, ModelHypers, ModelHypers.__doc__)
Training = section("Training", "training", TRAINING, doc="architecture.training: the trainer (nanopet/train.py)")
Loss = Training.model_fields["loss"].annotation


def nanopet(name: str) -> str:
    if str(name).lower() not in {"nanopet", "experimental.nanopet"}:
        raise problem(f"'{name}' is not supported; this tool trains nanopet")
    return name


class Architecture(Hypers):
    """The architecture and its hyperparameters; anything not given takes default-hypers.yaml's default."""

    name: Annotated[str, AfterValidator(nanopet)] = Field(
        "nanopet", description="nanopet (metatrain's experimental.nanopet)")
    model: Model = Field(HYPERS["model"], description=Model.__doc__)
    training: Training = Field(HYPERS["training"], description=Training.__doc__)
