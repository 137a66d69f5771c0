"""A search's stages in order, whichever driver runs them, and what a search says at its end.

``run_stages`` is the one loop over stages: each driver gives it ``run_stage`` (its engine's way to run one
stage's trials); after each stage but the last, the stage's best values are fixed for the next and its best
trial is carried in. ``finish`` summarises the search and says how to go on when it did not complete.
"""

from __future__ import annotations

import time
from typing import Callable

from nanopet.tune.space import SearchSpace
from nanopet.tune.plan import plan, Stage
from nanopet.tune.studies import chosen_values
from nanopet.tune.text import minutes

RESUME = "the same search again"  # what to run again when the caller did not say its command


def run_stages(space: SearchSpace, run_stage: Callable[[Stage, dict, object, float | None], tuple[str, object]],
               out: Callable[[str], None] | None = None, deadline: float | None = None) -> str:
    """Run ``run_stage(stage, fixed, previous, until) -> (status, study)`` for every stage of the plan, in order:
    ``fixed`` holds earlier stages' best values, ``previous`` is the last stage's best trial (or None), ``until`` the
    time (``time.time()``) after which the stage starts no trial. With a ``deadline`` (budget.timeout) each stage
    but the last gets its share of the time left, by its trials (``share_deadline``), so a machine slower than
    planned shortens every stage instead of leaving the last ones out; a stage whose share ended ("timeout" before
    the deadline) is done, and the search's status is then "timeout". Returns the first status that is not
    "completed" (timeout | interrupted), else "completed". ``out``: says each stage's best."""
    fixed, previous, shortened = {}, None, False
    stages = plan(space)
    for k, stage in enumerate(stages):
        until = share_deadline(stages[k:], deadline)
        status, study = run_stage(stage, fixed, previous, until)
        if status == "timeout" and until != deadline and time.time() < deadline:
            shortened, status = True, "completed"
            if out is not None:
                out(f"{stage.label}: its share of budget.timeout is used up, with trials left; the next stage starts")
        if status != "completed":
            return status
        if space.objective.n_values == 1:  # the last stage's choice is the search's
            fixed, previous, line = chosen_values(space, stage, fixed, study)
            if out is not None:
                out(line)
    return "timeout" if shortened else "completed"


def share_deadline(stages: list[Stage], deadline: float | None) -> float | None:
    """When the first of ``stages`` stops starting trials: now plus its share, by trials, of the time left before
    ``deadline``; the deadline itself for the last stage, or where a stage has no trial budget."""
    if deadline is None or len(stages) < 2 or any(stage.n_trials is None for stage in stages):
        return deadline
    now = time.time()
    return now + max(0.0, deadline - now) * stages[0].n_trials / sum(stage.n_trials for stage in stages)


def closing_lines(status: str, storage: str, resume: str | None = None, also: str = "") -> list[str]:
    """What a search that did not complete says last: where its trials are (``storage``, ``also``: what else
    is kept), and the command that continues it."""
    again = resume or RESUME
    if status == "interrupted":
        return [f"interrupted: finished trials are kept in {storage}{also}; resume with: {again}"]
    if status == "timeout":
        return [f"timeout reached; to continue the study run: {again}"]
    return []


def time_line(space: SearchSpace, seconds: float) -> str:
    """The search's time, against its budget.timeout and the time ``nanopet-tune init`` predicted where the space
    has them, e.g. ``time: 5.4 min of a 5.0 min budget (1.08x; predicted 4.8 min)``."""
    budget = space.budget
    text = f"time: {minutes(seconds)}"
    if budget.timeout:
        text += f" of a {minutes(budget.timeout)} budget ({seconds / budget.timeout:.2f}x"
        text += f"; predicted {minutes(budget.predicted_seconds)})" if budget.predicted_seconds else ")"
    elif budget.predicted_seconds:
        text += f" (predicted {minutes(budget.predicted_seconds)})"
    return text


def finish(space: SearchSpace, status: str, out: Callable[[str], None], resume: str | None = None, also: str = "",
           started: float | None = None):
    """Summarise the search (``SearchResult``, ``best.yaml``), print its report and closing lines; ``started``
    (``time.time()`` when the search began): the last line says the time taken."""
    from nanopet.tune.results import report_lines, summarize

    result = summarize(space, status)
    lines = report_lines(result, space) + closing_lines(status, result.storage, resume, also)
    for line in lines + ([time_line(space, time.time() - started)] if started is not None else []):
        out(line)
    return result
