"""A search's plan, whichever driver runs it: its stages in order of importance with their trial budgets (``plan``,
``Stage``), enumerated stages, and how many trials a stage may still start (``remaining``, ``counted``).

Strategy ``joint`` is one stage; ``staged`` one per group of ``strategy.importance``, split by ``strategy.split``. A
stage whose parameters are all discrete and make no more configurations than its budget is enumerated: each
configuration once in a seeded random order, whatever the sampler, and it ends when none is left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from optuna.trial import TrialState

from nanopet.tune.space import SearchSpace
from nanopet.tune.storage import stage_study_name
from nanopet.tune.text import plural


@dataclass(frozen=True)
class Stage:
    index: int  # 1-based
    count: int
    parameters: tuple
    n_trials: int | None
    study_name: str
    grid: int | None = None  # how many configurations the parameters make; None if one is continuous
    carried: bool = False  # starts from the previous stage's best, one of its configurations (not trained again)

    @property
    def enumerated(self) -> bool:
        """Small and discrete: every configuration is tried once, and then the stage ends."""
        return self.grid is not None and (self.n_trials is None or self.grid - self.carried <= self.n_trials)

    @property
    def used_up(self) -> str:
        """Why the stage starts no more trials, when ``remaining`` says none are left."""
        return f"each of its {self.grid} configurations tried once" if self.enumerated else f"all {self.n_trials} trials recorded"

    @property
    def label(self) -> str:
        return f"stage {self.index}/{self.count} ({', '.join(self.parameters)})" if self.count > 1 else "joint"

    @property
    def trial_prefix(self) -> str:
        return f"stage{self.index}-" if self.count > 1 else ""


def plan(space: SearchSpace) -> list[Stage]:
    """The stages in order of importance with their trial budgets (joint: one stage)."""
    stages = space.strategy.stages
    n_trials = space.budget.n_trials
    grids = [grid_size(space, group) if space.strategy.enumerate else None for group in stages]
    if len(stages) == 1:
        return [Stage(1, 1, stages[0], n_trials, space.study.name, grids[0])]
    # stage k > 1 starts from the previous best, which has this stage's parameters at their base values (if allowed)
    carried = [k > 0 and all(space.parameters[name].contains(space.base_value(name)) for name in group)
               for k, group in enumerate(stages)]
    budgets = space.strategy.stage_trials(n_trials, [None if g is None else g - c for g, c in zip(grids, carried)])
    return [Stage(k + 1, len(stages), group, budgets[k], stage_study_name(space.study.name, k + 1, group), grids[k],
                  carried[k]) for k, group in enumerate(stages)]


def plan_line(space: SearchSpace) -> str:
    """One line: each stage's trials, e.g. ``plan: stage 1/2 (cutoff): 4 trials, each configuration once; ...``."""
    parts = []
    for stage in plan(space):
        trials = "trials until the timeout" if stage.n_trials is None else plural(stage.n_trials, "trial")
        parts.append(f"{stage.label}: {trials}" + (", each configuration once" if stage.enumerated else ""))
    return "plan: " + "; ".join(parts)


def grid_size(space: SearchSpace, names) -> int | None:
    """The number of configurations of these parameters; None if one of them is continuous."""
    size = 1
    for name in names:
        count = space.parameters[name].size
        if count is None:
            return None
        size *= count
    return size


def remaining(stage: Stage, trials) -> int | None:
    """Trials the stage may still start (None: as many as the timeout allows). An enumerated stage: the
    configurations no trial has taken (the carried-in one included) plus the trials waiting in the queue
    (theirs are taken when they start); its budget is at least that, and a copy (two workers that drew the
    same configuration at once) must not use up a configuration's share. Otherwise: the budget less the
    counted trials."""
    if stage.enumerated:
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        taken = {json.dumps(t.params, sort_keys=True, default=str) for t in counted(trials) + carried(trials) if t.params}
        taken |= {json.dumps(t.system_attrs.get("fixed_params", {}), sort_keys=True, default=str) for t in waiting}
        drawing = sum(t.state == TrialState.RUNNING and not t.params for t in trials)  # asked, parameters not drawn yet
        return max(0, stage.grid - len(taken) - drawing) + len(waiting)
    return None if stage.n_trials is None else stage.n_trials - len(counted(trials))


def carried(trials) -> list:
    return [t for t in trials if t.user_attrs.get("role") == "carried"]


def counted(trials) -> list:
    """Trials that use the budget: finished or running ones, except carried-in trials and failures that
    were re-queued (their retry counts instead)."""
    retried = {t.user_attrs.get("retry_of") for t in trials if t.user_attrs.get("retry_of") is not None}
    return [t for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
            and t.user_attrs.get("role") != "carried" and t.number not in retried]
