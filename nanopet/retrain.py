"""Retrain a study's best trial for real: ``nanopet-tune retrain <study> [--trial N] [--epochs E] [--seeds 3]``.

The point of a search is a model people use. A search trains every trial on a short budget;
``retrain`` takes the best trial's full options (or trial N's) back out of the study's storage,
trains them with a longer epoch budget once per seed, trains the search's starting hypers (its
defaults trial) the same way, and compares both on the held-out test set, every target:

- at equal epochs (both for ``--epochs``);
- at equal time: the hypers that train an epoch faster also train for the other's time (its epochs times the ratio
  of their seconds per epoch, measured in the equal-epoch runs), unless the two are within 10% of each other; so a
  tuned model that is better only because it took more optimizer steps is seen as such;
- with each one's seconds per epoch and whether its runs converged (the validation loss no longer fell over the last
  quarter of the epochs: ``nanopet.runs.convergence``).

Both use the same learning-rate schedule (the options' ``scheduler``; the default cosine ends where the epochs end).

A trial's full options come from the first of these that exists (``nanopet.tune.storage.trial_options``):

1. the trial's ``options`` user attribute (a driver may store the resolved options with a trial);
2. the study's search-space file (study attribute ``source``) if its fingerprint still matches the
   study's: the base options with the trial's ``config`` set, the rule ``best.yaml`` follows;
3. ``trial.json``, then ``model.ckpt``, in the trial's artifact folder.

The best trial is the search's choice (``nanopet.tune.storage.choose_trial``). ``--trial`` takes a trial number
(``3``), a staged study's ``stage2-3``, or ``<study>#3``.

Output, ``studies/<study>/best/``::

    hypers.yaml         the options (``nanopet-tune train hypers.yaml`` trains them again), the retrain's epochs
    seed<s>/            model.ckpt, checkpoints/, metrics.csv (every epoch), train.log, result.json
    defaults/           the same for the defaults: hypers.yaml, seed<s>/
    equal-time/         the faster hypers' runs for the slower one's time: seed<s>/
    model.ckpt          the seed with the lowest validation loss: NanoPETCalculator.from_checkpoint(...)
    model.pt            the same model exported for metatomic engines (nanopet-tune export; see docs/howto/export.md)
    metrics.csv         one row per run (hypers, seed): test metrics, best epoch, epochs, stop reason, seconds
    summary.csv, .yaml  test metrics over seeds (mean, sample std) of both hypers, the gains at equal epochs and
                        at equal time, seconds per epoch, convergence, and the verdict line
    retrain.json        which trial the folder holds (a retrain of other hypers into it is refused)

Seeds: run ``s`` of ``--seeds n`` trains with ``seed: <the study's seed> + s`` (initialisation, batch
order, rotations); the data split is the study's in every run, so all runs share one test set.
Epochs: ``--epochs``, else ``RETRAIN_EPOCH_FACTOR`` times the search's; the expected time is said before training,
from the seconds per epoch the search's trials took. Resume: a run continues from its latest checkpoint (every
``checkpoint_interval`` epochs, and ``model.ckpt`` at the end), exactly; finished runs are reused.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from nanopet.errors import InputError
from nanopet.options import resolve_options, write_options
from nanopet.runs import (RunSet, describe_metric, mean_of, metric_names, run_key, shared_data, shown, spread, train_sets, unit_of,
                          with_epochs, write_rows)
from nanopet.tune.space import RETRAIN_EPOCH_FACTOR  # default --epochs: this many times the search's epochs
from nanopet.tune.storage import choose_trial, defaults_options, open_study, trial_labels

EQUAL_TIME_TOLERANCE = 0.1  # seconds per epoch within this share of each other: equal epochs are equal time


@dataclass
class RetrainResult:
    study: str
    trial: str  # "<study>#<number>"
    folder: Path  # studies/<study>/best
    hypers: Path  # hypers.yaml
    model: Path  # model.ckpt of the seed with the lowest validation loss
    runs: list = field(default_factory=list)  # one row per (hypers, seed); hypers: best | defaults | <name> at equal time
    summary: list = field(default_factory=list)  # one row per test metric: means, stds, gains
    lines: list = field(default_factory=list)  # what was printed at the end
    equal_time: dict | None = None  # which hypers trained longer for equal time, and for how many epochs
    verdict: str = ""  # the first line of the comparison


def finalize(options: dict, epochs: int, device: str | None, test_set: float | None) -> dict:
    options = with_epochs(options, epochs)
    if device:
        options["device"] = device
    if test_set is not None:
        options["test_set"] = test_set
    return resolve_options(options)


def search_epoch_seconds(trial) -> float | None:
    """A trial's training seconds per epoch in the search (its ``timing`` over its epochs), or None."""
    timing, epochs = trial.user_attrs.get("timing") or {}, trial.user_attrs.get("epochs")
    return timing["epochs"] / epochs if epochs and timing.get("epochs") else None


def expected_time_line(epochs: int, seeds: int, seconds: dict) -> str:
    """What the retrain will cost, from the seconds per epoch of the search's trials (``seconds``: name -> s or None)."""
    from nanopet.tune.text import span

    known = {name: s for name, s in seconds.items() if s}
    if not known:
        return f"expected time: unknown (the search recorded no epoch times); {seeds} seed(s) x {epochs} epochs per hypers"
    total = sum(known.values()) * epochs * seeds
    if len(known) == 2:  # the faster one also trains for the slower one's time
        total += max(known.values()) * epochs * seeds
    parts = ", ".join(f"{name} {s:.3g} s an epoch" for name, s in known.items())
    return (f"expected time: about {span(total)} on this machine ({parts} in the search; {seeds} seed(s) x {epochs} epochs"
            + (", and the faster hypers again for the slower one's time" if len(known) == 2 else "") + ")")


def retrain(study: str, trial: str | int | None = None, epochs: int | None = None, seeds: int = 3, device: str | None = None,
            directory: str | Path = "studies", storage: str | None = None, output_dir: str | Path | None = None,
            test_set: float | None = None, out: Callable[[str], None] = print,
            on_epoch: Callable[[int, dict], bool | None] | None = None, equal_time: bool = True) -> RetrainResult:
    """Retrain the best trial (or ``trial``) of ``study`` for ``epochs`` with ``seeds`` seeds, and the
    defaults the same way (and at equal time unless ``equal_time`` is False); write ``studies/<study>/best/``
    (see the module docstring)."""
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds: must be at least 1, got {seeds!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise InputError(f"--epochs: must be at least 1, got {epochs!r}")
    if test_set is not None and not 0 < test_set < 1:
        raise InputError(f"--test-set: must be a fraction in (0, 1), got {test_set!r}")
    found = open_study(study, directory, storage)
    chosen = choose_trial(found, trial)
    search_epochs = chosen.options["architecture"]["training"]["num_epochs"]
    epochs = epochs or RETRAIN_EPOCH_FACTOR * search_epochs
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
    seed_values = [options["seed"] + k for k in range(seeds)]
    value = chosen.trial.values[0]
    out(f"retraining trial {chosen.label} ({metric} {value:.4g} after {search_epochs} epochs in the search, chosen by "
        f"objective.metric {metric}; options from {chosen.how}) for {epochs} epochs, seeds {', '.join(map(str, seed_values))}")
    hypers = write_options(folder / "hypers.yaml", options, [
        f"retrain of trial {chosen.label} of study {found.name}: {metric} {value:.6g} in the search ({search_epochs} epochs)",
        f"train it again with: nanopet-tune train {folder / 'hypers.yaml'}  (seed {seed_values[0]}: the run in seed{seed_values[0]}/; "
        f"the retrain trained seeds {seed_values[0]}..{seed_values[-1]})"])
    sets = [RunSet("best", options, folder)]
    same = defaults is not None and run_key(defaults) == key
    if defaults is not None:
        out(f"defaults: {start[1]}")
        write_options(folder / "defaults" / "hypers.yaml", defaults, [f"the search's defaults, study {found.name}: {start[1]}"])
        if same:
            out(f"trial {chosen.label} has the defaults' hypers: the defaults' runs are its runs (gain 0)")
        else:
            sets.append(RunSet("defaults", defaults, folder / "defaults"))
    else:
        out("defaults: not recorded in the study and its search-space file is gone; no comparison")
    defaults_trial = next((t for t in found.studies[0].get_trials(deepcopy=False) if t.user_attrs.get("role") == "defaults"), None)
    out(expected_time_line(epochs, seeds, {"best": search_epoch_seconds(chosen.trial),
                                           **({"defaults": search_epoch_seconds(defaults_trial)} if len(sets) > 1 and defaults_trial else {})}))

    runs = [{"hypers": r.pop("set"), **r} for r in train_sets(sets, seed_values, data, out, on_epoch)]
    if same:
        runs += [{**r, "hypers": "defaults"} for r in runs if r["hypers"] == "best"]
    matched = None
    if equal_time and len(sets) > 1:
        matched = equal_time_set(runs, epochs, folder)
        if matched is None:
            out(f"equal time: the two train an epoch within {100 * EQUAL_TIME_TOLERANCE:g}% of each other's time; "
                "equal epochs are equal time")
        else:
            out(f"equal time: {matched['faster']} trains an epoch in {matched['seconds'][matched['faster']]:.3g} s, "
                f"{matched['slower']} in {matched['seconds'][matched['slower']]:.3g} s: {matched['faster']} again for "
                f"{matched['epochs']} epochs")
            run_set = RunSet(f"{matched['faster']} at equal time", with_epochs(dict(sets[0 if matched["faster"] == "best" else 1].options),
                                                                               matched["epochs"]), folder / "equal-time")
            runs += [{"hypers": r.pop("set"), **r} for r in train_sets([run_set], seed_values, data, out, on_epoch)]

    best_runs = [r for r in runs if r["hypers"] == "best"]
    chosen_run = min(best_runs, key=lambda r: r["best_val_loss"])
    model = folder / "model.ckpt"
    shutil.copyfile(Path(chosen_run["folder"]) / "model.ckpt", model)
    from nanopet.export import export_checkpoint

    exported = export_checkpoint(model, folder / "model.pt")

    per_structure = "energy" in options["architecture"]["training"]["per_structure_targets"]
    summary = summary_rows(runs, defaults is not None, matched, per_structure)
    verdict = verdict_line(summary, epochs, matched, per_structure)
    costs = {name: mean_of([r for r in runs if r["hypers"] == name], "epoch_seconds") for name in ("best", "defaults")}
    converged = {name: convergence_text([r for r in runs if r["hypers"] == name]) for name in dict.fromkeys(r["hypers"] for r in runs)}
    write_rows(folder / "metrics.csv", runs)
    write_rows(folder / "summary.csv", summary)
    (folder / "summary.yaml").write_text(yaml.safe_dump(json.loads(json.dumps({
        "verdict": verdict, "study": found.name, "trial": chosen.label, "chosen_by": metric, "search_value": {metric: value},
        "search_epochs": search_epochs, "epochs": epochs, "seeds": seed_values, "options_from": chosen.how,
        "defaults_from": start[1] if start else None, "seconds_per_epoch": costs, "equal_time": matched,
        "convergence": converged, "model": str(model), "model_seed": chosen_run["seed"], "hypers": str(hypers),
        "test_metrics": {r["metric"]: {k: v for k, v in r.items() if k != "metric"} for r in summary},
    }, default=str)), sort_keys=False))

    lines = [verdict] + summary_lines(summary, len(seed_values), defaults is not None, matched, per_structure)
    lines.append("seconds per epoch: " + ", ".join(f"{name} {s:.3g}" for name, s in costs.items() if math.isfinite(s)))
    lines.append("convergence (validation loss over the last quarter of the epochs): "
                 + "; ".join(f"{name}: {text}" for name, text in converged.items()))
    lines.append(f"model: {model} (seed {chosen_run['seed']}, lowest validation loss); "
                 f"ASE: NanoPETCalculator.from_checkpoint('{model}')")
    lines.append(f"exported for metatomic engines (ASE, LAMMPS, i-PI): {exported}")
    lines.append(f"hypers: {hypers}; per-run metrics: {folder / 'metrics.csv'}; summary: {folder / 'summary.yaml'}")
    for line in lines:
        out(line)
    return RetrainResult(found.name, chosen.label, folder, hypers, model, runs, summary, lines, matched, verdict)


# ---------------------------------------------------------------------------------------------
# Equal time


def equal_time_set(runs: list[dict], epochs: int, folder: Path) -> dict | None:
    """Which hypers train an epoch faster and for how many epochs they match the slower one's time (the ratio of
    their median seconds per epoch in the equal-epoch runs, averaged over seeds), or None within the tolerance."""
    seconds = {name: mean_of([r for r in runs if r["hypers"] == name], "epoch_seconds") for name in ("best", "defaults")}
    if not all(math.isfinite(s) and s > 0 for s in seconds.values()):
        return None
    faster, slower = sorted(seconds, key=seconds.get)
    ratio = seconds[slower] / seconds[faster]
    if ratio < 1.0 + EQUAL_TIME_TOLERANCE:
        return None
    return {"faster": faster, "slower": slower, "seconds": seconds, "epochs": int(round(epochs * ratio)),
            "folder": str(folder / "equal-time")}


# ---------------------------------------------------------------------------------------------
# Summary


def summary_rows(runs: list[dict], with_defaults: bool, matched: dict | None, per_structure: bool) -> list[dict]:
    """One row per test metric: each hypers' mean and std over seeds, the gain at equal epochs and at equal time
    (``1 - best/defaults``: positive when the tuned hypers are better)."""
    def stats(name):
        return {metric: spread(r.get(metric) for r in runs if r["hypers"] == name) for metric in metric_names(runs)}

    best, defaults = stats("best"), stats("defaults")
    longer = stats(f"{matched['faster']} at equal time") if matched else {}
    rows = []
    for metric in metric_names(runs):
        row = {"metric": metric, "unit": unit_of(metric, per_structure), "best_mean": best[metric][0], "best_std": best[metric][1]}
        if with_defaults:
            d_mean, d_std = defaults[metric]
            row.update(defaults_mean=d_mean, defaults_std=d_std, gain=gain(best[metric][0], d_mean))
            if matched:
                mean, std = longer.get(metric, (math.nan, math.nan))
                row.update(equal_time_mean=mean, equal_time_std=std,
                           equal_time_gain=gain(mean, d_mean) if matched["faster"] == "best" else gain(best[metric][0], mean))
            else:
                row["equal_time_gain"] = row["gain"]
        rows.append(row)
    return rows


def gain(tuned: float, defaults: float) -> float:
    return 1.0 - tuned / defaults if defaults and math.isfinite(defaults) and math.isfinite(tuned) else math.nan


def verdict_line(summary: list[dict], epochs: int, matched: dict | None, per_structure: bool) -> str:
    """The comparison in one line: the RMSE gain on every target at equal epochs and at equal time, and, plainly,
    the targets on which the tuned model is worse."""
    rmse = [r for r in summary if r["metric"].endswith("_rmse") and "gain" in r]
    if not rmse:
        return "no comparison with the defaults"

    def gains(key):
        return ", ".join(f"{describe_metric(r['metric'], per_structure).rsplit(' ', 1)[0]} {100 * r[key]:+.1f}%" for r in rmse)

    worse = sorted({describe_metric(r["metric"], per_structure).rsplit(" ", 1)[0] for r in rmse
                    for key in ("gain", "equal_time_gain") if math.isfinite(r.get(key, math.nan)) and r[key] < 0})
    where = (f"at equal time ({matched['faster']} trained {matched['epochs']} epochs)" if matched else "at equal time (equal epochs)")
    text = f"tuned vs defaults, test RMSE: at {epochs} epochs {gains('gain')}; {where} {gains('equal_time_gain')}"
    return text + (f"; the tuned model is WORSE on {', '.join(worse)}" if worse else "; better on every target")


def convergence_text(rows: list[dict]) -> str:
    drops = [r["last_quarter_drop"] for r in rows if r.get("last_quarter_drop") is not None and math.isfinite(r["last_quarter_drop"])]
    if not drops:
        return "too few epochs to tell"
    converged = sum(bool(r.get("converged")) for r in rows)
    mean = sum(drops) / len(drops)
    state = "converged" if converged == len(rows) else f"{len(rows) - converged} of {len(rows)} runs still improving (more epochs would help)"
    return f"fell {100 * mean:.1f}% ({state})"


def summary_lines(summary: list[dict], n_seeds: int, with_defaults: bool, matched: dict | None, per_structure: bool = False) -> list[str]:
    head = f"test set, {n_seeds} seed{'s' if n_seeds > 1 else ''} (mean ± std)"
    longer = f"{matched['faster']} x{matched['epochs']}ep" if matched else None
    lines = [f"{head:<34} {'best':>22}" + (f" {'defaults':>22} {'gain':>8}" if with_defaults else "")
             + (f" {longer:>22} {'equal-time gain':>15}" if longer else "")]
    for row in summary:
        metric = row["metric"]
        unit = unit_of(metric, per_structure, display=True)
        text = f"{describe_metric(metric, per_structure) + f' ({unit})':<34} "
        text += f"{shown(row['best_mean'], metric) + ' ± ' + shown(row['best_std'], metric):>22}"
        if with_defaults:
            text += f" {shown(row['defaults_mean'], metric) + ' ± ' + shown(row['defaults_std'], metric):>22}"
            text += f" {100 * row['gain']:>7.1f}%" if math.isfinite(row["gain"]) else f" {'n/a':>8}"
        if longer:
            text += f" {shown(row['equal_time_mean'], metric) + ' ± ' + shown(row['equal_time_std'], metric):>22}"
            text += f" {100 * row['equal_time_gain']:>14.1f}%" if math.isfinite(row["equal_time_gain"]) else f" {'n/a':>15}"
        lines.append(text)
    if with_defaults:
        gains = [f"{describe_metric(r['metric'], per_structure)} {100 * r['gain']:+.1f}%" for r in summary
                 if math.isfinite(r.get("gain", math.nan))]
        if gains:
            lines.append("gain over the defaults (1 - best/defaults; positive: the tuned hypers are better): " + ", ".join(gains))
    return lines
