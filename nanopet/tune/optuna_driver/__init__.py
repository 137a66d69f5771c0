"""The Optuna driver: worker processes that share the study's storage, one trial each at a time.

- ``workers``: the launcher (one worker per GPU, or ``--workers N`` CPU processes, forked or new interpreters),
  a worker's trial loop over the stages, Ctrl-C and replacement of dead workers;
- ``runner``: one trial as an Optuna trial (the trial layer's training with Optuna's pruner as its engine; repeats
  copied; errors end the trial only);
- ``lease``: which running trials still have a live worker (heartbeats), and re-queueing the others.
"""

from nanopet.tune.optuna_driver.workers import launch

__all__ = ["launch"]
