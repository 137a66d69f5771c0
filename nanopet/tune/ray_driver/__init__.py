"""The Ray Tune driver: ``nanopet-tune SPACE.yaml --driver ray [--address auto|HOST:PORT]``.

The same search-space file as the Optuna driver, run as Ray Tune experiments, one per stage, recorded in the same
Optuna storage. ``ray`` is imported only in this package:

- ``driver``: ``run``, the stages as Ray experiments (resources, restore after Ctrl-C, timeouts);
- ``search``: the searcher (Optuna's sampler, told what the study holds) and the schedulers (ASHA, ranking);
- ``trainable``: one trial in a Ray worker process;
- ``records``: finished Ray trials written into the Optuna storage;
- ``cluster``: joining a cluster or starting a local runtime;
- ``names``: the keys trials report and the files they keep.
"""

from nanopet.tune.ray_driver.driver import run

__all__ = ["run"]
