"""A search's stages in order, whichever driver runs them, and what a search says at its end.

``run_stages`` is the one loop over stages: each driver gives it ``run_stage`` (its engine's way to run one
stage's trials); after each stage but the last, the stage's best values are fixed for the next and its best
trial is carried in. ``finish`` summarises the search and says how to go on when it did not complete.
"""

from __future__ import annotations

from typing import Callable

from nanopet.tune.space import SearchSpace
from nanopet.tune.plan import plan, Stage
from nanopet.tune.studies import chosen_values

RESUME = "the same search again"  # what to run again when the caller did not say its command


def run_stages(space: SearchSpace, run_stage: Callable[[Stage, dict, object], tuple[str, object]],
               out: Callable[[str], None] | None = None) -> str:
    """Run ``run_stage(stage, fixed, previous) -> (status, study)`` for every stage of the plan, in order: ``fixed``
    holds earlier stages' best values, ``previous`` is the last stage's best trial (or None). Returns the first
    status that is not "completed" (timeout | interrupted), else "completed". ``out``: says each stage's best."""
    fixed, previous = {}, None
    for stage in plan(space):
        status, study = run_stage(stage, fixed, previous)
        if status != "completed":
            return status
        if space.objective.n_values == 1:  # the last stage's choice is the search's
            fixed, previous, line = chosen_values(space, stage, fixed, study)
            if out is not None:
                out(line)
    return "completed"


def closing_lines(status: str, storage: str, resume: str | None = None, also: str = "") -> list[str]:
    """What a search that did not complete says last: where its trials are (``storage``, ``also``: what else
    is kept), and the command that continues it."""
    again = resume or RESUME
    if status == "interrupted":
        return [f"interrupted: finished trials are kept in {storage}{also}; resume with: {again}"]
    if status == "timeout":
        return [f"timeout reached; to continue the study run: {again}"]
    return []


def finish(space: SearchSpace, status: str, out: Callable[[str], None], resume: str | None = None, also: str = ""):
    """Summarise the search (``SearchResult``, ``best.yaml``), print its report and closing lines."""
    from nanopet.tune.results import report_lines, summarize

    result = summarize(space, status)
    for line in report_lines(result, space) + closing_lines(status, result.storage, resume, also):
        out(line)
    return result
