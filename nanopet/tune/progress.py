"""The lines a search prints while it runs, either driver: the pace after the first epoch (``pace_line``, said once by
``PaceLine``), a trial's epoch lines (``progress_due``, ``epoch_line``), and a finished trial's values
(``describe_values``, ``copied_line`` for a repeat that took its twin's result)."""

from __future__ import annotations

from typing import Callable

from nanopet.tune.space import SearchSpace
from nanopet.tune.text import share_text, span


def pace_line(space: SearchSpace, epoch_seconds: float, workers: int) -> str:
    """What the budget costs at the pace of a first epoch, e.g. ``pace: 48 s an epoch, 80 min a trial of 100
    epochs; 60 trials: about 3.3 days on 1 worker (less with pruning and repeats)``. Other trials'
    sizes and cutoffs change their pace, so this is an order of magnitude, said early."""
    from nanopet.tune.text import plural

    budget = space.budget
    trial = epoch_seconds * budget.epochs
    text = f"pace: {epoch_seconds:.3g} s an epoch, {span(trial)} a trial of {plural(budget.epochs, 'epoch')}"
    if budget.n_trials:
        text += (f"; {plural(budget.n_trials, 'trial')}: about {span(trial * budget.n_trials / workers)} on "
                 f"{plural(workers, 'worker')} (less with pruning and repeats)")
    if budget.timeout:
        text += f"; budget.timeout ends the search after {span(budget.timeout)}"
    return text


class PaceLine:
    """Says ``pace_line`` once, at the first epoch trained (either driver)."""

    def __init__(self, space: SearchSpace, workers: int, out: Callable[[str], None]):
        self.space, self.workers, self.out, self.told = space, workers, out, False

    def __call__(self, epoch_seconds: float) -> None:
        if not self.told:
            self.told = True
            self.out(pace_line(self.space, epoch_seconds, self.workers))


def progress_due(done: int, epochs: int) -> bool:
    """Whether a progress line follows epoch ``done`` (1-based): the first, about every fifth, and the last."""
    return (done - 1) % max(1, epochs // 5) == 0 or done == epochs


def epoch_line(trial, epoch: int, epochs: int, metric: str, value: float, at_best: float, share: float = 1.0) -> str:
    """A trial's progress line: this epoch's metric, and the metric at its best validation loss so far (what the
    trial would deliver if it stopped now); ``share``: of the training set, named where below 1."""
    where = f"share {share_text(share)} epoch" if share < 1.0 else "epoch"
    return f"trial {trial} {where} {epoch}/{epochs}: {metric} {value:.4g}, {at_best:.4g} at the best val_loss so far"


def describe_values(space: SearchSpace, values) -> str:
    """A finished trial's values for its end line: ``val_forces_rmse 0.123`` or ``..., cost 4.5e-05``."""
    objective = space.objective
    if values is None:
        return ""
    if objective.cost == "front":
        return f"{objective.metric} {values[0]:.4g}, cost {values[1]:.4g}"
    name = objective.metric if objective.cost == "none" else f"{objective.metric} x cost^{objective.cost_weight:g}"
    return f"{name} {values[0]:.4g}"


def copied_line(trial, twin: str, values_text: str | None) -> str:
    """The end line of a repeat: PRUNED (``values_text`` None) or COMPLETE with its twin's result."""
    if values_text is None:
        return f"trial {trial} PRUNED: same parameters as {twin}, stopped there: not trained again"
    return f"trial {trial} COMPLETE {values_text}: same parameters as {twin}, result copied (training is deterministic)"
