"""Search-space files (``search_spaces/*.yaml``): read and validate into a ``SearchSpace``.

Driver-neutral: the Optuna driver (this package) and a Ray Tune driver read the same file. A
search space is an ``options.yaml`` (dataset, splits, seed, device, base hypers under
``architecture``) plus five sections and an optional sixth::

    study:      {name, storage, directory, sampler: {type, seed, ..}, pruner: {type, ..}, keep_checkpoints}
    objective:  {metric: val_rmse_gmean, cost: none | penalty | front, cost_measure, cost_weight}
    budget:     {n_trials, timeout, epochs, equal: epochs | steps | time, data_shares: [0.125, 0.25, 0.5, 1], predicted_seconds}
    strategy:   {type: staged | joint, importance: [cutoff, learning_rate, ...], split: importance, enumerate: true,
                 learning_rate_scaling: none | sqrt | linear}
    parameters: {cutoff: {type: float, low: 3.5, high: 6.0, step: 0.5}, d_pet: {type: categorical, choices: [..]}}
    driver:     optuna | ray | {type: ray, address: auto, cpus_per_trial: 1, gpus_per_trial: 0.5}

Every key, type and value is checked against the schema (nanopet/schema/space.py, which also gives the file's
JSON Schema); this module checks the relations between them. Every problem is one ``InputError`` naming the key
path, raised before anything is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nanopet.data.splits import cutoff_of, largest_cutoff
from nanopet.errors import InputError, did_you_mean
from nanopet.options import TOP_LEVEL_KEYS, read_yaml, resolve_options
from nanopet.schema import SearchSpaceFile, validate
from nanopet.schema import space as schema
from nanopet.schema.space import (COST_MEASURES, COSTS, DEFAULT_DATASET, DRIVERS, EQUAL_BUDGETS,  # noqa: F401
                                  GRACE_PERIOD, LEARNING_RATE_SCALINGS, METRICS, MIN_IMPROVEMENT, NOT_TUNABLE, SECTIONS,
                                  STRATEGIES, TUNABLE, ParameterNames)

# per type: the settings each accepts besides `type` (all driver-neutral names, mapped by each driver)
SAMPLERS = {section.model_fields["type"].default: tuple(section.model_fields)[1:] for section in schema.SAMPLER_SECTIONS}
PRUNERS = {section.model_fields["type"].default: tuple(section.model_fields)[1:] for section in schema.PRUNER_SECTIONS}
# budget.data_shares (a data-size fidelity): the pruners that decide on the rungs' steps
DATA_SHARE_PRUNERS = ("successive_halving", "hyperband", "median", "none")
# retrain trains this many times budget.epochs by default, and every trial trains as the first budget.epochs epochs of
# such a run, annealed over its last fifth (architecture.training.scheduler_epochs, unless the base hypers set it):
# on the molecules its ranking agreed best with the converged runs' (benchmarks/results/budget.txt)
RETRAIN_EPOCH_FACTOR = 10
DEFAULT_SAMPLER = {"type": "tpe", "seed": 0}
DEFAULT_PRUNER = {"type": "median", "n_startup_trials": 5}
DEFAULT_WARM_UP_SHARE = 0.2  # of budget.epochs, at least 2: docs/explanation/search.md (the trials' first epochs rank them by chance)
MIN_TRIALS_PER_STAGE = 2


def default_pruner(epochs: int) -> dict:
    """The pruner of a study that names none: median, deciding first at a fifth of the epochs (epoch 3 at least)."""
    return {**DEFAULT_PRUNER, "n_warmup_steps": max(2, round(DEFAULT_WARM_UP_SHARE * epochs))}


def data_share_pruner(steps: tuple) -> dict:
    """The pruner of a study with budget.data_shares that names none: successive halving over the shares, keeping
    the trials in the top share-ratio fraction (the top half for 1/8, 1/4, 1/2, 1) after each share."""
    return {"type": "successive_halving", "min_resource": 1, "reduction_factor": max(2, steps[1] // steps[0])}


def share_steps(shares) -> list[int]:
    """The step each data share reports at: the share over the first (1, 2, 4, 8 for 1/8, 1/4, 1/2, 1)."""
    return [round(share / shares[0]) for share in shares]


@dataclass(frozen=True)
class Parameter:
    """One tuned hyperparameter: its name as written, where it lives in the options, its distribution."""

    name: str
    path: tuple  # e.g. ("architecture", "training", "loss", "weights", "forces")
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def contains(self, value) -> bool:
        if self.type == "categorical":
            return any(_same(value, choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        if not self.low - 1e-12 <= value <= self.high + 1e-12:
            return False
        return self.step is None or math.isclose((value - self.low) / self.step, round((value - self.low) / self.step), abs_tol=1e-9)

    def nearest(self, value):
        """``value`` moved into the distribution (clipped, snapped to the step), or None if impossible."""
        if self.contains(value):
            return value
        if self.type == "categorical" or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        value = min(max(value, self.low), self.high)
        if self.step is not None:
            value = self.low + round((value - self.low) / self.step) * self.step
            value = min(value, self.high)
        return int(round(value)) if self.type == "int" else float(value)

    @property
    def size(self) -> int | None:
        """How many values the parameter can take; None for a continuous range."""
        if self.type == "categorical":
            return len(self.choices)
        step = self.step if self.step is not None else (1 if self.type == "int" else None)
        return None if step is None else int(math.floor((self.high - self.low) / step + 1e-9)) + 1

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.name} in {list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.name} in [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class Objective:
    """What a trial minimises: a validation metric, optionally traded against inference cost.

    ``cost: penalty`` minimises ``metric * cost ** cost_weight`` (one objective, prunable);
    ``cost: front`` minimises (metric, cost) as two objectives (a Pareto front, never pruned).
    """

    metric: str = "val_rmse_gmean"
    cost: str = "none"
    cost_measure: str = "inference_time"  # seconds per atom (energy + forces) | parameters
    cost_weight: float = 0.1

    @property
    def n_values(self) -> int:
        return 2 if self.cost == "front" else 1

    @property
    def needs_cost(self) -> bool:
        return self.cost != "none"

    def value(self, metric: float, cost: float | None) -> float:
        if self.cost == "penalty":
            return metric * cost**self.cost_weight
        return metric

    def values(self, metric: float, cost: float | None) -> list[float]:
        return [metric, cost] if self.cost == "front" else [self.value(metric, cost)]


@dataclass(frozen=True)
class Budget:
    n_trials: int | None
    timeout: float | None  # seconds, for one invocation
    epochs: int  # epochs of every trial (of every rung, with data_shares)
    # a data-size fidelity: each trial trains all its epochs on these shares of the training set in turn (nested
    # subsets, from scratch each time), and the pruner decides after each; None: every trial trains on all of it
    data_shares: tuple | None = None
    equal: str = "epochs"  # epochs | steps | time: EQUAL_BUDGETS
    predicted_seconds: float | None = None  # what `nanopet-tune init` predicted the search takes; said beside the time taken

    @property
    def rung_steps(self) -> tuple:
        """The steps a trial reports under ``data_shares``: each share over the smallest (1, 2, 4, 8 for 1/8 .. 1),
        so that a pruner's min_resource 1 and reduction factor 2 decide after each share; () without data_shares."""
        return tuple(share_steps(self.data_shares)) if self.data_shares else ()

    @property
    def max_resource(self) -> int:
        """The last step a trial reports: its epochs, or with data_shares its last rung's step."""
        return self.rung_steps[-1] if self.data_shares else self.epochs


@dataclass(frozen=True)
class Strategy:
    type: str  # staged | joint
    stages: tuple  # tuple of tuples of parameter names, most important first (joint: one stage)
    split: object = "importance"  # importance | equal | list of weights
    enumerate: bool = True  # a stage with no more (discrete) configurations than its budget tries each once
    learning_rate_scaling: str = "none"  # none | sqrt | linear: LEARNING_RATE_SCALINGS
    min_improvement: float = MIN_IMPROVEMENT  # a stage's best must beat its starting trial by this share

    def stage_trials(self, n_trials: int, grids: list | None = None) -> list[int]:
        """Trials per stage: ``n_trials`` split by weight (largest remainder), at least 2 per stage. A stage
        with fewer configurations than its share (``grids``: each stage's count, None where a range is
        continuous) gets that many, and what it does not need goes to the other stages by weight."""
        count = len(self.stages)
        if count == 1:
            return [n_trials]
        if self.split == "importance":
            weights = [count - k for k in range(count)]
        elif self.split == "equal":
            weights = [1.0] * count
        else:
            weights = list(self.split)
        grids = grids or [None] * count
        capped: dict[int, int] = {}
        while True:
            free = [k for k in range(count) if k not in capped]
            total, left = sum(weights[k] for k in free), n_trials - sum(capped.values())
            share = {k: left * weights[k] / total if total else left / len(free) for k in free}
            trials = {k: int(share[k]) for k in free}
            for k in sorted(free, key=lambda k: share[k] - trials[k], reverse=True)[: left - sum(trials.values())]:
                trials[k] += 1
            over = {k: grids[k] for k in free if grids[k] is not None and trials[k] >= grids[k]}
            capped.update(over)
            if not over or len(capped) == count:
                break
        trials = [capped.get(k, trials.get(k, 0)) for k in range(count)]
        for k in range(count):  # every stage gets a few trials, taken from the largest
            while trials[k] < (MIN_TRIALS_PER_STAGE if grids[k] is None else min(MIN_TRIALS_PER_STAGE, grids[k])):
                trials[max(range(count), key=lambda j: trials[j])] -= 1
                trials[k] += 1
        return trials


@dataclass(frozen=True)
class Driver:
    """Which program runs the trials. Not part of a study's fingerprint: a study may change driver."""

    type: str = "optuna"  # optuna | ray
    address: str | None = None  # ray: None = a local Ray runtime; auto | HOST:PORT = join that cluster
    cpus_per_trial: float = 1.0  # ray: CPUs reserved per trial
    gpus_per_trial: float | None = None  # ray: None = 1 when the cluster has GPUs, else 0; fractions share a GPU


@dataclass(frozen=True)
class StudySettings:
    name: str
    storage: str | None  # None: the journal file studies/<name>/journal.log
    directory: Path  # where studies/<name>/ lives
    sampler: dict  # {type, seed, ...settings}
    pruner: dict  # {type, ...settings}
    keep_checkpoints: int | None  # None: every completed trial keeps model.ckpt; k: only the best k
    max_retries: int = 2  # re-runs of a trial whose worker died
    heartbeat_interval: float = 30.0  # seconds between a running trial's lease renewals
    grace_period: float = GRACE_PERIOD  # a lease older than this marks the trial stale (other machines)

    @property
    def path(self) -> Path:
        return self.directory / self.name


@dataclass
class SearchSpace:
    """A validated search-space file. ``options_for(values)`` gives one trial's full options."""

    options: dict  # the base options (options.yaml keys), unresolved, num_epochs set from the budget
    parameters: dict  # name -> Parameter, in file order
    strategy: Strategy
    budget: Budget
    objective: Objective
    study: StudySettings
    driver: Driver = field(default_factory=Driver)
    base_dir: Path = Path(".")  # relative dataset paths resolve against it
    source: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def options_for(self, values: dict) -> dict:
        """Base options with ``values`` (parameter name -> value) set, resolved and validated."""
        options = copy.deepcopy(self.options)
        for name, value in values.items():
            _set(options, self.parameters[name].path, copy.deepcopy(value))
        return resolve_options(options)

    def trial_values(self, fixed: dict, params: dict) -> dict:
        """One trial's values: earlier stages' ``fixed`` values with this stage's ``params`` over them. With
        ``strategy.learning_rate_scaling``, a stage that tries batch sizes (and not learning rates) trains each at
        the learning rate chosen before it times (batch_size / the batch size it was chosen at) ** exponent."""
        values = {**fixed, **params}
        exponent = LEARNING_RATE_SCALINGS[self.strategy.learning_rate_scaling]
        batch, rate = tuned_name(self.parameters, "batch_size"), tuned_name(self.parameters, "learning_rate")
        if exponent is None or batch not in params or rate in params:
            return values
        reference = fixed.get(batch, self.base_value(batch))
        learning_rate = fixed.get(rate, self.base_value(rate))
        values[rate] = float(learning_rate) * (float(params[batch]) / float(reference)) ** exponent
        return values

    @property
    def resolved(self) -> dict:
        return resolve_options(self.options)

    @property
    def max_cutoff(self) -> float:
        """The largest cutoff any trial can use: data are neighbour-listed once at it."""
        return largest_cutoff(cutoff_of(self.resolved), self.parameters.values())

    def defaults(self) -> dict:
        """Each parameter's base value (from ``architecture`` or default-hypers.yaml), moved into its range;
        parameters whose base value cannot be represented (a categorical without it) are left out."""
        resolved = self.resolved
        out = {}
        for name, parameter in self.parameters.items():
            value = parameter.nearest(_get(resolved, parameter.path, _implicit_default(parameter.path)))
            if value is not None:
                out[name] = value
        return out

    def base_value(self, name: str):
        """The value a trial that does not tune ``name`` trains with (base hypers, else default-hypers.yaml)."""
        parameter = self.parameters[name]
        return _get(self.resolved, parameter.path, _implicit_default(parameter.path))

    def fingerprint(self) -> str:
        """Hash of everything that changes a trial's result; a study refuses to resume with another."""
        options = {k: v for k, v in self.resolved.items() if k != "device"}  # a study may move between machines
        content = {"options": options, "parameters": [vars(p) for p in self.parameters.values()],
                   "objective": vars(self.objective), "stages": self.strategy.stages, "strategy": self.strategy.type}
        if self.strategy.learning_rate_scaling != "none":  # absent otherwise: studies from before it still resume
            content["learning_rate_scaling"] = self.strategy.learning_rate_scaling
        if self.budget.data_shares:  # likewise
            content["data_shares"] = list(self.budget.data_shares)
        if self.budget.equal != "epochs":  # likewise
            content["equal"] = self.budget.equal
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def replace(self, n_trials: int | None = None, timeout: float | None = None, storage: str | None = None,
                study_name: str | None = None, directory: str | Path | None = None,
                driver: dict | None = None) -> "SearchSpace":
        """The same file with command-line overrides (re-validated). ``driver``: keys of the driver section
        to override (None values are left alone)."""
        raw = copy.deepcopy(self.raw)
        given = {k: v for k, v in (driver or {}).items() if v is not None}
        if given:
            current = raw.get("driver")
            current = {"type": current} if isinstance(current, str) else dict(current or {})
            raw["driver"] = {"type": "optuna"} if given.get("type") == "optuna" else {**current, **given}
        budget, study = raw.setdefault("budget", {}) or {}, raw.setdefault("study", {}) or {}
        raw["budget"], raw["study"] = budget, study
        for section, key, value in ((budget, "n_trials", n_trials), (budget, "timeout", timeout), (study, "storage", storage),
                                    (study, "name", study_name), (study, "directory", None if directory is None else str(directory))):
            if value is not None:
                section[key] = value
        return parse(raw, self.base_dir, self.source, default_name=self.study.name)


# ---------------------------------------------------------------------------------------------
# Reading


def load_search_space(source: str | Path | dict, base_dir: str | Path | None = None, check_data: bool = True) -> SearchSpace:
    """Read a search-space YAML file (or an already-parsed mapping) and validate every key.

    Relative dataset paths resolve against the file's directory (``base_dir`` for a mapping).
    ``check_data`` also checks that dataset files exist (and generates a built-in dataset once).
    """
    if isinstance(source, dict):
        raw, path = copy.deepcopy(source), None
        base_dir = Path(base_dir or ".")
        name = "search"
    else:
        path = Path(source)
        raw = read_yaml(path)
        base_dir = Path(base_dir) if base_dir is not None else path.parent
        name = path.stem
    space = parse(raw, base_dir, path, default_name=name)
    if check_data:
        check_datasets(space)
    return space


def parse(raw: dict, base_dir: Path, source: Path | None = None, default_name: str = "search") -> SearchSpace:
    raw = copy.deepcopy(raw)
    file = validate(SearchSpaceFile, raw)  # every key, type and value; below, the relations between them
    options = {k: copy.deepcopy(v) for k, v in raw.items() if k in TOP_LEVEL_KEYS}
    options.setdefault("training_set", copy.deepcopy(DEFAULT_DATASET))
    budget = _budget(file.budget or schema.Budget(), options)
    options["architecture"] = dict(options.get("architecture") or {})
    training = {"scheduler_epochs": RETRAIN_EPOCH_FACTOR * budget.epochs, **(options["architecture"].get("training") or {})}
    options["architecture"]["training"] = {**training, "num_epochs": budget.epochs}
    if resolve_options(options)["architecture"]["training"]["distributed"]:
        raise InputError("architecture.training.distributed: a search trains one trial per worker process; "
                         "set it to false and use --workers / --gpus")
    parameters = _parameters(raw.get("parameters") or {}, file.parameters, options)
    strategy = _strategy(file.strategy or schema.Strategy(), parameters)
    objective = Objective(**(file.objective or schema.Objective()).model_dump())
    study = _study(file.study or schema.Study(), default_name, objective, budget)
    if objective.metric == "val_loss" and any(p.path[2:3] == ("loss",) for p in parameters.values()):
        raise InputError("objective.metric: val_loss is not comparable between trials that tune loss.*; "
                         "use a physical metric such as val_forces_rmse or val_energy_rmse")
    if strategy.type == "staged":
        if objective.cost == "front":
            raise InputError("strategy: staged needs one objective to pick each stage's best; use strategy: joint with objective.cost: front")
        if budget.n_trials is None:
            raise InputError("budget.n_trials: staged search splits n_trials across stages; give n_trials")
        needed = MIN_TRIALS_PER_STAGE * len(strategy.stages)
        if budget.n_trials < needed:
            raise InputError(f"budget.n_trials: {budget.n_trials} is too few for {len(strategy.stages)} stages; give at least {needed}")
    driver = _driver(file.driver or schema.Driver())
    return SearchSpace(options, parameters, strategy, budget, objective, study, driver, Path(base_dir), source, raw)


def _budget(section: schema.Budget, options: dict) -> Budget:
    given = ((options.get("architecture") or {}).get("training") or {}).get("num_epochs")
    epochs = section.epochs if section.epochs is not None else given
    if epochs is None:
        raise InputError("budget.epochs: missing; give the epochs every trial trains (e.g. budget: {epochs: 100})")
    shares = _data_shares(section.data_shares)
    if shares and section.equal != "epochs":
        raise InputError(f"budget.equal: {section.equal} sizes each trial's epochs; budget.data_shares trains every share for "
                         "budget.epochs epochs: use one of them")
    return Budget(section.n_trials, section.timeout, epochs, shares, section.equal, section.predicted_seconds)


def _data_shares(given: list | None) -> tuple | None:
    """budget.data_shares: increasing shares of the training set in (0, 1], ending at 1."""
    if given is None:
        return None
    where, shares = "budget.data_shares", tuple(float(share) for share in given)
    if any(b <= a for a, b in zip(shares, shares[1:])) or shares[-1] != 1.0:
        raise InputError(f"{where}: the shares must increase and end at 1 (all the training set), got {list(given)}")
    steps = share_steps(shares)
    if len(set(steps)) < len(steps) or any(abs(step * shares[0] - share) > 0.05 * share for step, share in zip(steps, shares)):
        raise InputError(f"{where}: each share must be a whole multiple of the first ({shares[0]:g}), as in "
                         f"[0.125, 0.25, 0.5, 1]; got {list(given)}")
    return shares


def _settings(section, default: dict) -> dict:
    """A sampler's or pruner's settings as given (the rest take Optuna's defaults), or ``default``."""
    if section is None:
        return dict(default)
    return {"type": section.type, **section.model_dump(exclude_unset=True, exclude={"type"})}


def _study(section: schema.Study, default_name: str, objective: Objective, budget: Budget) -> StudySettings:
    name = str(section.name or default_name)
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise InputError(f"study.name: {name!r} cannot name a folder; use letters, digits, - and _")
    sampler = _settings(section.sampler, DEFAULT_SAMPLER)
    sampler.setdefault("seed", 0)
    no_pruner = ({"type": "none"} if objective.cost == "front" else data_share_pruner(budget.rung_steps) if budget.data_shares
                 else default_pruner(budget.epochs))
    pruner = _settings(section.pruner, no_pruner)
    if objective.cost == "front" and pruner["type"] != "none":
        raise InputError("study.pruner: Optuna cannot prune a two-objective study (objective.cost: front); "
                         "use pruner: {type: none}, or objective.cost: penalty to keep pruning")
    if budget.data_shares:
        if pruner["type"] not in DATA_SHARE_PRUNERS:
            raise InputError(f"study.pruner.type: {pruner['type']} decides on epochs; with budget.data_shares use "
                             f"{', '.join(DATA_SHARE_PRUNERS)} (they decide after each share)")
        if pruner["type"] in ("successive_halving", "hyperband"):
            pruner.setdefault("min_resource", 1)  # the first share's step: decide after it
    if pruner.get("max_resource", "auto") != "auto" and pruner["max_resource"] > budget.max_resource:
        limit = "the last share's step" if budget.data_shares else "budget.epochs"
        raise InputError(f"study.pruner.max_resource: {pruner['max_resource']} exceeds {limit} ({budget.max_resource})")
    keep = None if section.keep_checkpoints in ("all", None) else section.keep_checkpoints
    return StudySettings(name=name, storage=section.storage, directory=Path(section.directory), sampler=sampler, pruner=pruner,
                         keep_checkpoints=keep, max_retries=section.max_retries,
                         heartbeat_interval=float(section.heartbeat_interval), grace_period=float(section.grace_period))


def _driver(section: schema.Driver) -> Driver:
    if section.type != "ray":
        for key in ("address", "cpus_per_trial", "gpus_per_trial"):
            if key in section.model_fields_set and getattr(section, key) is not None:
                raise InputError(f"driver.{key}: only with driver type ray (the Optuna driver uses --workers / --gpus)")
    gpus = section.gpus_per_trial
    if gpus is not None and gpus > 1 and not float(gpus).is_integer():
        raise InputError(f"driver.gpus_per_trial: expected 0, a fraction of one GPU (e.g. 0.5) or a whole number, got {gpus:g}")
    return Driver(section.type, section.address, float(section.cpus_per_trial), None if gpus is None else float(gpus))


def tuned_name(parameters: dict, key: str) -> str | None:
    """The name under ``parameters`` of the training setting ``key`` (e.g. batch_size), or None if not tuned."""
    return next((name for name, p in parameters.items() if p.path == ("architecture", "training", key)), None)


def _strategy(section: schema.Strategy, parameters: dict) -> Strategy:
    kind = section.type
    if section.importance is None:
        stages = tuple((name,) for name in parameters)
    else:
        stages = tuple(tuple(entry) if isinstance(entry, list) else (entry,) for entry in section.importance)
    seen = set()
    for k, stage in enumerate(stages):
        for name in stage:
            if name not in parameters:
                raise InputError(f"strategy.importance[{k}]: {name!r} is not under parameters{did_you_mean(name, parameters)}; "
                                 f"parameters: {', '.join(parameters)}")
            if name in seen:
                raise InputError(f"strategy.importance[{k}]: {name!r} is listed twice")
            seen.add(name)
    missing = [name for name in parameters if name not in seen]
    if missing and kind == "staged":
        raise InputError(f"strategy.importance: staged search must place every parameter in a stage; missing {missing}")
    if not parameters:
        raise InputError("parameters: nothing to tune; add at least one, e.g. learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    split = section.split
    if isinstance(split, list):
        if len(split) != len(stages):
            raise InputError(f"strategy.split: {len(split)} weights for {len(stages)} stages")
        split = tuple(split)
    scaling = section.learning_rate_scaling
    if scaling != "none":
        where = {name: k for k, stage in enumerate(stages) for name in stage}
        batch, rate = tuned_name(parameters, "batch_size"), tuned_name(parameters, "learning_rate")
        if kind != "staged" or batch is None or rate is None:
            raise InputError(f"strategy.learning_rate_scaling: {scaling} moves the learning rate with a later stage's batch size; "
                             "it needs type: staged with batch_size and learning_rate both under parameters")
        if where[batch] == where[rate]:
            raise InputError(f"strategy.learning_rate_scaling: batch_size and learning_rate are in the same stage "
                             f"(importance[{where[batch]}]), where they are searched together; put them in separate stages or drop it")
    if kind == "joint":
        stages = (tuple(parameters),)
    return Strategy(kind, stages, split, section.enumerate, scaling, float(section.min_improvement))


# ---------------------------------------------------------------------------------------------
# Parameters


def parameter_path(name: str) -> tuple:
    """``cutoff`` -> ("architecture", "model", "cutoff"); ``loss.weights.forces`` -> (.., "training", "loss", ..).

    Names are paths relative to ``architecture.model`` or ``architecture.training`` (their keys never
    clash), or full ``architecture.*`` paths (nanopet/schema/space.py ``TUNABLE``). Unknown names get a did-you-mean.
    """
    if name not in TUNABLE:
        raise InputError(f"parameters.{name}: {ParameterNames.key_problem(name)}")
    return TUNABLE[name]


def _parameters(raw: dict, section, options: dict) -> dict:
    """name -> Parameter, in file order; ``section``: the validated ``parameters`` section."""
    parameters = {}
    for name in raw:
        path, spec = parameter_path(name), getattr(section, name.replace(".", "__"))
        if spec.type == "categorical":
            parameter = Parameter(name, path, spec.type, choices=tuple(spec.choices))
        else:
            integer = spec.type == "int"
            low, high = (spec.low, spec.high) if integer else (float(spec.low), float(spec.high))
            parameter = Parameter(name, path, spec.type, low, high, spec.log, None if integer and spec.step == 1 else spec.step)
        _check_values(parameter, options)
        parameters[name] = parameter
    return parameters


def _check_values(parameter: Parameter, options: dict) -> None:
    """Every choice (or both ends of a range) must be a valid value of the hyperparameter."""
    values = parameter.choices if parameter.type == "categorical" else (parameter.low, parameter.high)
    for value in values:
        trial = copy.deepcopy(options)
        _set(trial, parameter.path, copy.deepcopy(value))
        try:
            resolve_options(trial)
        except InputError as error:
            raise InputError(f"parameters.{parameter.name}: value {value!r} is invalid: {error}") from None


# ---------------------------------------------------------------------------------------------
# Datasets


def check_datasets(space: SearchSpace) -> None:
    """Dataset files exist (a built-in dataset is generated and cached here, once, not per worker)."""
    from nanopet.data.read import _parse_dataset  # the dataset-config parser of options.yaml

    for key in ("training_set", "validation_set", "test_set"):
        config = space.options.get(key)
        if config is None or (isinstance(config, (int, float)) and not isinstance(config, bool)):
            continue
        for k, part in enumerate(config if isinstance(config, list) else [config]):  # each file is resolved, or an error
            _parse_dataset(part, space.base_dir, key if not isinstance(config, list) else f"{key}[{k}]")


# ---------------------------------------------------------------------------------------------
# Helpers


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                              and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _set(options: dict, path: tuple, value) -> None:
    node = options
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
        node[key] = child = dict(child)
        node = child
    node[path[-1]] = value


def _get(options: dict, path: tuple, default=None):
    node = options
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _implicit_default(path: tuple):
    """What an absent free-form entry means (default-hypers.yaml): weight 1.0, head mlp, no delta."""
    if len(path) >= 2 and path[-2] == "weights":
        return 1.0
    if len(path) >= 2 and path[-2] == "heads":
        return "mlp"
    return None
