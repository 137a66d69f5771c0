"""The learning-rate schedule (spec 3.6, and this workbench's default): ``Schedule`` of ``training.scheduler``.

- ``cosine`` (the default): a linear warm-up over ``warmup_fraction`` of the run's optimizer steps, then half a
  cosine down to zero at ``num_epochs``, stepped after every optimizer step: the schedule ends where training ends;
  ``scheduler_epochs`` stretches it over more epochs than the run trains: the run (a search trial: the search
  sets it to retrain's epochs) trains as the first epochs of that longer run, near the peak rate, and anneals
  linearly over its last fifth. On the molecules template's 10-epoch trials, fully annealed ones stayed on the
  force plateau (validation forces 1.175 eV/A at 3e-4) and ranked configurations unlike converged runs, the
  start of a longer schedule left it (0.92-0.96) and ranked them best (benchmarks/results/budget.txt);
- ``plateau`` (upstream NanoPET): ReduceLROnPlateau on the validation loss after every epoch; the trainer restarts
  from the best state on each drop and stops once the rate falls below ``MIN_LEARNING_RATE``.
"""

from __future__ import annotations

import math

import torch

from nanopet.errors import InputError

MIN_LEARNING_RATE = 1e-7


ANNEAL_SHARE = 0.2  # a run shorter than its schedule (scheduler_epochs) anneals over this share of its own steps


def cosine_factor(step: int, warmup: int, total: int, stop: int | None = None, anneal: int = 0) -> float:
    """The cosine schedule's multiplier of the peak rate at optimizer step ``step`` (0-based): a linear rise over
    ``warmup`` steps, then half a cosine from 1 down to 0 at step ``total``; a run that stops at step ``stop`` before
    ``total`` takes its last ``anneal`` steps down linearly from there towards zero."""
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    if stop is not None and anneal and stop - anneal <= step < stop:
        factor *= (stop - step) / (anneal + 1)
    return factor


class Schedule:
    """The learning-rate schedule of ``training.scheduler``.

    ``cosine`` (the default): a linear warm-up over ``warmup_fraction`` of the run's optimizer steps, then a cosine
    decay to zero at ``num_epochs``, stepped after every optimizer step: the schedule ends where training ends, so
    a run of any length finishes annealed. A resumed run with more ``num_epochs`` stretches it from where it is.
    ``plateau`` (spec 3.6): ReduceLROnPlateau on the validation loss after every epoch; ``after_epoch`` says when the
    rate dropped, and the trainer then restarts from the best state (the patience restarts too)."""

    def __init__(self, optimizer, training: dict, steps_per_epoch: int):
        self.optimizer, self.training, self.kind = optimizer, training, training["scheduler"]
        run = max(1, training["num_epochs"] * steps_per_epoch)
        total = max(run, (training.get("scheduler_epochs") or 0) * steps_per_epoch)
        self.warmup = math.ceil(training["warmup_fraction"] * total)
        self.total = total
        # the start of a longer schedule (a search trial): it anneals over its last steps, so its value is an annealed one
        self.stop, self.anneal = (run, max(1, round(ANNEAL_SHARE * run))) if total > run else (None, 0)
        self.scheduler = self._new()
        self.last_rate = self.rate

    def _new(self):
        if self.kind == "cosine":
            warmup, total, stop, anneal = self.warmup, self.total, self.stop, self.anneal
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: cosine_factor(step, warmup, total, stop, anneal))
        return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=self.training["scheduler_factor"],
                                                          patience=self.training["scheduler_patience"])

    @property
    def rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def describe(self) -> str:
        if self.kind == "cosine":
            return (f"learning rate {self.training['learning_rate']:.3g}: cosine over {self.total:,} steps "
                    f"({self.warmup:,} of warm-up)")
        return (f"learning rate {self.training['learning_rate']:.3g}: x{self.training['scheduler_factor']:g} after "
                f"{self.training['scheduler_patience']} epochs without a better validation loss")

    @property
    def exhausted(self) -> bool:
        """A plateau schedule whose rate fell below MIN_LEARNING_RATE has converged (spec 3.6: training stops)."""
        return self.kind == "plateau" and self.rate < MIN_LEARNING_RATE

    def after_step(self) -> None:
        self.last_rate = self.rate  # the rate the step just taken used
        if self.kind == "cosine":
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> bool:
        """Step a plateau schedule; True when it lowered the rate (then the scheduler starts afresh)."""
        if self.kind != "plateau":
            return False
        before = self.rate
        self.scheduler.step(val_loss)
        if self.rate < before:
            self.scheduler = self._new()
            return True
        return False

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict, source) -> None:
        plateau = "patience" in state
        if plateau != (self.kind == "plateau"):
            kind = "plateau" if plateau else "cosine"
            raise InputError(f"{source}: trained with scheduler: {kind}; set architecture.training.scheduler: {kind} to resume it")
        self.scheduler.load_state_dict(state)
        self.last_rate = self.rate
