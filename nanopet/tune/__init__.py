"""Hyperparameter search for NanoPET with Optuna: ``nanopet-tune search_spaces/default.yaml``.

Public API (everything else is internal):

- ``run(search_space, workers=None, gpus=None, ...) -> SearchResult``: run (or resume) a study
- ``load_search_space(path) -> SearchSpace``: read and validate a search-space file (shared with
  other drivers); ``SearchSpace``, ``Parameter``
- ``list_studies(directory)``: studies with trial counts by state and best value
- ``serve_dashboard(study, host, port)``: optuna-dashboard on a study's storage

Two doors onto one core. The core, shared by both drivers:

- ``space``: the search-space file, validated (``nanopet.schema``); ``plan``: the stages and their budgets;
- ``trial``: one trial whichever driver runs it: its record, its epochs (``budget.equal``), what it reports, the stop
  rules, repeats, cost; ``progress``: the lines a search prints; ``text``: words and numbers in those lines;
- ``studies``: the Optuna studies a search records into (sampler, pruner, a stage's first trial, a stage's choice);
  ``params``: parameters as Optuna distributions; ``pruning``: the ranking rule; ``sampling``: TPE at a common rung;
- ``stages``: the loop over stages; ``results``: what a search found and ``best.yaml``; ``storage``: storages, studies
  on disk, a chosen trial's options; ``dashboard``: optuna-dashboard on a study.

The drivers: ``optuna_driver`` (worker processes sharing the storage: ``workers``, ``runner``, ``lease``) and
``ray_driver`` (Ray Tune experiments: ``driver``, ``search``, ``trainable``, ``records``, ``cluster``, ``names``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from nanopet.errors import InputError
from nanopet.tune.space import Parameter, SearchSpace, load_search_space


def run(search_space: str | Path | dict | SearchSpace, workers: int | None = None, gpus: list[int] | None = None,
        storage: str | None = None, n_trials: int | None = None, timeout: float | None = None,
        study_name: str | None = None, directory: str | Path | None = None, threads: int | None = None,
        out: Callable[[str], None] = print, resume_command: str | None = None, started: float | None = None):
    """Run a search to its budget (``n_trials`` / ``timeout``), resuming the study if it exists.

    ``workers`` processes share the study (default: one per visible GPU, else one, in this
    process); ``gpus`` picks the GPUs. A space with ``driver: ray`` runs as a Ray Tune experiment
    instead (``workers``: trials at once). Returns a ``SearchResult`` (also printed through ``out``), whose last
    line is the time taken since ``started`` (``time.time()``; default: this call).
    """
    from nanopet.tune.stages import finish
    from nanopet.tune.storage import record_storage
    from nanopet.tune.studies import check_resumable
    from nanopet.tune.plan import plan_line
    from nanopet.tune.optuna_driver.workers import launch

    started = time.time() if started is None else started
    space = search_space if isinstance(search_space, SearchSpace) else load_search_space(search_space)
    if any(v is not None for v in (storage, n_trials, timeout, study_name, directory)):
        space = space.replace(n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name, directory=directory)
    out(plan_line(space))
    if space.driver.type == "ray":
        if gpus is not None:
            raise InputError("--gpus: not with the ray driver (Ray gives each trial driver.gpus_per_trial GPUs; "
                             "CUDA_VISIBLE_DEVICES limits what a node offers)")
        from nanopet.tune import ray_driver

        return ray_driver.run(space, workers=workers, out=out, resume_command=resume_command, started=started)
    check_resumable(space)
    record_storage(space)
    outcome = launch(space, workers=workers, gpus=gpus, threads=threads, out=out)
    return finish(space, outcome.status, out, resume_command, started=started)


def list_studies(directory: str | Path = "studies", storage: str | None = None) -> list[dict]:
    from nanopet.tune.storage import list_studies as _list

    return _list(directory, storage)


def serve_dashboard(study: str, host: str = "127.0.0.1", port: int = 8080, directory: str | Path = "studies",
                    storage: str | None = None, out: Callable[[str], None] = print) -> None:
    from nanopet.tune.dashboard import serve

    serve(study, host, port, directory, storage, out)


__all__ = ["run", "load_search_space", "SearchSpace", "Parameter", "list_studies", "serve_dashboard"]
