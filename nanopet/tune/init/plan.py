"""How many trials of how many epochs fit the budget here: ``measure`` times the base hypers on this machine,
``predict`` says what a plan takes, ``fit_plan`` picks the plan.

A search at ``budget.equal: time`` gives every trial the base hypers' training time for ``budget.epochs`` epochs, so
a trial takes about the same whatever it tries. A staged search runs each stage's trials in rounds of ``workers``
(a stage's last trials finish before the next stage starts), so a plan of stages with n_k trials takes
sum_k ceil(n_k / workers) trials' time, plus the start (the workers' data) and the end (summary and report).
Pruning and repeated configurations only shorten it.

The plan is made of enumerated stages first (each cutoff, learning rate, batch size and model size of a small grid
tried once, so a few trials cover the stage), as many stages and epochs as fit; a budget with room to spare gets
more learning-rate trials (TPE over the range), then a larger model, then more epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

from nanopet.tune.init.rules import MAX_EPOCHS, MIN_EPOCHS, MODEL_SIZES, ModelSize, learning_rates

STAGE_SETS = (  # most stages first; a smaller budget drops the last ones
    ("cutoff", "learning_rate", "batch_size", ("d_pet", "num_gnn_layers")),
    ("cutoff", "learning_rate", "batch_size"),
    ("cutoff", "learning_rate"),
)
GOOD_EPOCHS = 8  # a stage set is kept when its trials get this many epochs (or all they want, if fewer)
TUNED_LEARNING_RATES = (8, 16)  # trials of a learning-rate stage searched by TPE: first this many, later more
FILL = 0.9  # of the budget the prediction may use: machines are noisy
MAX_TRIAL_SHARE = 0.15  # of the budget one trial may take: after the timeout running trials finish
START_SECONDS = 5.0  # the command's start before the workers launch (imports, reading the space)
END_SECONDS = 10.0  # the end: summary, best.yaml and the HTML report
TRIAL_BOOKKEEPING_SECONDS = 1.0  # storage, trial.json, model.ckpt of a trial
PARALLEL_EFFICIENCY = 0.92  # CPU workers side by side: 1.84-1.99x with 2 workers on 2 cores (benchmarks/results/search-drivers.txt)
COARSE_FACTOR = 4.0  # between the learning rates of the smallest plan


@dataclass
class Timing:
    """What init measured here (seconds)."""

    threads: int  # torch threads of each worker, as measured
    device: str
    data: float  # reading the splits and their neighbour lists at the largest cutoff, as each worker does
    epoch: float  # one epoch of the base hypers, validation included (the trainer's epoch_time)
    setup: float  # a trial's own start: the model, the composition baseline, the initialisation
    measure: float  # one measurement of budget.equal: time (``epoch_seconds_pair``), which a trial of a new step cost takes
    estimate: float = 0.0  # ``epoch_seconds``'s estimate of the training epoch (steps only)
    inspect: float = 0.0
    side_by_side: bool = False  # measured in as many processes at once as there are workers

    def trial(self, epochs: int, workers: int) -> float:
        """A trial of ``epochs`` base epochs: its start, the measurement of budget.equal: time, the epochs."""
        return self.setup + self.measure + TRIAL_BOOKKEEPING_SECONDS + epochs * self.epoch / efficiency(workers, self)

    def scaled(self, factor: float) -> "Timing":
        """The same machine for a model ``factor`` times as slow (its data as fast)."""
        return dataclasses.replace(self, epoch=self.epoch * factor, setup=self.setup * factor, measure=self.measure * factor,
                                   estimate=self.estimate * factor)


def efficiency(workers: int, timing: Timing) -> float:
    """The speed of each of ``workers`` CPU workers side by side, relative to the timing (1 where it was measured so)."""
    return PARALLEL_EFFICIENCY if workers > 1 and timing.device == "cpu" and not timing.side_by_side else 1.0


def measure(space, threads: int, workers: int = 1) -> tuple[Timing, int]:
    """Time ``space``'s base hypers as ``workers`` CPU workers of ``threads`` threads would run them: that many
    processes forked side by side, as the search forks its workers (one, in this process, on a GPU or where a fork
    cannot be used), each loading the splits and timing an epoch (``measure_here``). Returns their mean timing and
    the training structures."""
    from nanopet.tune.optuna_driver.workers import forkable

    if workers > 1 and space.resolved["device"] == "cpu" and forkable([]):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.starmap(_measure_forked, [(space.raw, str(space.base_dir), threads)] * workers)
        timings = [timing for timing, _ in results]
        mean = {name: sum(getattr(t, name) for t in timings) / len(timings) for name in ("data", "epoch", "setup", "measure", "estimate")}
        return dataclasses.replace(timings[0], **mean, side_by_side=True), results[0][1]
    timing, data = measure_here(space, threads)
    return timing, len(data.train)


def _measure_forked(raw: dict, base_dir: str, threads: int) -> tuple[Timing, int]:
    from nanopet.tune.space import load_search_space

    timing, data = measure_here(load_search_space(raw, base_dir, check_data=False), threads)
    return timing, len(data.train)


def measure_here(space, threads: int) -> tuple[Timing, object]:
    """Time ``space``'s base hypers in this process with ``threads`` torch threads: loading its splits at its largest
    cutoff (as a worker does), the measurement budget.equal: time makes before a trial (``epoch_seconds_pair``), and
    one epoch of the trainer (validation included) with the trial's start around it. Returns the timing and the data."""
    import torch

    from nanopet.data.splits import load_data
    from nanopet.train import StepTimer, epoch_seconds_pair, train

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        data = load_data(space.options, space.base_dir, cutoff=space.max_cutoff)
        warm = time.perf_counter()
        StepTimer(space.resolved, data)  # torch's first-use costs, which a worker pays once, not every trial
        loaded = time.perf_counter()
        estimate = epoch_seconds_pair(space.resolved, space.resolved, data)[0]
        measured = time.perf_counter()
        one = copy.deepcopy(space.options)
        one["architecture"]["training"]["num_epochs"] = 1
        epoch = train(one, data=data, log=lambda message: None).history[-1]["epoch_time"]
        trained = time.perf_counter() - measured
    finally:
        torch.set_num_threads(previous)
    return Timing(threads, str(space.resolved["device"]), data=warm - started, epoch=epoch, setup=max(0.0, trained - epoch),
                  measure=measured - loaded, estimate=estimate), data


def estimate_epoch(space, data, threads: int) -> float:
    """``epoch_seconds`` of ``space``'s base hypers on ``data`` (a larger model's cost relative to the timed one's)."""
    import torch

    from nanopet.train import epoch_seconds

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return epoch_seconds(space.resolved, data)
    finally:
        torch.set_num_threads(previous)


@dataclass
class Plan:
    """Which stages, how many trials each, how many epochs, and what that takes here."""

    size: ModelSize
    stages: tuple
    counts: list  # trials per stage
    epochs: int
    learning_rates: tuple | None = None  # enumerated values, or None: TPE over the range ...
    learning_rate_trials: int = 0  # ... in this many trials
    predicted: float = 0.0  # seconds
    trial_seconds: float = 0.0

    @property
    def n_trials(self) -> int:
        return sum(self.counts)

    def rounds(self, workers: int) -> int:
        return sum(math.ceil(n / workers) for n in self.counts)


def predict(timing: Timing, counts: list, epochs: int, workers: int) -> float:
    """Seconds of a search: its start, the workers' data, each stage in rounds of ``workers`` trials, its end."""
    rounds = sum(math.ceil(n / workers) for n in counts)
    return (START_SECONDS + timing.data / efficiency(workers, timing) + rounds * timing.trial(epochs, workers)
            + END_SECONDS)


class Fitter:
    """Finds the plan for ``budget`` seconds on ``workers``: ``counts(plan)`` gives each stage's trials,
    ``stages(stage_set, size)`` the stages the data allow (a single batch size makes no stage), ``timing_of(size,
    timing)`` the timing of a larger model size (None: not worth timing)."""

    def __init__(self, counts: Callable, stages: Callable, timing_of: Callable, budget: float, workers: int,
                 epochs_wanted: int):
        self.counts, self.stages, self.timing_of, self.budget, self.workers = counts, stages, timing_of, budget, workers
        self.epochs_wanted = epochs_wanted

    def fits(self, plan: Plan, timing: Timing) -> bool:
        trial = timing.trial(plan.epochs, self.workers)
        return (predict(timing, plan.counts, plan.epochs, self.workers) <= FILL * self.budget
                and trial <= MAX_TRIAL_SHARE * self.budget)

    def with_counts(self, plan: Plan, **changes) -> Plan:
        plan = dataclasses.replace(plan, **changes)
        plan.counts = self.counts(plan)
        return plan

    def most_epochs(self, plan: Plan, timing: Timing, top: int) -> Plan | None:
        """``plan`` at the most epochs up to ``top`` that fit, or None."""
        for epochs in range(top, MIN_EPOCHS - 1, -1):
            candidate = dataclasses.replace(plan, epochs=epochs)
            if self.fits(candidate, timing):
                return candidate
        return None

    def smallest_size(self, timing: Timing) -> Plan | None:
        """The tiny model: the most stages whose enumerated grids fit at ``GOOD_EPOCHS`` (or all the epochs wanted);
        else the two first stages on coarse grids at the most epochs that fit."""
        size = MODEL_SIZES[0]
        enough = min(self.epochs_wanted, GOOD_EPOCHS)
        for stages in dict.fromkeys(self.stages(stage_set, size) for stage_set in STAGE_SETS):
            plan = self.with_counts(Plan(size, stages, [], self.epochs_wanted, learning_rates=learning_rates(size)))
            plan = self.most_epochs(plan, timing, self.epochs_wanted)
            if plan is not None and plan.epochs >= enough:
                return plan
        coarse = self.with_counts(Plan(size, self.stages(STAGE_SETS[-1], size), [], self.epochs_wanted,
                                       learning_rates=learning_rates(size, COARSE_FACTOR)))
        return self.most_epochs(coarse, timing, self.epochs_wanted)

    def tuned_learning_rates(self, plan: Plan, timing: Timing, most: int) -> Plan:
        """``plan`` with its learning-rate stage searched by TPE over ``TUNED_LEARNING_RATES[0]`` up to ``most``
        trials, where they fit; else ``plan``."""
        best = plan
        for trials in range(max(TUNED_LEARNING_RATES[0], plan.learning_rate_trials + 1), most + 1):
            candidate = self.with_counts(plan, learning_rates=None, learning_rate_trials=trials)
            if not self.fits(candidate, timing):
                break
            best = candidate
        return best

    def grow_epochs(self, plan: Plan, timing: Timing) -> Plan:
        while plan.epochs < MAX_EPOCHS and self.fits(dataclasses.replace(plan, epochs=plan.epochs + 1), timing):
            plan = dataclasses.replace(plan, epochs=plan.epochs + 1)
        return plan

    def __call__(self, timing: Timing) -> tuple[Plan | None, Timing]:
        """(the plan, the timing of its model size); the plan is None when not even the smallest fits."""
        plan = self.smallest_size(timing)
        if plan is None or plan.stages != self.stages(STAGE_SETS[0], plan.size) or plan.epochs < self.epochs_wanted:
            return self.finished(plan, timing)
        plan = self.tuned_learning_rates(plan, timing, TUNED_LEARNING_RATES[0])
        for size in MODEL_SIZES[1:]:  # a larger model where its full plan fits at the epochs wanted
            if plan.learning_rates is not None:
                break
            other = self.timing_of(size, timing)
            if other is None:
                break
            candidate = self.with_counts(Plan(size, self.stages(STAGE_SETS[0], size), [], self.epochs_wanted,
                                              learning_rates=learning_rates(size)))
            candidate = self.tuned_learning_rates(candidate, other, TUNED_LEARNING_RATES[0])
            if candidate.learning_rates is not None or not self.fits(candidate, other):
                break
            plan, timing = candidate, other
        if plan.learning_rates is None:
            plan = self.tuned_learning_rates(plan, timing, TUNED_LEARNING_RATES[1])
        return self.finished(self.grow_epochs(plan, timing), timing)

    def least_budget(self, timing: Timing) -> tuple[Plan, float]:
        """The smallest plan (the two first stages on coarse grids, ``MIN_EPOCHS``) and the budget it needs here."""
        size = MODEL_SIZES[0]
        plan = self.with_counts(Plan(size, self.stages(STAGE_SETS[-1], size), [], MIN_EPOCHS,
                                     learning_rates=learning_rates(size, COARSE_FACTOR)))
        return plan, max(predict(timing, plan.counts, MIN_EPOCHS, self.workers) / FILL,
                         timing.trial(MIN_EPOCHS, self.workers) / MAX_TRIAL_SHARE)

    def finished(self, plan: Plan | None, timing: Timing) -> tuple[Plan | None, Timing]:
        if plan is not None:
            plan.predicted = predict(timing, plan.counts, plan.epochs, self.workers)
            plan.trial_seconds = timing.trial(plan.epochs, self.workers)
        return plan, timing
