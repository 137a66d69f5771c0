"""Training options (``options.yaml``): defaults merged with the user's file, every key checked.

An options file looks like metatrain's::

    seed: 0
    device: auto            # auto | cpu | cuda | cuda:N
    base_precision: 32      # 32 | 64 (float32 is the default here; upstream NanoPET defaults to 64)
    architecture:
      model: {cutoff: 4.5}  # any key of default-hypers.yaml `model`
      training: {num_epochs: 50, loss: {type: huber, deltas: {energy: 0.01, forces: 0.1, virial: 0.01}}}
    training_set: data.xyz  # or a dataset mapping, see nanopet.data.read
    validation_set: 0.1
    test_set: 0.1

Every key is checked against the schema (nanopet/schema: types, bounds, defaults and docs from default-hypers.yaml):
an unknown key is an error with a did-you-mean, so a typo never silently trains the default.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from nanopet.errors import InputError
from nanopet.schema import Options, validate
from nanopet.schema.hypers import DEFAULT_HYPERS_FILE, FREE_FORM, HYPERS, INITIALISATIONS, LOSS_TERMS, SCHEDULERS  # noqa: F401

RUN_DEFAULTS = {key: Options.model_fields[key].default for key in ("seed", "device", "base_precision")}
TOP_LEVEL_KEYS = set(Options.model_fields)


def default_hypers() -> dict:
    """The documented defaults (``default-hypers.yaml``, beside ``model.py``): {"model": ..., "training": ...}."""
    return copy.deepcopy(HYPERS)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a syntax error becomes a one-line InputError with the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of options at the top level, got {type(data).__name__}")
    return data


def overlay(defaults: dict, given: dict) -> dict:
    """``given`` over ``defaults``, mapping by mapping (a free-form mapping such as ``heads`` is replaced whole)."""
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(defaults.get(key), dict) and key not in FREE_FORM:
            merged[key] = overlay(defaults[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_options(options: dict) -> dict:
    """Full options: every key checked against the schema (nanopet/schema), defaults for everything not given, the
    values as given. Idempotent."""
    options = dict(options or {})
    validate(Options, options)
    architecture = dict(options.get("architecture") or {})
    architecture.pop("name", None)
    resolved = {**RUN_DEFAULTS, **{k: v for k, v in options.items() if k != "architecture"}}
    resolved["architecture"] = overlay(default_hypers(), architecture)
    return resolved


def loss_type(loss: dict) -> tuple[str, dict]:
    """(type, deltas); accepts ``type: huber`` + ``deltas`` and metatrain's ``type: {huber: {deltas: ..}}``."""
    kind, deltas = loss["type"], dict(loss.get("deltas") or {})
    if isinstance(kind, dict) and list(kind) == ["huber"]:
        deltas = {**deltas, **dict((kind["huber"] or {}).get("deltas") or {})}
        kind = "huber"
    return kind, deltas


def write_options(path: Path, options: dict, header: list[str]) -> Path:
    """An options file at ``path`` (folders made): ``header`` as comment lines, then the options as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(json.loads(json.dumps(options)), sort_keys=False)
    path.write_text(text)
    return path
