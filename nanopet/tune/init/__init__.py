"""``nanopet-tune init DATA.xyz``: a search space fitted to a dataset and to this machine, each choice with its reason.

``init_search(paths, budget, workers, ...) -> Init`` does four things in turn:

1. ``inspect_data`` reads the files once: the label keys and the energy unit (where the file cannot tell and the
   values do not look like eV, or a key is ambiguous, a one-line ``InputError`` names the flag to give), the
   geometry (molecules or bulk), the neighbour table, suspicious frames;
2. ``rules``: what follows from the data: splits by size, the cutoff range, the initialisation, learning rates,
   batch sizes, model sizes, the pruner, each with its reason;
3. ``plan``: timing on this machine (the data loaded as a worker loads it, one epoch of the base hypers with the
   threads each worker gets), then the stages, trials and epochs that end within the budget at ``budget.equal:
   time`` with the workers given;
4. ``render``: the search space with a comment above every choice, read back with ``load_search_space``.

Imports data, train and tune (the search-space reader), never the report layer.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nanopet.errors import InputError
from nanopet.tune.init import rules
from nanopet.tune.init.plan import STAGE_SETS, Fitter, Plan, Timing, estimate_epoch, measure, predict
from nanopet.tune.init.render import render, summary_lines
from nanopet.tune.text import minutes
from nanopet.tune.init.rules import MODEL_SIZES, ModelSize

LARGER_MODEL_SHARE = 1 / 3  # a larger model is timed only where the tiny model's plan uses less of the budget


@dataclass
class Init:
    """What ``init_search`` decided and wrote."""

    path: Path  # the search space written
    command: str  # the command that runs it
    raw: dict  # the search space as a mapping
    text: str  # the file's text, with its comments
    report: object  # inspect's DataReport
    timing: Timing
    plan: Plan
    budget: float  # seconds
    workers: int
    summary: list  # what init prints: each choice in a few words
    dropped: list = field(default_factory=list)  # frames left out with --drop-suspicious, as inspect names them


@dataclass
class DataChoices:
    """What follows from the data alone (rules), for every plan."""

    name: str
    device: str
    data: dict  # training_set, validation_set, test_set
    targets: rules.Reasoned
    splits: rules.Reasoned
    cutoffs: rules.Reasoned
    initialisation: rules.Reasoned
    batches: dict  # model size name -> Reasoned batch sizes

    def stages(self, stage_set: tuple, size: ModelSize) -> tuple:
        """``stage_set`` without a batch-size stage where the data allow one batch size only."""
        single = len(self.batches[size.name]["choices"]) < 2
        return tuple(stage for stage in stage_set if not (stage == "batch_size" and single))

    def counts(self, plan: Plan) -> list[int]:
        """Trials per stage: every configuration of an enumerated stage once (the stage's starting one is the
        defaults' trial or the carried-in best), a learning-rate stage searched by TPE its trials."""
        low, high = self.cutoffs["low"], self.cutoffs["high"]
        per_stage = {"cutoff": int(round((high - low) / rules.CUTOFF_STEP)) + 1,
                     "learning_rate": (len(plan.learning_rates) - (rules.DEFAULT_LEARNING_RATE in plan.learning_rates)
                                       if plan.learning_rates else plan.learning_rate_trials),
                     "batch_size": len(self.batches[plan.size.name]["choices"]) - 1,
                     ("d_pet", "num_gnn_layers"): plan.size.configurations - 1}
        return [per_stage[stage] for stage in plan.stages]

    def space(self, plan: Plan) -> dict:
        """The search space of ``plan`` as a mapping (without the pruner, the timeout and the prediction)."""
        size, batches = plan.size, self.batches[plan.size.name]
        base_cutoff = min(max(rules.DEFAULT_CUTOFF, self.cutoffs["low"]), self.cutoffs["high"])
        learning_rate = ({"type": "categorical", "choices": list(plan.learning_rates)} if plan.learning_rates else
                         {"type": "float", "low": size.learning_rate[0], "high": size.learning_rate[1], "log": True})
        parameters = {
            "cutoff": {"type": "float", "low": self.cutoffs["low"], "high": self.cutoffs["high"], "step": rules.CUTOFF_STEP},
            "learning_rate": learning_rate,
            "batch_size": {"type": "categorical", "choices": list(batches["choices"])},
            "d_pet": {"type": "categorical", "choices": list(size.d_pet)},
            "num_gnn_layers": {"type": "int", "low": size.gnn_layers[0], "high": size.gnn_layers[1]},
        }
        tuned = {name for stage in plan.stages for name in ((stage,) if isinstance(stage, str) else stage)}
        strategy = {"type": "staged", "importance": [list(s) if isinstance(s, tuple) else s for s in plan.stages],
                    "split": self.counts(plan)}
        if "batch_size" in tuned:
            strategy["learning_rate_scaling"] = "sqrt"
        return {
            "seed": 0, "device": self.device, "base_precision": 32, **copy.deepcopy(self.data),
            "architecture": {"model": {**size.model, "cutoff": base_cutoff},
                             "training": {"batch_size": batches["base"], "learning_rate": rules.DEFAULT_LEARNING_RATE,
                                          **self.initialisation}},
            "study": {"name": self.name, "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 3}, "keep_checkpoints": 3},
            "objective": {"metric": "val_rmse_gmean"},
            "budget": {"n_trials": plan.n_trials, "epochs": plan.epochs, "equal": "time"},
            "strategy": strategy,
            "parameters": {name: spec for name, spec in parameters.items() if name in tuned},
        }


def init_search(paths, budget: float = 3600.0, workers: int | None = None, energy_unit: str | None = None,
                energy_key: str | None = None, forces_key: str | None = None, stress_key: str | None = None,
                output: str | Path | None = None, name: str | None = None, overwrite: bool = False,
                drop_suspicious: bool = False, out: Callable[[str], None] = print) -> Init:
    """Inspect ``paths``, time the base hypers here and write a search space that ends within ``budget`` seconds on
    ``workers`` workers (default: one per GPU, else one per core up to 8); ``output`` defaults to
    ``<DATA>-search.yaml`` beside the first file, the study's ``name`` to the first file's. Returns what was
    written; every problem is a one-line ``InputError`` naming the flag to give."""
    from nanopet.data.inspection import inspect_data
    from nanopet.tune.space import load_search_space
    from nanopet.tune.optuna_driver.workers import detect_gpus, threads_per_worker

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise InputError("init: give at least one structure file")
    if budget <= 0:
        raise InputError(f"--budget: must be positive, got {budget:g} s")
    gpus = detect_gpus()
    workers = workers or (len(gpus) if gpus else max(1, min(8, os.cpu_count() or 1)))
    if workers < 1:
        raise InputError(f"--workers: must be at least 1, got {workers}")
    output = Path(output) if output else paths[0].with_name(f"{paths[0].stem}-search.yaml")
    if output.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"-o {output}: a search space is a .yaml file")
    if output.exists() and not overwrite:
        raise InputError(f"{output}: exists; give another file with -o, or --overwrite to replace it")

    started = time.perf_counter()
    report = inspect_data([str(p) for p in paths], energy_unit=energy_unit)
    output.parent.mkdir(parents=True, exist_ok=True)
    dropped, flagged = [], report
    if drop_suspicious and report.suspicious:  # the copies are inspected again: keys, units, neighbours without them
        paths, dropped = write_without_suspicious(report, paths, output)
        report = inspect_data([str(p) for p in paths], energy_unit=energy_unit)
    inspected = time.perf_counter() - started
    targets = rules.label_targets(report, energy_key, forces_key, stress_key)
    device, threads = ("cuda", 1) if gpus else ("cpu", threads_per_worker(workers))
    choices = data_choices(report, paths, targets, output.parent, name or paths[0].stem.removesuffix(".clean"), device,
                           _memory_gb(device, workers))
    out(f"init: {report.structures:,} structures read and checked in {inspected:.1f} s; timing the base hypers here "
        f"({workers} worker{'s' * (workers > 1)} of {threads} thread{'s' * (threads > 1)} on {device})")
    plan, timing = fit_to_machine(choices, output.parent, budget, workers, threads)
    timing.inspect = inspected

    raw = choices.space(plan)
    pruning = rules.pruner(report, plan.epochs)
    raw["study"]["pruner"] = dict(pruning)
    raw["budget"].update(timeout=int(round(budget)), predicted_seconds=int(round(plan.predicted)))
    command = f"nanopet-tune {output} --workers {workers}"
    text = render(raw, report=report, flagged=flagged, choices=choices, plan=plan, timing=timing, budget=budget,
                  workers=workers, command=command, dropped=dropped, pruning=pruning)
    output.write_text(text)
    load_search_space(output)  # what was written loads as it is
    summary = summary_lines(report, flagged, raw, plan, timing, budget, workers, dropped)
    return Init(output, command, raw, text, report, timing, plan, budget, workers, summary, dropped)


def data_choices(report, paths: list, targets: rules.Reasoned, folder: Path, name: str, device: str,
                 memory_gb: float) -> DataChoices:
    """What follows from the data alone: the datasets (paths relative to ``folder``, where the space goes), splits,
    cutoffs, initialisation, and each model size's batch sizes (``memory_gb``: what one training pass may fill)."""
    datasets = [{"systems": {"read_from": _relative(p, folder), "length_unit": "angstrom"}, "targets": dict(targets)}
                for p in paths]
    shares = rules.splits(report.structures)
    cutoffs = rules.cutoff_range(report)
    train_structures = report.structures - sum(max(1, round(share * report.structures)) for share in shares.values())
    atoms_fit = report.atoms_per_pass(memory_gb, cutoffs["high"])
    return DataChoices(
        name=name, device=device, data={"training_set": datasets[0] if len(datasets) == 1 else datasets, **shares},
        targets=targets, splits=shares, cutoffs=cutoffs, initialisation=rules.initialisation(report),
        batches={size.name: rules.batch_sizes(size, train_structures, atoms_fit, report.atoms_per_structure[2])
                 for size in MODEL_SIZES})


def fit_to_machine(choices: DataChoices, folder: Path, budget: float, workers: int, threads: int) -> tuple[Plan, Timing]:
    """The plan for ``budget`` seconds on ``workers`` here and the timing it was fitted on: the tiny model's base
    hypers timed, a larger size's estimated where the tiny plan leaves room for it (and timed itself when chosen).
    Too short a budget is an InputError saying the budget the smallest plan needs."""
    from nanopet.data.splits import load_data
    from nanopet.tune.space import load_search_space

    def space_of(plan: Plan):
        return load_search_space(choices.space(plan), folder, check_data=False)

    def first_plan(size: ModelSize) -> Plan:  # for the search space of a size's base hypers
        plan = Plan(size, choices.stages(STAGE_SETS[0], size), [], 1, learning_rates=rules.learning_rates(size))
        plan.counts = choices.counts(plan)
        return plan

    tiny = first_plan(MODEL_SIZES[0])
    timing, train_structures = measure(space_of(tiny), threads, workers)
    epochs = rules.epochs_wanted(math.ceil(train_structures / choices.batches[tiny.size.name]["base"]))
    measured, estimated, loaded = {tiny.size.name: timing}, {}, []

    def timing_of(size: ModelSize, base: Timing) -> Timing | None:
        """A larger size's timing: measured, else estimated from the tiny model's by their training epochs' ratio
        (only where the tiny model's plan leaves room for it)."""
        if size.name in measured:
            return measured[size.name]
        if predict(timing, tiny.counts, epochs, workers) > LARGER_MODEL_SHARE * budget:
            return None
        if size.name not in estimated:
            if not loaded:  # the data in this process, once
                loaded.append(load_data(space_of(tiny).options, folder, cutoff=space_of(tiny).max_cutoff))
            estimated[size.name] = timing.scaled(estimate_epoch(space_of(first_plan(size)), loaded[0], threads) / timing.estimate)
        return estimated[size.name]

    fitter = Fitter(choices.counts, choices.stages, timing_of, budget, workers, epochs)
    while True:  # a larger size chosen on its estimate is timed itself, and the plan fitted again
        plan, plan_timing = fitter(timing)
        if plan is None or plan.size.name in measured:
            break
        measured[plan.size.name], _ = measure(space_of(plan), threads, workers)
    if plan is None:
        smallest, needed = fitter.least_budget(timing)
        raise InputError(f"--budget {minutes(budget)}: too short for a search of this data here (an epoch of the defaults "
                         f"took {timing.epoch:.3g} s): the smallest plan, {smallest.n_trials} trials of {rules.MIN_EPOCHS} "
                         f"epochs, needs about {minutes(needed)}; give --budget {math.ceil(needed / 60)}m or more")
    return plan, plan_timing


def _memory_gb(device: str, workers: int) -> float:
    """Memory each worker may fill with one training pass: half its GPU, or half the RAM over the workers."""
    if device != "cpu":
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9 / 2
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        total = 8.0
    return total / 2 / max(1, workers)


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(path.resolve())


def write_without_suspicious(report, paths: list, output: Path) -> tuple[list, list]:
    """Copies of ``paths`` without the frames inspect flagged, beside ``output`` as ``<file stem>.clean.xyz``.
    Returns the copies and the frames left out, as inspect names them."""
    import ase.io

    flagged = sorted({(ref.file, ref.index): ref for found in report.suspicious for ref in found.frames}.items())
    written = []
    for number, path in enumerate(paths):
        frames = ase.io.read(path, index=":")
        left_out = {index for (file, index), _ in flagged if file == number}
        target = output.with_name(f"{path.stem}.clean.xyz")
        ase.io.write(target, [atoms for index, atoms in enumerate(frames) if index not in left_out], format="extxyz")
        written.append(target)
    return written, [report.frame_name(ref) for _, ref in flagged]


__all__ = ["init_search", "Init"]
