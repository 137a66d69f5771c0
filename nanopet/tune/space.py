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

Every problem is one ``InputError`` naming the key path, raised before anything is written.
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
from nanopet.options import FREE_FORM, LOSS_TERMS, TOP_LEVEL_KEYS, default_hypers, read_yaml, resolve_options

SECTIONS = ("study", "objective", "budget", "strategy", "parameters", "driver")
STUDY_KEYS = ("name", "storage", "directory", "sampler", "pruner", "keep_checkpoints", "max_retries",
              "heartbeat_interval", "grace_period")
# per type: the settings each accepts besides `type` (all driver-neutral names, mapped by each driver)
SAMPLERS = {
    "tpe": ("seed", "n_startup_trials", "multivariate", "constant_liar", "n_ei_candidates", "rank_at", "rung_trials"),
    "random": ("seed",),
    "gp": ("seed", "n_startup_trials", "deterministic_objective"),
    "cmaes": ("seed", "n_startup_trials", "sigma0", "popsize", "restart_strategy", "use_separable_cma", "with_margin",
              "lr_adapt", "consider_pruned_trials"),
}
PRUNERS = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"),
    "ranking": ("min_tau", "n_startup_trials", "percentile", "n_warmup_steps"),  # nanopet/tune/pruning.py
    "none": (),
}
METRICS = tuple(f"val_{term}_{kind}" for term in ("energy", "forces", "virial", "stress") for kind in ("rmse", "mae"))
METRICS = ("val_rmse_gmean", "val_loss") + METRICS  # val_rmse_gmean: nanopet.train.Accumulator.metrics
OBJECTIVE_KEYS = ("metric", "cost", "cost_measure", "cost_weight")
COSTS = ("none", "penalty", "front")
COST_MEASURES = ("inference_time", "parameters")
BUDGET_KEYS = ("n_trials", "timeout", "epochs", "equal", "data_shares", "predicted_seconds")
# budget.equal: what every trial gets as much of as the base hypers get in budget.epochs epochs (nanopet/tune/trial.py
# trial_epochs): the same epochs, the same optimizer steps, or the same training time
EQUAL_BUDGETS = ("epochs", "steps", "time")
# budget.data_shares (a data-size fidelity): the pruners that decide on the rungs' steps
DATA_SHARE_PRUNERS = ("successive_halving", "hyperband", "median", "none")
STRATEGY_KEYS = ("type", "importance", "split", "enumerate", "learning_rate_scaling", "min_improvement")
# strategy.min_improvement: a stage's best replaces the stage's starting values only if it is better by this share of
# the starting trial's value; less is within the noise of a trial's value (nanopet/tune/study.py chosen_values)
MIN_IMPROVEMENT = 0.03
# strategy.learning_rate_scaling: a stage that tries batch sizes moves the learning rate chosen before it by
# (batch / batch it was chosen at) ** exponent (sqrt: Adam's square-root rule; README "Hyperparameter search")
LEARNING_RATE_SCALINGS = {"none": None, "sqrt": 0.5, "linear": 1.0}
STRATEGIES = ("joint", "staged")  # the first is the default
DRIVERS = ("optuna", "ray")
DRIVER_KEYS = ("type", "address", "cpus_per_trial", "gpus_per_trial")  # all but type: ray only
PARAMETER_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
                  "categorical": ("type", "choices")}
# training keys that are run settings, not hyperparameters
NOT_TUNABLE = {"distributed": "a run setting", "distributed_port": "a run setting", "log_interval": "a run setting",
               "checkpoint_interval": "a run setting", "log_mae": "a run setting",
               "atoms_per_pass": "a speed/memory setting (the same steps either way)",
               "num_epochs": "set budget.epochs (the epochs of every trial) instead"}
DEFAULT_DATASET = {"systems": {"builtin": "emt-alloy", "n": 1000, "seed": 0}}
DEFAULT_SAMPLER = {"type": "tpe", "seed": 0}
DEFAULT_PRUNER = {"type": "median", "n_startup_trials": 5}
DEFAULT_WARM_UP_SHARE = 0.2  # of budget.epochs, at least 2: README "Pruning" (the trials' first epochs rank them by chance)


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


MIN_TRIALS_PER_STAGE = 2
GRACE_PERIOD = 300.0  # s without a lease renewal (other machines) before a RUNNING trial counts as stale


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
    known = set(SECTIONS) | TOP_LEVEL_KEYS
    for key in raw:
        if key not in known:
            raise InputError(f"{key}: unknown key{did_you_mean(key, known)}; known: {', '.join(sorted(known))}")
    options = {k: copy.deepcopy(v) for k, v in raw.items() if k in TOP_LEVEL_KEYS}
    options.setdefault("training_set", copy.deepcopy(DEFAULT_DATASET))
    budget = _budget(_section(raw, "budget"), options)
    options.setdefault("architecture", {})
    options["architecture"] = dict(options["architecture"] or {})
    training = dict(options["architecture"].get("training") or {})
    training["num_epochs"] = budget.epochs
    options["architecture"]["training"] = training
    if resolve_options(options)["architecture"]["training"]["distributed"]:  # also checks every base hyper
        raise InputError("architecture.training.distributed: a search trains one trial per worker process; "
                         "set it to false and use --workers / --gpus")
    parameters = _parameters(raw.get("parameters"), options)
    strategy = _strategy(raw.get("strategy"), parameters)
    objective = _objective(_section(raw, "objective"))
    study = _study(_section(raw, "study"), default_name, objective, budget)
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
    driver = _driver(raw.get("driver"))
    return SearchSpace(options, parameters, strategy, budget, objective, study, driver, Path(base_dir), source, raw)


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{key}: expected a mapping, got {value!r}")
    return value


def _check_keys(mapping: dict, allowed, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise InputError(f"{where}.{key}: unknown key{did_you_mean(key, allowed)}; known: {', '.join(allowed)}")


def _number(value, where: str, integer: bool = False, positive: bool = False, allow_none: bool = False):
    """A number from YAML (also "1e-4", which YAML 1.1 reads as a string)."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise InputError(f"{where}: expected a {'whole ' if integer else ''}number, got {value!r}")
    if integer:
        if not float(value).is_integer():
            raise InputError(f"{where}: expected a whole number, got {value!r}")
        value = int(value)
    if positive and value <= 0:
        raise InputError(f"{where}: must be positive, got {value!r}")
    return value


def _budget(raw: dict, options: dict) -> Budget:
    _check_keys(raw, BUDGET_KEYS, "budget")
    n_trials = _number(raw.get("n_trials"), "budget.n_trials", integer=True, positive=True, allow_none=True)
    timeout = _number(raw.get("timeout"), "budget.timeout", positive=True, allow_none=True)
    given_epochs = ((options.get("architecture") or {}).get("training") or {}).get("num_epochs")
    epochs = raw.get("epochs", given_epochs)
    if epochs is None:
        raise InputError("budget.epochs: missing; give the epochs every trial trains (e.g. budget: {epochs: 100})")
    epochs = _number(epochs, "budget.epochs", integer=True, positive=True)
    equal = raw.get("equal", "epochs")
    if equal not in EQUAL_BUDGETS:
        raise InputError(f"budget.equal: must be {', '.join(EQUAL_BUDGETS)} (what every trial gets as much of as the base "
                         f"hypers in budget.epochs epochs), got {equal!r}{did_you_mean(str(equal), EQUAL_BUDGETS)}")
    shares = _data_shares(raw.get("data_shares"))
    if shares and equal != "epochs":
        raise InputError(f"budget.equal: {equal} sizes each trial's epochs; budget.data_shares trains every share for "
                         "budget.epochs epochs: use one of them")
    predicted = _number(raw.get("predicted_seconds"), "budget.predicted_seconds", positive=True, allow_none=True)
    return Budget(n_trials, timeout, epochs, shares, equal, predicted)


def _data_shares(raw) -> tuple | None:
    """budget.data_shares: increasing shares of the training set in (0, 1], ending at 1."""
    if raw is None:
        return None
    where = "budget.data_shares"
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        raise InputError(f"{where}: expected a list of at least two increasing shares of the training set ending at 1, "
                         f"e.g. [0.125, 0.25, 0.5, 1]; got {raw!r}")
    shares = tuple(float(_number(value, f"{where}[{k}]", positive=True)) for k, value in enumerate(raw))
    if any(b <= a for a, b in zip(shares, shares[1:])) or shares[-1] != 1.0:
        raise InputError(f"{where}: the shares must increase and end at 1 (all the training set), got {list(raw)}")
    steps = share_steps(shares)
    if len(set(steps)) < len(steps) or any(abs(step * shares[0] - share) > 0.05 * share for step, share in zip(steps, shares)):
        raise InputError(f"{where}: each share must be a whole multiple of the first ({shares[0]:g}), as in "
                         f"[0.125, 0.25, 0.5, 1]; got {list(raw)}")
    return shares


def _objective(raw: dict) -> Objective:
    _check_keys(raw, OBJECTIVE_KEYS, "objective")
    metric = raw.get("metric", Objective.metric)
    if metric not in METRICS:
        raise InputError(f"objective.metric: unknown metric {metric!r}{did_you_mean(metric, METRICS)}; known: {', '.join(METRICS)}")
    cost = raw.get("cost", "none")
    cost = "none" if cost in (None, False) else cost
    if cost not in COSTS:
        raise InputError(f"objective.cost: must be one of {', '.join(COSTS)}, got {cost!r}")
    measure = raw.get("cost_measure", Objective.cost_measure)
    if measure not in COST_MEASURES:
        raise InputError(f"objective.cost_measure: must be one of {', '.join(COST_MEASURES)}, got {measure!r}")
    weight = _number(raw.get("cost_weight", Objective.cost_weight), "objective.cost_weight", positive=True)
    return Objective(metric, cost, measure, float(weight))


def _settings(raw, kinds: dict, default: dict, where: str) -> dict:
    if raw is None:
        return dict(default)
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping like {{type: {next(iter(kinds))}}}, got {raw!r}")
    kind = raw.get("type", default["type"])
    if kind not in kinds:
        raise InputError(f"{where}.type: unknown {where.split('.')[-1]} {kind!r}{did_you_mean(kind, kinds)}; known: {', '.join(kinds)}")
    _check_keys(raw, ("type",) + kinds[kind], where)
    settings = {"type": kind}
    for key, value in raw.items():
        if key == "type":
            continue
        if key in ("multivariate", "constant_liar", "deterministic_objective", "use_separable_cma", "with_margin", "lr_adapt",
                   "consider_pruned_trials"):
            if not isinstance(value, bool):
                raise InputError(f"{where}.{key}: expected true or false, got {value!r}")
        elif key == "rank_at":
            if value not in ("final", "rung"):
                raise InputError(f"{where}.{key}: must be final (Optuna's: completed trials ahead of pruned ones) or rung "
                                 f"(every trial at the deepest epoch most reached), got {value!r}")
        elif key == "restart_strategy":
            if value not in (None, "ipop", "bipop"):
                raise InputError(f"{where}.{key}: must be ipop or bipop, got {value!r}")
        elif key == "max_resource" and value == "auto":
            pass
        elif key == "sigma0":
            value = _number(value, f"{where}.{key}", positive=True)
        elif key in ("min_tau", "percentile"):
            value = float(_number(value, f"{where}.{key}"))
            low, high = (-1.0, 1.0) if key == "min_tau" else (0.0, 100.0)
            if not low <= value <= high:
                raise InputError(f"{where}.{key}: must be between {low:g} and {high:g}, got {value:g}")
        elif key == "seed":
            value = _number(value, f"{where}.{key}", integer=True, allow_none=True)
        else:
            value = _number(value, f"{where}.{key}", integer=True)
            least = (0 if key in ("n_startup_trials", "n_warmup_steps", "bootstrap_count", "min_early_stopping_rate") else
                     2 if key == "reduction_factor" else 1)
            if value < least:
                raise InputError(f"{where}.{key}: must be >= {least}, got {value}")
        settings[key] = value
    return settings


def _study(raw: dict, default_name: str, objective: Objective, budget: Budget) -> StudySettings:
    _check_keys(raw, STUDY_KEYS, "study")
    name = str(raw.get("name") or default_name)
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise InputError(f"study.name: {name!r} cannot name a folder; use letters, digits, - and _")
    sampler = _settings(raw.get("sampler"), SAMPLERS, DEFAULT_SAMPLER, "study.sampler")
    sampler.setdefault("seed", 0)
    no_pruner = ({"type": "none"} if objective.cost == "front" else data_share_pruner(budget.rung_steps) if budget.data_shares
                 else default_pruner(budget.epochs))
    pruner = _settings(raw.get("pruner"), PRUNERS, no_pruner, "study.pruner")
    if objective.cost == "front" and pruner["type"] != "none":
        raise InputError("study.pruner: Optuna cannot prune a two-objective study (objective.cost: front); "
                         "use pruner: {type: none}, or objective.cost: penalty to keep pruning")
    if budget.data_shares:
        if pruner["type"] not in DATA_SHARE_PRUNERS:
            raise InputError(f"study.pruner.type: {pruner['type']} decides on epochs; with budget.data_shares use "
                             f"{', '.join(DATA_SHARE_PRUNERS)} (they decide after each share)")
        if pruner["type"] in ("successive_halving", "hyperband"):
            pruner.setdefault("min_resource", 1)  # the first share's step: decide after it
    if pruner.get("max_resource", "auto") not in ("auto",) and pruner["max_resource"] > budget.max_resource:
        limit = "the last share's step" if budget.data_shares else "budget.epochs"
        raise InputError(f"study.pruner.max_resource: {pruner['max_resource']} exceeds {limit} ({budget.max_resource})")
    keep = raw.get("keep_checkpoints", "all")
    keep = None if keep in ("all", None) else _number(keep, "study.keep_checkpoints", integer=True, positive=True)
    storage = raw.get("storage")
    if storage is not None and not isinstance(storage, str):
        raise InputError(f"study.storage: expected a URL or a file path, got {storage!r}")
    return StudySettings(
        name=name, storage=storage, directory=Path(str(raw.get("directory") or "studies")), sampler=sampler, pruner=pruner,
        keep_checkpoints=keep,
        max_retries=_number(raw.get("max_retries", 2), "study.max_retries", integer=True),
        heartbeat_interval=float(_number(raw.get("heartbeat_interval", 30), "study.heartbeat_interval", positive=True)),
        grace_period=float(_number(raw.get("grace_period", GRACE_PERIOD), "study.grace_period", positive=True)),
    )


def _typed(raw, where: str, kinds: tuple, keys: tuple) -> tuple[dict, str]:
    """A section given as a type name or a mapping ``{type, ...}`` (type defaulting to the first of ``kinds``):
    (the mapping, its type), keys and type checked."""
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected {', '.join(kinds)} or a mapping {{{', '.join(keys)}}}, got {raw!r}")
    _check_keys(raw, keys, where)
    kind = raw.get("type", kinds[0])
    if kind not in kinds:
        raise InputError(f"{where}.type: must be {' or '.join(kinds)}, got {kind!r}{did_you_mean(str(kind), kinds)}")
    return raw, kind


def _driver(raw) -> Driver:
    raw, kind = _typed({} if raw is None else raw, "driver", DRIVERS, DRIVER_KEYS)
    if kind != "ray":
        for key in DRIVER_KEYS[1:]:
            if raw.get(key) is not None:
                raise InputError(f"driver.{key}: only with driver type ray (the Optuna driver uses --workers / --gpus)")
    address = raw.get("address")
    if address is not None and not isinstance(address, str):
        raise InputError(f"driver.address: expected auto or HOST:PORT, got {address!r}")
    cpus = float(_number(raw.get("cpus_per_trial", 1), "driver.cpus_per_trial", positive=True))
    gpus = raw.get("gpus_per_trial")
    if gpus is not None:
        gpus = float(_number(gpus, "driver.gpus_per_trial"))
        if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
            raise InputError(f"driver.gpus_per_trial: expected 0, a fraction of one GPU (e.g. 0.5) or a whole number, got {gpus:g}")
    return Driver(kind, address, cpus, gpus)


def tuned_name(parameters: dict, key: str) -> str | None:
    """The name under ``parameters`` of the training setting ``key`` (e.g. batch_size), or None if not tuned."""
    return next((name for name, p in parameters.items() if p.path == ("architecture", "training", key)), None)


def _strategy(raw, parameters: dict) -> Strategy:
    raw, kind = _typed({} if raw is None else raw, "strategy", STRATEGIES, STRATEGY_KEYS)
    importance = raw.get("importance")
    if importance is None:
        stages = tuple((name,) for name in parameters)
    else:
        if not isinstance(importance, list) or not importance:
            raise InputError("strategy.importance: expected a list of parameter names (or lists of names), most important first")
        stages = tuple(tuple(entry) if isinstance(entry, list) else (entry,) for entry in importance)
    seen = set()
    for k, stage in enumerate(stages):
        if not stage:
            raise InputError(f"strategy.importance[{k}]: empty group")
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
    split = raw.get("split", "importance")
    if isinstance(split, list):
        if len(split) != len(stages):
            raise InputError(f"strategy.split: {len(split)} weights for {len(stages)} stages")
        split = tuple(_number(w, f"strategy.split[{k}]", positive=True) for k, w in enumerate(split))
    elif split not in ("importance", "equal"):
        raise InputError(f"strategy.split: must be importance, equal or a list of weights per stage, got {split!r}")
    enumerate_ = raw.get("enumerate", True)
    if not isinstance(enumerate_, bool):
        raise InputError(f"strategy.enumerate: expected true or false, got {enumerate_!r}")
    scaling = raw.get("learning_rate_scaling", "none")
    if scaling not in LEARNING_RATE_SCALINGS:
        raise InputError(f"strategy.learning_rate_scaling: must be {', '.join(LEARNING_RATE_SCALINGS)}, got {scaling!r}")
    if scaling != "none":
        where = {name: k for k, stage in enumerate(stages) for name in stage}
        batch, rate = tuned_name(parameters, "batch_size"), tuned_name(parameters, "learning_rate")
        if kind != "staged" or batch is None or rate is None:
            raise InputError(f"strategy.learning_rate_scaling: {scaling} moves the learning rate with a later stage's batch size; "
                             "it needs type: staged with batch_size and learning_rate both under parameters")
        if where[batch] == where[rate]:
            raise InputError(f"strategy.learning_rate_scaling: batch_size and learning_rate are in the same stage "
                             f"(importance[{where[batch]}]), where they are searched together; put them in separate stages or drop it")
    improvement = float(_number(raw.get("min_improvement", MIN_IMPROVEMENT), "strategy.min_improvement"))
    if not 0 <= improvement < 1:
        raise InputError(f"strategy.min_improvement: must be a share in [0, 1), e.g. 0.03, got {improvement:g}")
    if kind == "joint":
        stages = (tuple(parameters),)
    return Strategy(kind, stages, split, enumerate_, scaling, improvement)


# ---------------------------------------------------------------------------------------------
# Parameters


def parameter_path(name: str) -> tuple:
    """``cutoff`` -> ("architecture", "model", "cutoff"); ``loss.weights.forces`` -> (.., "training", "loss", ..).

    Names are paths relative to ``architecture.model`` or ``architecture.training`` (their keys never
    clash), or full ``architecture.*`` paths. Unknown names get a did-you-mean.
    """
    hypers = default_hypers()
    parts = str(name).split(".")
    if parts[0] == "architecture":
        parts = parts[1:]
        if not parts or parts[0] not in hypers:
            raise InputError(f"parameters.{name}: expected architecture.model.* or architecture.training.*")
        section, parts = parts[0], parts[1:]
    else:
        section = "model" if parts[0] in hypers["model"] else "training"
    if not parts:
        raise InputError(f"parameters.{name}: name a hyperparameter inside architecture.{section}")
    known = hypers[section]
    if parts[0] not in known:
        everything = list(hypers["model"]) + [k for k in hypers["training"] if k not in NOT_TUNABLE]
        raise InputError(f"parameters.{name}: unknown hyperparameter{did_you_mean(parts[0], everything)}; "
                         f"known: {', '.join(everything)} (and dotted paths such as loss.weights.forces)")
    if section == "training" and parts[0] in NOT_TUNABLE:
        raise InputError(f"parameters.{name}: {parts[0]} is not tuned: {NOT_TUNABLE[parts[0]]}")
    node = known[parts[0]]
    for depth, part in enumerate(parts[1:], start=1):
        parent = parts[depth - 1]
        if parent in FREE_FORM:
            allowed = LOSS_TERMS if parent in ("weights", "deltas") else ("energy",)
            if part not in allowed:
                raise InputError(f"parameters.{name}: {parent} has no key {part!r}{did_you_mean(part, allowed)}; known: {', '.join(allowed)}")
            if depth != len(parts) - 1:
                raise InputError(f"parameters.{name}: {parent}.{part} is a single value")
            break
        if not isinstance(node, dict) or part not in node:
            allowed = list(node) if isinstance(node, dict) else []
            raise InputError(f"parameters.{name}: {parent} has no key {part!r}{did_you_mean(part, allowed)}"
                             + (f"; known: {', '.join(allowed)}" if allowed else ""))
        node = node[part]
    return ("architecture", section, *parts)


def _parameters(raw, options: dict) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"parameters: expected a mapping of name -> {{type, low, high}} or {{type, choices}}, got {raw!r}")
    parameters = {}
    for name, spec in raw.items():
        where = f"parameters.{name}"
        path = parameter_path(name)
        if not isinstance(spec, dict):
            raise InputError(f"{where}: expected a mapping like {{type: float, low: .., high: ..}} or {{type: categorical, choices: [..]}}, got {spec!r}")
        kind = spec.get("type")
        if kind is None:
            kind = "categorical" if "choices" in spec else None
        if kind not in PARAMETER_KEYS:
            raise InputError(f"{where}.type: must be float, int or categorical, got {kind!r}{did_you_mean(kind, PARAMETER_KEYS)}")
        _check_keys(spec, PARAMETER_KEYS[kind], where)
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list):
                raise InputError(f"{where}.choices: expected a list of values, got {choices!r}")
            if not choices:
                raise InputError(f"{where}.choices: empty; give at least one value")
            parameter = Parameter(name, path, kind, choices=tuple(choices))
        else:
            for key in ("low", "high"):
                if key not in spec:
                    raise InputError(f"{where}.{key}: missing; a {kind} parameter needs low and high")
            integer = kind == "int"
            low = _number(spec["low"], f"{where}.low", integer=integer)
            high = _number(spec["high"], f"{where}.high", integer=integer)
            if low > high:
                raise InputError(f"{where}: low ({low}) > high ({high})")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise InputError(f"{where}.log: expected true or false, got {log!r}")
            if log and low <= 0:
                raise InputError(f"{where}.log: a log scale needs low > 0, got low {low}")
            step = _number(spec["step"], f"{where}.step", integer=integer, positive=True) if spec.get("step") is not None else None
            if log and step is not None and not (integer and step == 1):
                raise InputError(f"{where}: log and step cannot be combined; drop one")
            if step is not None and not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
                raise InputError(f"{where}.step: high - low ({high - low:g}) must be a multiple of step ({step:g})")
            if integer and step == 1:
                step = None
            parameter = Parameter(name, path, kind, float(low) if not integer else low, float(high) if not integer else high,
                                  log, step)
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
        for k, part in enumerate(config if isinstance(config, list) else [config]):
            where = key if not isinstance(config, list) else f"{key}[{k}]"
            spec = _parse_dataset(part, space.base_dir, where)
            labels = (spec.energy, spec.forces, spec.stress, spec.virial)
            for path in [spec.systems_path] + [label.path for label in labels if label is not None]:
                if not Path(path).is_file():
                    raise InputError(f"{where}: dataset file {path} not found")


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
