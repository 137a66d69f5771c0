"""Sets of runs: the same options trained over seeds into folders, finished runs reused, summarised on the test set.

The one layer under every command that trains chosen options again and compares them (``retrain``: the best
trial against the defaults, at equal epochs and at equal time; ``compare-losses``: one set per loss variant):

- ``RunSet``: a name, resolved options and a folder; ``train_sets`` trains each set once per seed into
  ``<folder>/seed<s>/`` (``train_run``: resumed from its latest checkpoint, reused when finished, refused when the
  folder holds other hypers), and returns one row per run;
- ``summarize``: mean and sample standard deviation over seeds of every test metric, per set;
- ``convergence``: whether a run's validation loss still fell at its end;
- the units and names of the metrics as files keep them (eV/atom, eV/A, GPa) and as tables print them (meV).

A run's row: ``set``, seed, epochs, best epoch, stop reason, validation metrics at the best epoch, test metrics of
the best-validation weights, training seconds (and per epoch), the convergence figures, its folder.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nanopet.data.splits import DATASET_KEYS, cutoff_of
from nanopet.errors import InputError
from nanopet.options import resolve_options
from nanopet.loss import SHOWN_UNITS  # how metrics are printed, as in the epoch lines

RUN_SETTINGS = ("log_interval", "checkpoint_interval", "log_mae", "atoms_per_pass", "distributed", "distributed_port")
TARGETS = ("energy", "forces", "stress", "virial")  # order of tables
# units in files (the trainer's: eV, eV/A, GPa); printed tables use SHOWN_UNITS (meV, like the epoch lines)
FILE_UNITS = {"energy": "eV/atom", "forces": "eV/A", "stress": "GPa", "virial": "eV/atom"}
CONVERGED_DROP = 0.02  # a run whose validation loss fell less than this share over its last quarter has converged


# ---------------------------------------------------------------------------------------------
# One run: one options set, one seed, resumable


def run_key(options: dict) -> str:
    """What makes two runs the same run: everything but the device, epochs and run settings."""
    options = resolve_options(options)
    content = {k: v for k, v in options.items() if k != "device"}
    training = dict(content["architecture"]["training"])
    for key in RUN_SETTINGS + ("num_epochs",):
        training.pop(key, None)
    content["architecture"] = {**content["architecture"], "training": training}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_seed(options: dict, seed: int) -> dict:
    options = copy.deepcopy(options)
    options["seed"] = int(seed)
    return options


def with_epochs(options: dict, epochs: int) -> dict:
    """``options`` trained for ``epochs``, on a schedule of their own (a search trial's ``scheduler_epochs``, the
    longer run it was the start of, dropped)."""
    options = copy.deepcopy(options)
    options["architecture"]["training"]["num_epochs"] = int(epochs)
    options["architecture"]["training"]["scheduler_epochs"] = None
    return options


def latest_checkpoint(folder: Path, key: str) -> Path | None:
    """The checkpoint of ``folder`` with the highest epoch (``model.ckpt`` or ``checkpoints/model_<e>.ckpt``)."""
    from nanopet.checkpoints import load_checkpoint

    candidates = []
    for path in (folder / "checkpoints").glob("model_*.ckpt"):
        match = re.fullmatch(r"model_(\d+)\.ckpt", path.name)
        if match:
            candidates.append((int(match.group(1)), 0, path))
    if (folder / "model.ckpt").is_file():
        candidates.append((load_checkpoint(folder / "model.ckpt")["epoch"], 1, folder / "model.ckpt"))
    if not candidates:
        return None
    path = max(candidates)[2]
    if run_key(load_checkpoint(path)["options"]) != key:
        raise InputError(f"{folder}: holds a run of other hypers ({path.name}); remove the folder to train these")
    return path


def train_run(options: dict, folder: str | Path, data, out: Callable[[str], None] = print, label: str = "",
              on_epoch: Callable | None = None) -> dict:
    """Train ``options`` into ``folder`` (resuming from its latest checkpoint), or reuse a finished run.

    Returns the run's row (the module docstring). ``metrics.csv`` holds every epoch.
    """
    from nanopet.train import train

    folder = Path(folder)
    options = resolve_options(options)
    key, epochs = run_key(options), options["architecture"]["training"]["num_epochs"]
    done_path = folder / "result.json"
    if done_path.is_file():
        done = json.loads(done_path.read_text())
        if done.get("key") != key:
            raise InputError(f"{folder}: holds a run of other hypers; remove the folder to train these")
        if done["row"]["num_epochs"] == epochs or done["row"]["stopped"] == "learning_rate":
            out(f"{label}: finished earlier (best epoch {done['row']['best_epoch']}), reused")
            return done["row"]
    resume = latest_checkpoint(folder, key) if folder.is_dir() else None
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "a") as log_file:
        def log(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()
            if message.startswith(("epoch", "resumed", "learning rate fell", "test:")):
                out(f"{label}: {message}")

        result = train(options, on_epoch=on_epoch, output_dir=folder, resume=resume, data=data, log=log)
    write_rows(folder / "metrics.csv", result.history)  # the trainer appends; a resume would repeat rows
    best = next((row for row in result.history if row["epoch"] == result.best_epoch), {})
    seconds = sum(r["epoch_time"] for r in result.history)
    row = {"seed": options["seed"], "num_epochs": epochs, "epochs": len(result.history), "best_epoch": result.best_epoch,
           "stopped": result.stopped, "best_val_loss": result.best_val_loss,
           **{k: v for k, v in best.items() if k.startswith("val_") and k != "val_loss"},
           **result.test_metrics, "train_seconds": seconds, "epoch_seconds": median_epoch_seconds(result.history),
           **convergence(result.history), "resumed_from": str(resume) if resume else None, "folder": str(folder)}
    done_path.write_text(json.dumps({"key": key, "row": row}, indent=2) + "\n")
    return row


def median_epoch_seconds(history: list[dict]) -> float:
    """A run's training seconds per epoch: the median over its epochs (a first epoch's warm-up and a busy moment
    of the machine count less than in the mean)."""
    times = sorted(r["epoch_time"] for r in history if "epoch_time" in r)
    return float(times[len(times) // 2]) if times else math.nan


def convergence(history: list[dict]) -> dict:
    """How much a run's validation loss still fell over its last quarter of epochs (at least 4): the relative drop
    of a straight line fitted to log(val_loss) there (``last_quarter_drop``: 0.05 means it fell 5%), and
    ``converged``, whether that drop is below ``CONVERGED_DROP``. With the cosine schedule the rate is small but not
    zero there, so a run that still learns shows it; one that no longer learns is flat."""
    losses = [r["val_loss"] for r in history if math.isfinite(r.get("val_loss", math.nan)) and r["val_loss"] > 0]
    window = max(4, len(losses) // 4)
    if len(losses) < 8:
        return {"last_quarter_drop": None, "converged": None}
    tail = np.log(np.asarray(losses[-window:]))
    slope = float(np.polyfit(np.arange(window), tail, 1)[0])
    drop = 1.0 - math.exp(slope * (window - 1))
    return {"last_quarter_drop": drop, "converged": bool(drop < CONVERGED_DROP)}


def read_history(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate_checkpoint(path: str | Path, data, split: str = "test", device: str = "cpu") -> dict:
    """Metrics of a saved model's best-validation weights on ``split``, recomputed as the trainer does."""
    from nanopet.checkpoints import load_checkpoint, model_from_checkpoint
    from nanopet.composition import composition_offsets, composition_weights
    from nanopet.runtime import select_device
    from nanopet.loss import Loss
    from nanopet.train import evaluate

    options = resolve_options(load_checkpoint(path)["options"])
    training = options["architecture"]["training"]
    model = model_from_checkpoint(path)
    device = select_device(device)
    model.to(device)
    data = data.at_cutoff(model.cutoff)
    types = list(model.atomic_types)
    composition = composition_weights(training, data.train, types)  # the trainer's: the same offsets
    dataset = getattr(data, split)
    offsets = composition_offsets(composition, types, dataset)
    terms = ("energy",) + (("forces",) if data.train.has_forces else ()) + (("virial",) if data.train.has_stress else ())
    dtype = next(model.parameters()).dtype
    per_structure = "energy" in training["per_structure_targets"]
    return evaluate(model, dataset, training["batch_size"], Loss(training["loss"], terms), offsets, per_structure,
                    device, dtype).metrics(split)


def shared_data(options_list: list[dict], cutoff: float = 0.0):
    """``load_data`` once for runs that share a dataset and split (neighbour lists at the largest cutoff)."""
    from nanopet.data.splits import load_data

    first = options_list[0]
    for options in options_list[1:]:
        if any(options.get(k) != first.get(k) for k in DATASET_KEYS + ("seed",)):
            raise InputError("the runs to compare use different datasets or splits; they must share one test set")
    cutoff = max([cutoff] + [cutoff_of(o) for o in options_list])
    data = load_data(first, ".", cutoff=cutoff)
    if len(data.test) == 0:
        raise InputError(f"test_set: {first.get('test_set')!r} leaves no test structures; the comparison needs held-out "
                         "data: pass --test-set 0.1 (the data are split anew)")
    return data


# ---------------------------------------------------------------------------------------------
# Sets of runs over seeds


@dataclass
class RunSet:
    """Options trained once per seed into ``folder/seed<s>/``; ``name`` labels its rows (``set``) and progress lines."""

    name: str
    options: dict
    folder: Path


def train_sets(sets: list[RunSet], seeds: list[int], data, out: Callable[[str], None] = print,
               on_epoch: Callable | None = None, key: str = "set") -> list[dict]:
    """Train every set once per seed (finished runs reused, others resumed); one row per run, ``key``: the set's name."""
    rows = []
    for run_set in sets:
        for seed in seeds:
            row = train_run(with_seed(run_set.options, seed), Path(run_set.folder) / f"seed{seed}", data, out,
                            f"{run_set.name} seed {seed}", on_epoch)
            rows.append({key: run_set.name, **row})
    return rows


def summarize(rows: list[dict], key: str = "set") -> dict:
    """{set name: {test metric: (mean, sample std)}} over the rows of each set."""
    out: dict = {}
    for name in dict.fromkeys(r[key] for r in rows):
        own = [r for r in rows if r[key] == name]
        out[name] = {metric: spread(r.get(metric) for r in own) for metric in metric_names(own)}
    return out


def mean_of(rows: list[dict], field: str) -> float:
    return spread(r.get(field) for r in rows)[0]


# ---------------------------------------------------------------------------------------------
# Statistics and units


def metric_names(rows: list[dict]) -> list[str]:
    """The test metrics of ``rows`` in table order: each target's RMSE and MAE, then ``test_rmse_gmean`` (every
    target's RMSE over its spread, geometric mean: nanopet.loss.Accumulator.metrics)."""
    present = {k for row in rows for k in row if k.startswith("test_")}
    names = [f"test_{t}_{kind}" for t in TARGETS for kind in ("rmse", "mae")] + ["test_rmse_gmean"]
    return [name for name in names if name in present]


def is_gmean(metric: str) -> bool:
    return metric.endswith("_rmse_gmean")


def spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def target_of(metric: str) -> str:
    return metric.split("_")[1]


def unit_of(metric: str, per_structure: bool = False, display: bool = False) -> str:
    """The unit of a metric in files (eV, eV/A, GPa) or, ``display``, as printed (meV...); the gmean has none."""
    if is_gmean(metric):
        return "1"
    target = target_of(metric)
    unit = SHOWN_UNITS[target][0] if display else FILE_UNITS[target]
    if per_structure and target in ("energy", "virial"):
        unit = unit.replace("/atom", "/structure")
    return unit


def describe_metric(metric: str, per_structure: bool = False) -> str:
    if is_gmean(metric):
        return "RMSE/spread GMEAN"
    target, kind = metric.split("_")[1:3]
    name = {"energy": "energy per structure" if per_structure else "energy per atom"}.get(target, target)
    return f"{name} {kind.upper()}"


def shown(value: float, metric: str) -> str:
    unit, factor = ("1", 1.0) if is_gmean(metric) else SHOWN_UNITS[target_of(metric)]
    return f"{value * factor:.4g}" if math.isfinite(value) else "n/a"
