"""Pruning that waits for the ranking: one decision, written once, used by both drivers' engines.

Early in training the trials of a search are often indistinguishable (on molecules all of them sit on the force
plateau for tens of epochs): a pruner deciding then, by a fixed warm-up, discards trials by chance. The ranking
rule decides only once the study itself shows that the ranking has formed: among the finished trials (completed,
all epochs), the values after the epoch in question rank their final values with Kendall's tau >= ``min_tau``.
Then a trial is pruned when its value is worse than the ``percentile`` of the finished trials' values after that
epoch (the median rule by default). Until ``n_startup_trials`` trials have finished nothing is pruned.

``RankingRule.decide`` is the decision; ``RankingPruner`` is its Optuna pruner (``study.pruner: {type: ranking}``);
``ray_driver.RankingScheduler`` its Ray scheduler. ``kendall_tau`` is the rank agreement both this rule and the
report's "how early the ranking forms" figure measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

RANKING_DEFAULTS = {"min_tau": 0.6, "n_startup_trials": 5, "percentile": 50.0, "n_warmup_steps": 0}


def kendall_tau(a, b, groups=None) -> float | None:
    """Kendall's tau-b of two samples over the pairs within each group (all pairs without groups: scipy's
    ``kendalltau``); None where no pair differs in both. Groups are a staged search's stages: each stage
    prunes against its own trials, and a parameter it does not tune is tied within it."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    same = np.ones((len(a), len(a)), dtype=bool) if groups is None else np.equal.outer(np.asarray(groups), np.asarray(groups))
    pairs = np.triu(same, k=1)
    x, y = np.sign(np.subtract.outer(a, a))[pairs], np.sign(np.subtract.outer(b, b))[pairs]
    both = (x * y).sum()  # concordant - discordant
    denominator = math.sqrt(float((x != 0).sum()) * float((y != 0).sum()))
    return float(both / denominator) if denominator > 0 else None


@dataclass(frozen=True)
class RankingRule:
    """Prune after ``epoch`` (0-based) only where the finished trials' values there rank their final ones."""

    epochs: int  # a trial's epochs: the last one is never a decision
    min_tau: float = RANKING_DEFAULTS["min_tau"]
    n_startup_trials: int = RANKING_DEFAULTS["n_startup_trials"]
    percentile: float = RANKING_DEFAULTS["percentile"]
    n_warmup_steps: int = RANKING_DEFAULTS["n_warmup_steps"]

    @classmethod
    def of(cls, settings: dict, epochs: int) -> RankingRule:
        """The rule of ``study.pruner: {type: ranking, ...}``."""
        return cls(epochs, **{k: v for k, v in settings.items() if k != "type"})

    def agreement(self, finished: list[list[float]], epoch: int) -> float | None:
        """Kendall's tau between the finished trials' values after ``epoch`` and their final values."""
        return kendall_tau([curve[epoch] for curve in finished], [curve[-1] for curve in finished])

    def decide(self, epoch: int, value: float, finished: list[list[float]]) -> str | None:
        """Why a trial whose value after ``epoch`` is ``value`` stops now (None: it goes on). ``finished``: the
        curves (values after each epoch) of the trials that ran all their epochs."""
        finished = [curve for curve in finished if len(curve) >= self.epochs]
        if epoch < self.n_warmup_steps or epoch >= self.epochs - 1 or len(finished) < max(2, self.n_startup_trials):
            return None
        tau = self.agreement(finished, epoch)
        if tau is None or tau < self.min_tau:
            return None  # the trials are not told apart yet: deciding now would be chance
        there = [curve[epoch] for curve in finished]
        threshold = float(np.percentile(there, self.percentile))
        if not value > threshold:
            return None
        return (f"worse than the {self.percentile:g}th percentile ({threshold:.4g}) of the {len(finished)} finished trials "
                f"after this epoch, whose values there rank their final ones (Kendall tau {tau:.2f} >= {self.min_tau:g})")


def finished_curves(study: optuna.Study, epochs: int) -> list[list[float]]:
    """The curves of ``study``'s trials that completed all ``epochs`` (a repeat's copied curve counted once)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [[t.intermediate_values[k] for k in range(epochs)] for t in trials
            if "duplicate_of" not in t.user_attrs and all(k in t.intermediate_values for k in range(epochs))]


class RankingPruner(optuna.pruners.BasePruner):
    """``RankingRule`` as an Optuna pruner; ``reasons[trial number]`` says why it pruned a trial."""

    def __init__(self, rule: RankingRule):
        self.rule, self.reasons = rule, {}

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch is None:
            return False
        reason = self.rule.decide(epoch, trial.intermediate_values[epoch], finished_curves(study, self.rule.epochs))
        if reason:
            self.reasons[trial.number] = reason
        return reason is not None
