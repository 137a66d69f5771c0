"""The search-space file's schema: an options file (``options.py``) plus the sections ``study``, ``objective``,
``budget``, ``strategy``, ``parameters`` and ``driver`` (read into a SearchSpace by nanopet/tune/space.py,
which checks the relations between them).

Settings a sampler or pruner leaves out take Optuna's defaults (nanopet/tune/sampling.py and pruning.py map them).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import BeforeValidator, Field, StrictBool, create_model, model_validator

from nanopet.schema.base import Expect, Number, Section, problem, shorthand, tagged, unset
from nanopet.schema.hypers import DOCS, FREE_FORM, HYPERS, LOSS_TERMS
from nanopet.schema.options import Datasets, Options

SECTIONS = ("study", "objective", "budget", "strategy", "parameters", "driver")
METRICS = ("val_rmse_gmean", "val_loss") + tuple(f"val_{term}_{kind}" for term in ("energy", "forces", "virial", "stress")
                                                  for kind in ("rmse", "mae"))  # val_rmse_gmean: nanopet.loss.Accumulator.metrics
COSTS = ("none", "penalty", "front")
COST_MEASURES = ("inference_time", "parameters")
# budget.equal: what every trial gets as much of as the base hypers get in budget.epochs epochs (nanopet/tune/trial.py
# trial_epochs): the same epochs, the same optimizer steps, or the same training time
EQUAL_BUDGETS = ("epochs", "steps", "time")
STRATEGIES = ("joint", "staged")  # the first is the default
# strategy.min_improvement: a stage's best replaces the stage's starting values only if it is better by this share of
# the starting trial's value; less is within the noise of a trial's value (nanopet/tune/studies.py chosen_values)
MIN_IMPROVEMENT = 0.03
# strategy.learning_rate_scaling: a stage that tries batch sizes moves the learning rate chosen before it by
# (batch / batch it was chosen at) ** exponent (sqrt: Adam's square-root rule; docs/explanation/search.md)
LEARNING_RATE_SCALINGS = {"none": None, "sqrt": 0.5, "linear": 1.0}
DRIVERS = ("optuna", "ray")
GRACE_PERIOD = 300.0  # s without a lease renewal (other machines) before a RUNNING trial counts as stale
DEFAULT_DATASET = {"systems": {"builtin": "emt-alloy", "n": 1000, "seed": 0}}
# training keys that are run settings, not hyperparameters
NOT_TUNABLE = {"distributed": "a run setting", "distributed_port": "a run setting", "log_interval": "a run setting",
               "checkpoint_interval": "a run setting", "log_mae": "a run setting",
               "atoms_per_pass": "a speed/memory setting (the same steps either way)",
               "num_epochs": "set budget.epochs (the epochs of every trial) instead",
               "scheduler_epochs": "the search sets it to retrain's epochs (a trial is the start of that run); "
                                   "a value in the base hypers replaces that"}

Count = Annotated[int, Number(ge=0)]
AtLeastOne = Annotated[int, Number(ge=1)]
Positive = Annotated[float, Number(gt=0)]
STARTUP = "trials sampled at random before the model"


# ---------------------------------------------------------------------------------------------
# study


class Sampler(Section):
    type: str
    seed: Optional[Annotated[int, Number()]] = Field(
        0, description="the sampler's seed (worker k of a study adds 1000003 k and the trials already in it); null: random")


class TPE(Sampler):
    """Optuna's TPE sampler (multivariate, with a constant liar, unless set otherwise)."""

    type: Literal["tpe"] = "tpe"
    n_startup_trials: Count = unset(STARTUP)
    multivariate: StrictBool = unset("a joint model of all parameters (default true)")
    constant_liar: StrictBool = unset("running trials count as bad, so parallel workers spread (default true)")
    n_ei_candidates: AtLeastOne = unset("candidates scored per proposal")
    rank_at: Annotated[Literal["final", "rung"], Expect(
        "final (Optuna's: completed trials ahead of pruned ones) or rung (every trial at the deepest epoch most reached)")] = unset(
        "final: completed trials ahead of pruned ones (Optuna's); rung: every trial at the deepest epoch that rung_trials "
        "finished trials reached")
    rung_trials: AtLeastOne = unset("rank_at: rung: finished trials the rung's epoch needs (default 8)")


class RandomSampler(Sampler):
    """Random sampling."""

    type: Literal["random"] = "random"


class GP(Sampler):
    """Optuna's Gaussian-process sampler."""

    type: Literal["gp"] = "gp"
    n_startup_trials: Count = unset(STARTUP)
    deterministic_objective: StrictBool = unset("the objective has no noise")


class CMAES(Sampler):
    """Optuna's CMA-ES sampler (categorical parameters are sampled at random)."""

    type: Literal["cmaes"] = "cmaes"
    n_startup_trials: Count = unset(STARTUP)
    sigma0: Positive = unset("the initial step size")
    popsize: AtLeastOne = unset("the population size")
    restart_strategy: Optional[Literal["ipop", "bipop"]] = unset("ipop | bipop")
    use_separable_cma: StrictBool = unset("a diagonal covariance")
    with_margin: StrictBool = unset("CMA-ES with margin (discrete parameters)")
    lr_adapt: StrictBool = unset("learning-rate adaptation")
    consider_pruned_trials: StrictBool = unset("pruned trials count")


class Median(Section):
    """Prune a trial worse than the median of the others at the same epoch."""

    type: Literal["median"] = "median"
    n_startup_trials: Count = unset("trials finished before the first pruning")
    n_warmup_steps: Count = unset("epochs of every trial before it can be pruned")
    interval_steps: AtLeastOne = unset("epochs between decisions")
    n_min_trials: AtLeastOne = unset("trials reported at an epoch before deciding there")


class Halving(Section):
    type: str
    min_resource: AtLeastOne = unset("the first rung's epoch")
    reduction_factor: Annotated[int, Number(ge=2)] = unset("1 / the share promoted at each rung")
    bootstrap_count: Count = unset("trials a rung needs before promoting")


class Hyperband(Halving):
    """Optuna's Hyperband pruner."""

    type: Literal["hyperband"] = "hyperband"
    max_resource: Annotated[Union[Literal["auto"], AtLeastOne], Expect("auto or a positive integer")] = unset(
        "the last epoch (default: budget.epochs)")


class SuccessiveHalving(Halving):
    """Optuna's successive halving pruner."""

    type: Literal["successive_halving"] = "successive_halving"
    min_early_stopping_rate: Count = unset("rungs skipped")


class Ranking(Section):
    """Prune only once the finished trials' values at an epoch rank their final values (nanopet/tune/pruning.py)."""

    type: Literal["ranking"] = "ranking"
    min_tau: Annotated[float, Number(ge=-1, le=1)] = unset("Kendall's tau the ranking needs (default 0.6)")
    n_startup_trials: Count = unset("finished trials needed (default 5)")
    percentile: Annotated[float, Number(ge=0, le=100)] = unset("prune a trial worse than this percentile (default 50)")
    n_warmup_steps: Count = unset("epochs before the first decision (default 0)")


class NoPruner(Section):
    """No pruning."""

    type: Literal["none"] = "none"


SAMPLER_SECTIONS = (TPE, RandomSampler, GP, CMAES)
PRUNER_SECTIONS = (Median, Hyperband, SuccessiveHalving, Ranking, NoPruner)
Name = Annotated[str, BeforeValidator(lambda value: str(value) if isinstance(value, (int, float)) else value)]


class Study(Section):
    """The study: its name, storage, sampler and pruner."""

    name: Optional[Name] = Field(None, description="default: the file's name; everything goes to <directory>/<name>/")
    storage: Optional[str] = Field(None, description="null: <directory>/<name>/journal.log | sqlite:///file.db | "
                                                     "postgresql://user:pw@host/db")
    directory: Name = Field("studies", description="where studies live")
    sampler: tagged(*SAMPLER_SECTIONS, default="tpe") = Field(None, description="tpe (the default) | random | gp | cmaes")
    pruner: tagged(*PRUNER_SECTIONS, default="median") = Field(
        None, description="median | hyperband | successive_halving | ranking | none; default: median from a fifth of the "
                          "epochs (none for cost: front; successive halving over budget.data_shares)")
    keep_checkpoints: Annotated[Union[Literal["all"], AtLeastOne, None], Expect("all or a positive integer")] = Field(
        "all", description="all, or k: only the best k completed trials (of each stage) keep model.ckpt")
    max_retries: Count = Field(2, description="re-runs of a trial whose worker died")
    heartbeat_interval: Positive = Field(30.0, description="s between lease renewals of a running trial")
    grace_period: Positive = Field(GRACE_PERIOD, description="s without renewal after which a trial of another machine is stale")


# ---------------------------------------------------------------------------------------------
# objective, budget, strategy, driver


class Objective(Section):
    """What a trial's value is: a validation metric at its best-validation-loss epoch, optionally traded against cost."""

    metric: Literal[METRICS] = Field("val_rmse_gmean", description="val_rmse_gmean: the geometric mean over the targets "
                                     "of RMSE / the validation set's spread; or val_loss | val_{energy,forces,virial,stress}_{rmse,mae}")
    cost: Annotated[Literal[COSTS], BeforeValidator(lambda value: "none" if value in (None, False) else value)] = Field(
        "none", description="none | penalty (metric * cost ** cost_weight) | front (metric and cost, a Pareto front)")
    cost_measure: Literal[COST_MEASURES] = Field("inference_time", description="inference_time (s per atom, energy + "
                                                 "forces) | parameters")
    cost_weight: Positive = Field(0.1, description="penalty: value = metric * cost ** cost_weight")


class Budget(Section):
    """How much the search trains."""

    n_trials: Optional[Annotated[int, Number(gt=0)]] = Field(
        None, description="trials of the study (staged: split across stages); null: until timeout")
    timeout: Optional[Positive] = Field(None, description="seconds for one run of the command; then no new trial starts")
    epochs: Optional[Annotated[int, Number(gt=0)]] = Field(
        None, description="the base hypers' epochs (required unless architecture.training.num_epochs is given)")
    equal: Literal[EQUAL_BUDGETS] = Field("epochs", description="epochs | steps | time: what every trial gets as much "
                                                                "of as the base hypers in `epochs`")
    data_shares: Optional[Annotated[list[Positive], Field(min_length=2), Expect(
        "a list of at least two increasing shares of the training set ending at 1, e.g. [0.125, 0.25, 0.5, 1]")]] = Field(
        None, description="a data-size fidelity: each trial trains on these shares of the training set in turn")
    predicted_seconds: Optional[Positive] = Field(
        None, description="what `nanopet-tune init` predicted the search takes; said beside the time taken")


Stage = Annotated[Union[str, Annotated[list[str], Field(min_length=1)]], Expect("a parameter name or a list of names")]


class Strategy(Section):
    """How the parameters are searched: together, or in stages by importance."""

    type: Literal[STRATEGIES] = Field("joint", description="joint (one study) | staged (a study per stage)")
    importance: Optional[Annotated[list[Stage], Field(min_length=1), Expect(
        "a list of parameter names (or lists of names), most important first")]] = Field(
        None, description="stages, most important first; [a, b] = one stage (default: the parameters' order)")
    split: Annotated[Union[Literal["importance", "equal"], list[Positive]],
                     Expect("importance, equal or a list of weights per stage")] = Field(
        "importance", description="importance | equal | [w1, w2, ...]: how n_trials is split across stages")
    enumerate: StrictBool = Field(True, description="a stage with no more configurations than its trials tries each once")
    learning_rate_scaling: Literal[tuple(LEARNING_RATE_SCALINGS)] = Field(
        "none", description="none | sqrt | linear: a batch_size stage moves the learning rate chosen before it")
    min_improvement: Annotated[float, Number(ge=0, lt=1)] = Field(
        MIN_IMPROVEMENT, description="a stage's best replaces its starting values only if better by this share")


class Driver(Section):
    """Which program runs the trials."""

    type: Literal[DRIVERS] = Field("optuna", description="optuna (the default) | ray")
    address: Optional[str] = Field(None, description="ray: auto | HOST:PORT of a cluster; null: a local Ray runtime")
    cpus_per_trial: Positive = Field(1.0, description="ray: CPUs reserved per trial")
    gpus_per_trial: Optional[Annotated[float, Number(ge=0)]] = Field(
        None, description="ray: GPUs per trial (a fraction shares one); null: 1 when the cluster has GPUs, else 0")


# ---------------------------------------------------------------------------------------------
# parameters


LOW, HIGH, STEP = "the lowest value", "the highest value", "a grid low, low + step, ..., high (not with log)"


class Range(Section):
    """A number in [low, high], on a log scale or a grid of step."""

    type: str
    low: Annotated[float, Number()] = Field(description=LOW)
    high: Annotated[float, Number()] = Field(description=HIGH)
    log: StrictBool = Field(False, description="a log scale (needs low > 0)")
    step: Optional[Annotated[float, Number(gt=0)]] = Field(None, description=STEP)

    @model_validator(mode="after")
    def _sound(self):
        low, high, step = self.low, self.high, self.step
        if low > high:
            raise problem(f"low ({low}) > high ({high})")
        if self.log and low <= 0:
            raise problem(f"a log scale needs low > 0, got low {low}", "log")
        if self.log and step is not None and not (self.type == "int" and step == 1):
            raise problem("log and step cannot be combined; drop one")
        if step is not None and not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
            raise problem(f"high - low ({high - low:g}) must be a multiple of step ({step:g})", "step")
        return self


class FloatRange(Range):
    type: Literal["float"]


class IntRange(Range):
    type: Literal["int"]
    low: Annotated[int, Number()] = Field(description=LOW)
    high: Annotated[int, Number()] = Field(description=HIGH)
    step: Optional[Annotated[int, Number(gt=0)]] = Field(None, description=STEP)


class Choices(Section):
    """One of a list of values (a value may be a mapping, e.g. {energy: linear})."""

    type: Literal["categorical"] = "categorical"
    choices: Annotated[list, Field(min_length=1)] = Field(description="the values, e.g. [8, 16, 32]")


Distribution = tagged(FloatRange, IntRange, Choices, default=lambda value: "categorical" if "choices" in value else None,
                      bare=False)


def tunable() -> dict[str, tuple]:
    """Every name a parameter may have -> its path in the options: the keys of architecture.model and (but for the
    run settings) architecture.training, the keys inside them (``loss.weights.forces``), and the full paths."""

    def paths(node: dict, path: tuple):
        for key, value in node.items():
            if path == ("training",) and key in NOT_TUNABLE:
                continue
            yield path + (key,)
            if key in FREE_FORM:
                yield from (path + (key, sub) for sub in (LOSS_TERMS if key in ("weights", "deltas") else ("energy",)))
            elif isinstance(value, dict):
                yield from paths(value, path + (key,))

    found = [path for section in ("model", "training") for path in paths(HYPERS[section], (section,))]
    return {**{".".join(path[1:]): ("architecture", *path) for path in found},
            **{".".join(("architecture", *path)): ("architecture", *path) for path in found}}


TUNABLE = tunable()


class ParameterNames(Section):
    """A parameter's name is a hyperparameter's (run settings are not tuned)."""

    noun = "hyperparameter"
    refused = {name: f"{key} is not tuned: {reason}" for key, reason in NOT_TUNABLE.items()
               for name in (key, f"architecture.training.{key}")}

    @classmethod
    def shown(cls) -> list[str]:
        return [name for name in cls.known() if "." not in name] + [
            "and the paths inside them (loss.weights.forces) or from architecture (architecture.model.cutoff)"]


Parameters = create_model(
    "Parameters", __base__=ParameterNames, __module__=__name__,
    __doc__="What is tuned, by name: a key of architecture.model or architecture.training, a path inside one "
            "(loss.weights.forces) or a full path; everything else stays at the base hypers.",
    **{name.replace(".", "__"): (Distribution, unset(DOCS.get(".".join(path[2:]), name), alias=name))
       for name, path in TUNABLE.items()})


class SearchSpaceFile(Options):
    """A search-space file (nanopet-tune SPACE.yaml): an options file, the base of every trial, and what to search."""

    noun = "key"
    training_set: Datasets = Field(DEFAULT_DATASET, description="the training data (default: the built-in EMT alloys)")
    study: Optional[Study] = None
    objective: Optional[Objective] = None
    budget: Optional[Budget] = None
    strategy: Annotated[Union[Literal[STRATEGIES], Strategy, None], shorthand(Strategy)] = None
    parameters: Optional[Parameters] = None
    driver: Annotated[Union[Literal[DRIVERS], Driver, None], shorthand(Driver)] = None
