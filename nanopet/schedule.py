"""The learning-rate schedule (spec 3.6, and this workbench's default): ``Schedule`` of ``training.scheduler``.

- ``cosine`` (the default): a linear warm-up over ``warmup_fraction`` of the run's optimizer steps, then half a
  cosine down to zero at ``num_epochs``, stepped after every optimizer step: the schedule ends where training ends;
  ``scheduler_epochs`` stretches it over more epochs than the run trains: a search's trial then trains as the
  first epochs of the longer run it predicts, near the peak rate (fully annealed 10-epoch trials of the molecules
  template stayed on the force plateau: validation forces 1.175 eV/A at 3e-4, against 1.04 at a constant rate);
- ``plateau`` (upstream NanoPET): ReduceLROnPlateau on the validation loss after every epoch; the trainer restarts
  from the best state on each drop and stops once the rate falls below ``MIN_LEARNING_RATE``.
"""

from __future__ import annotations

import math

import torch

from nanopet.errors import InputError

MIN_LEARNING_RATE = 1e-7


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """The cosine schedule's multiplier of the peak rate at optimizer step ``step`` (0-based): a linear rise over
    ``warmup`` steps, then half a cosine from 1 down to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """The learning-rate schedule of ``training.scheduler``.

    ``cosine`` (the default): a linear warm-up over ``warmup_fraction`` of the run's optimizer steps, then a cosine
    decay to zero at ``num_epochs``, stepped after every optimizer step: the schedule ends where training ends, so
    a run of any length finishes annealed. A resumed run with more ``num_epochs`` stretches it from where it is.
    ``plateau`` (spec 3.6): ReduceLROnPlateau on the validation loss after every epoch; ``after_epoch`` says when the
    rate dropped, and the trainer then restarts from the best state (the patience restarts too)."""

    def __init__(self, optimizer, training: dict, steps_per_epoch: int):
        self.optimizer, self.training, self.kind = optimizer, training, training["scheduler"]
        total = max(1, max(training["num_epochs"], training.get("scheduler_epochs") or 0) * steps_per_epoch)
        self.warmup = math.ceil(training["warmup_fraction"] * total)
        self.total = total
        self.scheduler = self._new()
        self.last_rate = self.rate

    def _new(self):
        if self.kind == "cosine":
            warmup, total = self.warmup, self.total
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: cosine_factor(step, warmup, total))
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
