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

Unknown keys are errors (with a did-you-mean), so a typo never silently trains the default.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from nanopet.errors import InputError, did_you_mean

DEFAULT_HYPERS_FILE = Path(__file__).with_name("default-hypers.yaml")  # beside model.py, whose hypers it documents
RUN_DEFAULTS = {"seed": 0, "device": "auto", "base_precision": 32}
INITIALISATIONS = ("torch", "balanced")  # architecture.training.initialisation (nanopet/train.py)
SCHEDULERS = ("cosine", "plateau")  # architecture.training.scheduler (nanopet/train.py)
TOP_LEVEL_KEYS = {"seed", "device", "base_precision", "architecture", "training_set", "validation_set", "test_set"}
LOSS_TERMS = ("energy", "forces", "virial")
# mappings whose keys are the user's own (targets, species), not hyperparameter names
FREE_FORM = {"heads", "fixed_composition_weights", "deltas", "weights"}


def default_hypers() -> dict:
    """The documented defaults (``default-hypers.yaml``, beside ``model.py``): {"model": ..., "training": ...}."""
    with open(DEFAULT_HYPERS_FILE) as f:
        return yaml.safe_load(f)


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


def merge_checked(defaults: dict, given: dict, path: str) -> dict:
    """Recursively overlay ``given`` on ``defaults``; unknown keys and mapping/scalar mix-ups are errors."""
    merged = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        where = f"{path}.{key}" if path else str(key)
        if key not in defaults:
            raise InputError(f"{where}: unknown option{did_you_mean(key, defaults)}; known: {', '.join(map(str, defaults))}")
        if isinstance(defaults[key], dict) and key not in FREE_FORM:
            if not isinstance(value, dict):
                raise InputError(f"{where}: expected a mapping, got {value!r}")
            merged[key] = merge_checked(defaults[key], value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_options(options: dict) -> dict:
    """Full options: defaults for everything not given, validated. Idempotent."""
    options = dict(options or {})
    for key in options:
        if key not in TOP_LEVEL_KEYS:
            raise InputError(f"{key}: unknown option{did_you_mean(key, TOP_LEVEL_KEYS)}; known: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    if "training_set" not in options:
        raise InputError("training_set: missing; give a file (training_set: data.xyz) or {systems: {builtin: emt-alloy}}")
    architecture = dict(options.get("architecture") or {})
    name = architecture.pop("name", "nanopet")
    if str(name).lower() not in {"nanopet", "experimental.nanopet"}:
        raise InputError(f"architecture.name: '{name}' is not supported; this tool trains nanopet")
    resolved = {**RUN_DEFAULTS, **{k: v for k, v in options.items() if k != "architecture"}}
    resolved["architecture"] = merge_checked(default_hypers(), architecture, "architecture")
    check_values(resolved)
    return resolved


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def check_values(options: dict) -> None:
    """Range and type checks that name the key path."""
    _require(options["base_precision"] in (32, 64), f"base_precision: must be 32 or 64, got {options['base_precision']!r}")
    _require(isinstance(options["seed"], int), f"seed: must be an integer, got {options['seed']!r}")
    model, training = options["architecture"]["model"], options["architecture"]["training"]
    for key in ("cutoff", "cutoff_width"):
        _require(isinstance(model[key], (int, float)) and model[key] > 0,
                 f"architecture.model.{key}: must be a positive number, got {model[key]!r}")
    for key in ("d_pet", "num_heads", "num_attention_layers", "num_gnn_layers"):
        _require(isinstance(model[key], int) and model[key] >= 1,
                 f"architecture.model.{key}: must be a positive integer, got {model[key]!r}")
    _require(model["d_pet"] % model["num_heads"] == 0,
             f"architecture.model.d_pet ({model['d_pet']}) must be divisible by num_heads ({model['num_heads']})")
    _require(isinstance(model["heads"], dict), "architecture.model.heads: expected a mapping {energy: linear|mlp}")
    for target, kind in model["heads"].items():
        _require(kind in ("linear", "mlp"), f"architecture.model.heads.{target}: must be linear or mlp, got {kind!r}")
    for key in ("batch_size", "num_epochs", "scheduler_patience", "log_interval", "checkpoint_interval", "distributed_port"):
        _require(isinstance(training[key], int) and training[key] >= (0 if key == "scheduler_patience" else 1),
                 f"architecture.training.{key}: must be a positive integer, got {training[key]!r}")
    _require(isinstance(training["learning_rate"], (int, float)) and training["learning_rate"] > 0,
             f"architecture.training.learning_rate: must be a positive number, got {training['learning_rate']!r}")
    _require(training["scheduler"] in SCHEDULERS,
             f"architecture.training.scheduler: must be {' or '.join(SCHEDULERS)}, got {training['scheduler']!r}")
    _require(isinstance(training["warmup_fraction"], (int, float)) and 0 <= training["warmup_fraction"] < 1,
             f"architecture.training.warmup_fraction: must be in [0, 1), got {training['warmup_fraction']!r}")
    _require(isinstance(training["scheduler_factor"], (int, float)) and 0 < training["scheduler_factor"] < 1,
             f"architecture.training.scheduler_factor: must be in (0, 1), got {training['scheduler_factor']!r}")
    _require(training["atoms_per_pass"] == "auto" or (isinstance(training["atoms_per_pass"], int) and training["atoms_per_pass"] >= 1),
             f"architecture.training.atoms_per_pass: must be auto or a positive integer, got {training['atoms_per_pass']!r}")
    _require(training["initialisation"] in INITIALISATIONS,
             f"architecture.training.initialisation: must be {' or '.join(INITIALISATIONS)}, got {training['initialisation']!r}")
    _require(isinstance(training["per_structure_targets"], list),
             "architecture.training.per_structure_targets: expected a list of target names, e.g. [energy]")
    check_loss(training["loss"])


def loss_type(loss: dict) -> tuple[str, dict]:
    """(type, deltas); accepts ``type: huber`` + ``deltas`` and metatrain's ``type: {huber: {deltas: ..}}``."""
    kind, deltas = loss["type"], dict(loss.get("deltas") or {})
    if isinstance(kind, dict) and list(kind) == ["huber"]:
        deltas = {**deltas, **dict((kind["huber"] or {}).get("deltas") or {})}
        kind = "huber"
    return kind, deltas


def check_loss(loss: dict) -> None:
    kind, deltas = loss_type(loss)
    _require(kind in ("mse", "mae", "huber"), f"architecture.training.loss.type: must be mse, mae or huber, got {kind!r}")
    _require(loss["reduction"] in ("mean", "sum"),
             f"architecture.training.loss.reduction: must be mean or sum, got {loss['reduction']!r}")
    for section, values in (("weights", loss["weights"]), ("deltas", deltas)):
        for key, value in values.items():
            _require(key in LOSS_TERMS, f"architecture.training.loss.{section}.{key}: unknown loss term"
                     f"{did_you_mean(key, LOSS_TERMS)}; known: {', '.join(LOSS_TERMS)}")
            _require(isinstance(value, (int, float)) and value >= (0 if section == "weights" else 1e-300),
                     f"architecture.training.loss.{section}.{key}: must be a {'non-negative' if section == 'weights' else 'positive'} number, got {value!r}")


def write_options(path: Path, options: dict, header: list[str]) -> Path:
    """An options file at ``path`` (folders made): ``header`` as comment lines, then the options as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(json.loads(json.dumps(options)), sort_keys=False)
    path.write_text(text)
    return path
