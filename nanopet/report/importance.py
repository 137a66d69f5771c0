"""Which hyperparameters mattered, measured from a study's trials, and how that compares with the docs.

- Joint study: PED-ANOVA (``optuna.importance``' default evaluator, no extra dependency) on the
  completed trials: how differently the best trials' values of a parameter are spread compared with
  all trials'. Two objectives: importance for reaching the Pareto front.
- Staged study: each stage varied its own parameters with the others fixed (one at a time), so a
  stage's share is the variance of log(objective) over its distinct completed configurations,
  split between the stage's parameters by PED-ANOVA when it tuned several.

The documented order (metatrain's NanoPET docs) is compared by Kendall's tau over the parameters
both rank.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from nanopet.report.collect import StudyData
from nanopet.tune.pruning import kendall_tau

# metatrain docs, NanoPET: which hyperparameters to tune first
DOCUMENTED_ORDER = ("cutoff", "learning_rate", "batch_size", "d_pet", "num_gnn_layers", "num_attention_layers")
FEW_TRIALS = 20  # below this many completed trials, importances are rough


@dataclass
class Importances:
    values: dict  # parameter -> share in [0, 1], most important first; empty when not measurable
    method: str  # how they were measured, one phrase
    n_trials: int  # completed trials used
    missing: str = ""  # why there are none (empty when there are)
    agreement: str = ""  # the rank agreement with DOCUMENTED_ORDER, in words
    tau: float | None = None  # Kendall's tau over the shared parameters (None: fewer than 2 shared)
    shared: tuple = ()  # parameters both orders rank
    unvaried: tuple = ()  # tuned parameters no completed trials varied (no importance measurable)

    def order(self) -> list[str]:
        return list(self.values)


def measure(data: StudyData) -> Importances:
    if data.staged and len(data.stages) > 1:
        result = _staged(data)
    else:
        result = _joint(data)
    if result.values:
        result.tau, result.agreement, result.shared = agreement(result.values)
        result.unvaried = tuple(p for p in data.parameters if p not in result.values)
    return result


def _joint(data: StudyData) -> Importances:
    trials = [t for trials in data.frozen.values() for t in trials if t.state == TrialState.COMPLETE and t.values]
    method = "PED-ANOVA" + (" (for reaching the Pareto front)" if data.n_objectives > 1 else "")
    varied = [p for p in data.parameters if len({_key(t.params.get(p)) for t in trials if p in t.params}) > 1]
    if len(trials) < 3:
        return Importances({}, method, len(trials), f"importances need at least 3 completed trials, the study has {len(trials)}")
    if not varied:
        return Importances({}, method, len(trials), "no parameter took more than one value in the completed trials")
    return Importances(_ped_anova(trials, data.n_objectives), method, len(trials))


def _staged(data: StudyData) -> Importances:
    spread, used = {}, 0
    for stage in data.stages:
        trials = [t for t in data.frozen[stage["study"]] if t.state == TrialState.COMPLETE and t.values
                  and t.user_attrs.get("duplicate_of") is None]
        used += len(trials)
        values = [t.values[0] for t in trials if t.values[0] > 0]
        if len(values) < 2:
            continue
        share = float(np.var(np.log(values)))
        names = [p for p in stage["parameters"] if len({_key(t.params.get(p)) for t in trials}) > 1]
        if len(names) == 1 or (names and len(trials) < 3):
            split = {name: 1.0 / len(names) for name in names}
        elif names:
            split = _ped_anova(trials, 1)
        else:
            continue
        for name, part in split.items():
            spread[name] = share * part
    method = "variance of log objective within each stage, one stage at a time"
    total = sum(spread.values())
    if not spread or total <= 0:
        return Importances({}, method, used, "no stage has two distinct completed configurations with different results yet")
    ordered = dict(sorted(((k, v / total) for k, v in spread.items()), key=lambda kv: -kv[1]))
    return Importances(ordered, method, used)


def _ped_anova(trials, n_objectives: int) -> dict:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(directions=["minimize"] * n_objectives)  # in memory: the storage is only read
        study.add_trials(trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in values.items()}


def _key(value):
    return repr(value)


def agreement(values: dict) -> tuple[float | None, str, tuple]:
    """Kendall's tau between the measured and the documented order over the parameters both rank, in words."""
    measured = list(values)
    shared = tuple(p for p in DOCUMENTED_ORDER if p in values)
    documented = " > ".join(DOCUMENTED_ORDER)
    if len(shared) < 2:
        tuned = f"only {shared[0]}" if shared else "none"
        return None, (f"Of the documented order ({documented}) {tuned} was tuned here, so there is no ranking to compare."), shared
    tau = kendall_tau([DOCUMENTED_ORDER.index(p) for p in shared], [measured.index(p) for p in shared])
    if tau >= 0.999:
        words = "agrees exactly with"
    elif tau >= 0.6:
        words = "agrees closely with"
    elif tau >= 0.2:
        words = "agrees loosely with"
    elif tau > -0.2:
        words = "is unrelated to"
    elif tau > -0.999:
        words = "mostly disagrees with"
    else:
        words = "is the reverse of"
    ours = " > ".join(p for p in measured if p in shared)
    theirs = " > ".join(shared)
    top = measured[0]
    where = f"documented #{DOCUMENTED_ORDER.index(top) + 1}" if top in DOCUMENTED_ORDER else "not in the documented list"
    return tau, (f"Measured order {ours} {words} the documented order {theirs} (Kendall tau {tau:+.2f} over {len(shared)} "
                 f"shared parameters); the most important here is {top} ({where})."), shared
