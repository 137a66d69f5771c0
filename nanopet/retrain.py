"""Retrain a study's best trial for real: ``nanopet-tune retrain <study> [--trial N] [--epochs E] [--seeds 3]``.

The point of a search is a model people use. A search trains every trial on a short budget;
``retrain`` takes the best trial's full options (or trial N's) back out of the study's storage,
trains them with the full epoch budget once per seed, trains the search's starting hypers (its
defaults trial) the same way, and compares both on the held-out test set.

A trial's full options come from the first of these that exists (``nanopet.tune.storage.trial_options``):

1. the trial's ``options`` user attribute (a driver may store the resolved options with a trial);
2. the study's search-space file (study attribute ``source``) if its fingerprint still matches the
   study's: the base options with the trial's ``config`` set, the rule ``best.yaml`` follows;
3. ``trial.json``, then ``model.ckpt``, in the trial's artifact folder.

The best trial is the completed trial with the lowest first objective value over every stage of the
study (a staged study's last stage carries the previous best in, so this is also the final stage's
best). ``--trial`` takes a trial number (``3``), a staged study's ``stage2-3``, or ``<study>#3``.

Output, ``studies/<study>/best/``::

    hypers.yaml         the options (``nanopet-tune train hypers.yaml`` trains them again), full epochs
    seed<s>/            model.ckpt, checkpoints/, metrics.csv (every epoch), train.log, result.json
    defaults/           the same for the defaults: hypers.yaml, seed<s>/
    model.ckpt          the seed with the lowest validation loss: NanoPETCalculator.from_checkpoint(...)
    model.pt            the same model exported for metatomic engines (nanopet-tune export; see README)
    metrics.csv         one row per run (hypers, seed): test metrics, best epoch, epochs, stop reason
    summary.csv, .yaml  test metrics over seeds (mean, sample std) of both hypers, and the gain
    retrain.json        which trial the folder holds (a retrain of other hypers into it is refused)

Seeds: run ``s`` of ``--seeds n`` trains with ``seed: <the study's seed> + s`` (initialisation, batch
order, rotations); the data split is the study's in every run, so all runs share one test set.
Epochs: ``--epochs``, else default-hypers.yaml's ``num_epochs``; a run also ends when the learning
rate falls below 1e-7 (converged). Resume: a run continues from its latest checkpoint (every
``checkpoint_interval`` epochs, and ``model.ckpt`` at the end), exactly; finished runs are reused.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from nanopet.data.splits import DATASET_KEYS, cutoff_of
from nanopet.errors import InputError
from nanopet.options import resolve_options
from nanopet.train import SHOWN_UNITS  # how metrics are printed, as in the epoch lines
from nanopet.tune.storage import choose_trial, defaults_options, open_study, trial_labels

RUN_SETTINGS = ("log_interval", "checkpoint_interval", "log_mae", "atoms_per_pass", "distributed", "distributed_port")
TARGETS = ("energy", "forces", "stress", "virial")  # order of tables
# units in files (the trainer's: eV, eV/A, GPa); printed tables use SHOWN_UNITS (meV, like the epoch lines)
FILE_UNITS = {"energy": "eV/atom", "forces": "eV/A", "stress": "GPa", "virial": "eV/atom"}


# ---------------------------------------------------------------------------------------------
# Runs: one options set, one seed, resumable


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

    Returns the run's row: seed, epochs, best epoch, stop reason, validation metrics at the best
    epoch and test metrics of the best-validation weights. ``metrics.csv`` holds every epoch.
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
    write_history(folder / "metrics.csv", result.history)
    best = next((row for row in result.history if row["epoch"] == result.best_epoch), {})
    row = {"seed": options["seed"], "num_epochs": epochs, "epochs": len(result.history), "best_epoch": result.best_epoch,
           "stopped": result.stopped, "best_val_loss": result.best_val_loss,
           **{k: v for k, v in best.items() if k.startswith("val_") and k != "val_loss"},
           **result.test_metrics, "train_seconds": sum(r["epoch_time"] for r in result.history),
           "resumed_from": str(resume) if resume else None, "folder": str(folder)}
    done_path.write_text(json.dumps({"key": key, "row": row}, indent=2) + "\n")
    return row


def write_history(path: Path, history: list[dict]) -> None:
    """metrics.csv with every epoch and every metric (the trainer appends; a resume would duplicate rows)."""
    write_rows(path, history)


def read_history(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def evaluate_checkpoint(path: str | Path, data, split: str = "test", device: str = "cpu") -> dict:
    """Metrics of a saved model's best-validation weights on ``split``, recomputed as the trainer does."""
    from nanopet.checkpoints import load_checkpoint, model_from_checkpoint
    from nanopet.composition import composition_offsets, composition_weights
    from nanopet.runtime import select_device
    from nanopet.train import Loss, evaluate

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
# Statistics over seeds


def metric_names(rows: list[dict]) -> list[str]:
    present = {k for row in rows for k in row if k.startswith("test_")}
    return [f"test_{t}_{kind}" for t in TARGETS for kind in ("rmse", "mae") if f"test_{t}_{kind}" in present]


def spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def target_of(metric: str) -> str:
    return metric.split("_")[1]


def unit_of(metric: str, per_structure: bool = False, display: bool = False) -> str:
    """The unit of a metric in files (eV, eV/A, GPa) or, ``display``, as printed (meV...)."""
    target = target_of(metric)
    unit = SHOWN_UNITS[target][0] if display else FILE_UNITS[target]
    if per_structure and target in ("energy", "virial"):
        unit = unit.replace("/atom", "/structure")
    return unit


def describe_metric(metric: str, per_structure: bool = False) -> str:
    target, kind = metric.split("_")[1:3]
    name = {"energy": "energy per structure" if per_structure else "energy per atom"}.get(target, target)
    return f"{name} {kind.upper()}"


def shown(value: float, metric: str) -> str:
    unit, factor = SHOWN_UNITS[target_of(metric)]
    return f"{value * factor:.4g}" if math.isfinite(value) else "n/a"


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class RetrainResult:
    study: str
    trial: str  # "<study>#<number>"
    folder: Path  # studies/<study>/best
    hypers: Path  # hypers.yaml
    model: Path  # model.ckpt of the seed with the lowest validation loss
    runs: list = field(default_factory=list)  # one row per (hypers, seed)
    summary: list = field(default_factory=list)  # one row per test metric: means, stds, gain
    lines: list = field(default_factory=list)  # what was printed at the end


def finalize(options: dict, epochs: int | None, device: str | None, test_set: float | None) -> dict:
    from nanopet.options import default_hypers

    options = copy.deepcopy(options)
    training = options["architecture"]["training"]
    training["num_epochs"] = int(epochs or default_hypers()["training"]["num_epochs"])
    if device:
        options["device"] = device
    if test_set is not None:
        options["test_set"] = test_set
    return resolve_options(options)


def write_options(path: Path, options: dict, header: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(json.loads(json.dumps(options)), sort_keys=False)
    path.write_text(text)
    return path


def retrain(study: str, trial: str | int | None = None, epochs: int | None = None, seeds: int = 3, device: str | None = None,
            directory: str | Path = "studies", storage: str | None = None, output_dir: str | Path | None = None,
            test_set: float | None = None, out: Callable[[str], None] = print,
            on_epoch: Callable[[int, dict], bool | None] | None = None) -> RetrainResult:
    """Retrain the best trial (or ``trial``) of ``study`` for ``epochs`` with ``seeds`` seeds, and the
    defaults the same way; write ``studies/<study>/best/`` (see the module docstring)."""
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds: must be at least 1, got {seeds!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise InputError(f"--epochs: must be at least 1, got {epochs!r}")
    if test_set is not None and not 0 < test_set < 1:
        raise InputError(f"--test-set: must be a fraction in (0, 1), got {test_set!r}")
    found = open_study(study, directory, storage)
    chosen = choose_trial(found, trial)
    options = finalize(chosen.options, epochs, device, test_set)
    start = defaults_options(found)
    defaults = finalize(start[0], epochs, device, test_set) if start else None
    folder = Path(output_dir) if output_dir is not None else found.folder / "best"
    # the data first: a split without test structures is an error before anything is written
    space_cutoff = found.space.max_cutoff if found.space is not None else 0.0
    data = shared_data([options] + ([defaults] if defaults is not None else []), cutoff=space_cutoff)
    key = run_key(options)
    marker = folder / "retrain.json"
    if marker.is_file():
        held = json.loads(marker.read_text())
        if held.get("key") != key:
            raise InputError(f"{folder} holds the retrain of trial {held.get('trial')} (other hypers or data split); remove that folder, "
                             f"or finish it with --trial {held.get('label', held.get('trial'))}")
    label = next(lbl for lbl, s, t in trial_labels(found) if s is chosen.study and t.number == chosen.trial.number)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"trial": chosen.label, "label": label, "key": key, "options_from": chosen.how}, indent=2) + "\n")

    metric = chosen.study.user_attrs.get("metric", "value")
    search_epochs = chosen.options["architecture"]["training"]["num_epochs"]
    base_seed = options["seed"]
    seed_values = [base_seed + k for k in range(seeds)]
    value = chosen.trial.values[0]
    out(f"retraining trial {chosen.label} ({metric} {value:.4g} after {search_epochs} epochs in the search; options from "
        f"{chosen.how}) for up to {options['architecture']['training']['num_epochs']} epochs, seeds {', '.join(map(str, seed_values))}")
    hypers = write_options(folder / "hypers.yaml", options, [
        f"retrain of trial {chosen.label} of study {found.name}: {metric} {value:.6g} in the search ({search_epochs} epochs)",
        f"train it again with: nanopet-tune train {folder / 'hypers.yaml'}  (seed {base_seed}: the run in seed{base_seed}/; "
        f"the retrain trained seeds {seed_values[0]}..{seed_values[-1]})"])
    sets = [("best", options, folder)]
    if defaults is not None:
        out(f"defaults: {start[1]}")
        write_options(folder / "defaults" / "hypers.yaml", defaults, [f"the search's defaults, study {found.name}: {start[1]}"])
        sets.append(("defaults", defaults, folder / "defaults"))
    else:
        out("defaults: not recorded in the study and its search-space file is gone; no comparison")

    runs = []
    same = defaults is not None and run_key(defaults) == key
    if same:
        out(f"trial {chosen.label} has the defaults' hypers: the defaults' runs are its runs (gain 0)")
    for name, run_options, run_folder in sets:
        for seed in seed_values:
            if name == "defaults" and same:
                runs.append({**next(r for r in runs if r["hypers"] == "best" and r["seed"] == seed), "hypers": name})
                continue
            row = train_run(with_seed(run_options, seed), run_folder / f"seed{seed}", data, out, f"{name} seed {seed}", on_epoch)
            runs.append({"hypers": name, **row})

    best_runs = [r for r in runs if r["hypers"] == "best"]
    chosen_run = min(best_runs, key=lambda r: r["best_val_loss"])
    model = folder / "model.ckpt"
    shutil.copyfile(Path(chosen_run["folder"]) / "model.ckpt", model)
    from nanopet.export import export_checkpoint

    exported = export_checkpoint(model, folder / "model.pt")

    per_structure = "energy" in options["architecture"]["training"]["per_structure_targets"]
    summary = []
    for name in metric_names(runs):
        mean, std = spread(r.get(name) for r in best_runs)
        row = {"metric": name, "unit": unit_of(name, per_structure), "best_mean": mean, "best_std": std}
        if defaults is not None:
            d_mean, d_std = spread(r.get(name) for r in runs if r["hypers"] == "defaults")
            row.update(defaults_mean=d_mean, defaults_std=d_std,
                       gain=(1.0 - mean / d_mean) if d_mean and math.isfinite(d_mean) else math.nan)
        summary.append(row)

    write_rows(folder / "metrics.csv", runs)
    write_rows(folder / "summary.csv", summary)
    (folder / "summary.yaml").write_text(yaml.safe_dump(json.loads(json.dumps({
        "study": found.name, "trial": chosen.label, "search_value": {metric: value}, "search_epochs": search_epochs,
        "epochs": options["architecture"]["training"]["num_epochs"], "seeds": seed_values, "options_from": chosen.how,
        "defaults_from": start[1] if start else None, "model": str(model), "model_seed": chosen_run["seed"],
        "hypers": str(hypers), "test_metrics": {r["metric"]: {k: v for k, v in r.items() if k != "metric"} for r in summary},
    }, default=str)), sort_keys=False))

    lines = summary_lines(summary, len(seed_values), defaults is not None, per_structure)
    lines.append(f"model: {model} (seed {chosen_run['seed']}, lowest validation loss); "
                 f"ASE: NanoPETCalculator.from_checkpoint('{model}')")
    lines.append(f"exported for metatomic engines (ASE, LAMMPS, i-PI): {exported}")
    lines.append(f"hypers: {hypers}; per-run metrics: {folder / 'metrics.csv'}; summary: {folder / 'summary.csv'}")
    for line in lines:
        out(line)
    return RetrainResult(found.name, chosen.label, folder, hypers, model, runs, summary, lines)


def summary_lines(summary: list[dict], n_seeds: int, with_defaults: bool, per_structure: bool = False) -> list[str]:
    head = f"test set, {n_seeds} seed{'s' if n_seeds > 1 else ''} (mean ± std)"
    lines = [f"{head:<34} {'best':>22}" + (f" {'defaults':>22} {'gain':>8}" if with_defaults else "")]
    for row in summary:
        metric = row["metric"]
        unit = unit_of(metric, per_structure, display=True)
        text = f"{describe_metric(metric, per_structure) + f' ({unit})':<34} "
        text += f"{shown(row['best_mean'], metric) + ' ± ' + shown(row['best_std'], metric):>22}"
        if with_defaults:
            text += f" {shown(row['defaults_mean'], metric) + ' ± ' + shown(row['defaults_std'], metric):>22}"
            text += f" {100 * row['gain']:>7.1f}%" if math.isfinite(row["gain"]) else f" {'n/a':>8}"
        lines.append(text)
    if with_defaults:
        gains = [f"{describe_metric(r['metric'], per_structure)} {100 * r['gain']:+.1f}%" for r in summary
                 if math.isfinite(r.get("gain", math.nan))]
        if gains:
            lines.append("gain over the defaults (1 - best/defaults; positive: the tuned hypers are better): " + ", ".join(gains))
    return lines


def write_rows(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
