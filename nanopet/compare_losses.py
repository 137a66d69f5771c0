"""Compare loss settings: ``nanopet-tune compare-losses <study|options.yaml> [--types mse mae huber] [--seeds 3]``.

The same hypers (a study's best trial, or an options file) are trained once per loss variant and
seed, with the same seeds and epochs, and compared on the held-out test set: metrics per variant and
target (mean and sample std over seeds), learning curves, and which variant wins each metric.

Variants are the product of three axes, each a list; an axis not given keeps the hypers' value:

- ``types``: mse | mae | huber (default ``[mse, mae, huber]`` when no axis is given);
- ``reductions``: mean | sum;
- ``weights``: loss-weight sets, each merged over the hypers' weights (``{forces: 10}`` changes
  only the force weight; a term not set anywhere weighs 1.0).

They come from the command line (``--types``, ``--reductions``, ``--weights forces=10,energy=0.1``)
or from a ``compare_losses:`` section of the options file (keys ``types``, ``reductions``,
``weights``, ``deltas``, ``seeds``, ``epochs``; the section is removed before training, so keep it
out of files meant for ``nanopet-tune train``). The command line wins per axis.

Huber deltas: those of the hypers (``loss.deltas``), then ``compare_losses.deltas``, then
``--deltas``; a term still without one gets ``delta = 0.1 x RMS`` of that loss term's target on
the training set, as the loss sees it: energy per atom after removing the composition baseline,
force components, virial per atom (stress x volume / atoms). With a tenth of the signal's typical
size, the errors of a trained model (a few per cent of the signal) fall in Huber's quadratic
(MSE-like) part, while the large errors of outliers and of early training count linearly.

Models go to ``studies/<study>/losses/<variant>/seed<s>/`` (an options file: ``runs/<stem>/losses/``),
resumed from their checkpoints when interrupted; the report to ``reports/<name>/losses.html`` with
``losses.csv`` (one row per variant and seed) and ``losses_summary.csv`` (per variant and metric).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from nanopet.errors import InputError
from nanopet.options import loss_type, read_yaml, resolve_options
from nanopet.schema import CompareLosses, validate
from nanopet.schema.hypers import LOSS_TYPES, REDUCTIONS, Deltas, Weights
from nanopet.schema.options import axis
from nanopet.data.splits import DATASET_KEYS, absolute_datasets
from nanopet.runs import (RunSet, describe_metric, metric_names, read_history, shared_data, summarize, train_sets, unit_of,
                          write_rows)
from nanopet.report.losses import plus_minus, short_weights, write_losses_page
from nanopet.tune.storage import choose_trial, open_study

HUBER_FRACTION = 0.1  # delta = HUBER_FRACTION x RMS of the term's target on the training set
SECTION = "compare_losses"  # its keys, types and docs: nanopet/schema/options.py CompareLosses


@dataclass
class Variant:
    label: str  # what tables and plots call it: "huber", "mse, sum", "mae, w(forces=10)"
    slug: str  # its folder name
    type: str
    reduction: str
    weights: dict  # the full weights of the variant (base merged with the axis value)
    deltas: dict  # huber only


@dataclass
class LossComparison:
    name: str
    page: Path
    csv: Path  # one row per variant and seed
    summary_csv: Path  # one row per variant and metric
    runs: list = field(default_factory=list)
    summary: list = field(default_factory=list)
    winners: list = field(default_factory=list)  # one row per metric
    deltas: dict = field(default_factory=dict)  # term -> (delta, "given" | "rule")
    lines: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Huber deltas from the data


def target_scales(data, options: dict) -> dict:
    """RMS of each loss term's target on the training set, as the loss sees it (see the module docstring)."""
    from nanopet.composition import composition_offsets, composition_weights

    training = options["architecture"]["training"]
    train = data.train
    types = data.atomic_types
    composition = composition_weights(training, train, types)
    per_structure = "energy" in training["per_structure_targets"]
    norm = np.ones(len(train)) if per_structure else train.n_atoms.astype(np.float64)
    residual = (train.energies - composition_offsets(composition, types, train)) / norm
    scales = {"energy": float(np.sqrt(np.mean(residual**2)))}
    if train.has_forces:
        forces = train.atom_forces().ravel()
        scales["forces"] = float(np.sqrt(np.mean(forces**2)))
    if train.has_stress:
        mask = train.stress_mask
        virial = train.stresses()[mask] * train.volumes()[mask, None, None] / norm[mask, None, None]
        scales["virial"] = float(np.sqrt(np.mean(np.square(virial))))
    return scales


def huber_deltas(given: dict, data, options: dict) -> dict:
    """term -> (delta, source): the given deltas, and the documented rule for the terms without one."""
    scales = target_scales(data, options)
    out = {}
    for term, scale in scales.items():
        if term in given:
            out[term] = (float(given[term]), "given")
        else:
            out[term] = (HUBER_FRACTION * scale if scale > 0 else 1e-3, f"rule: {HUBER_FRACTION:g} x RMS {scale:.4g}")
    return out


# ---------------------------------------------------------------------------------------------
# Variants


def parse_terms(text: str, flag: str = "--weights") -> dict:
    """``forces=10,energy=0.1`` -> {forces: 10.0, energy: 0.1}: loss weights (``--weights``) or Huber deltas
    (``--deltas``), checked as such."""
    terms = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        term, sep, value = part.partition("=")
        try:
            terms[term.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"{flag} {text}: expected term=value pairs like forces=10,energy=0.1")
    if not terms:
        raise InputError(f"{flag} {text!r}: empty; give term=value pairs like forces=10")
    validate(Weights if flag == "--weights" else Deltas, terms, flag)
    return terms


def parse_weights(text: str) -> dict:
    return parse_terms(text, "--weights")


def _axis(given, from_section: list | None, kind, flag: str) -> list | None:
    """An axis of variants: the values ``given`` (on the command line as ``flag``), else the section's, once each."""
    if given is not None:
        from_section = [validate(kind, value, flag) for value in ([given] if isinstance(given, str) else given)]
    return None if from_section is None else list(dict.fromkeys(from_section))


def _weights_axis(given, from_section: list | None) -> list | None:
    """The weight sets: those ``given`` (mappings, or ``forces=10`` text), else the section's; each holds the terms set."""
    if given is not None:
        given = [parse_weights(value) if isinstance(value, str) else value for value in ([given] if isinstance(given, dict) else given)]
        from_section = validate(axis(Weights), given, "--weights")
    if from_section is None:
        return None
    out = []
    for weights in from_section:
        value = {term: float(weight) for term, weight in weights.model_dump(exclude_unset=True).items()}
        if value not in out:
            out.append(value)
    return out


def build_variants(base_loss: dict, types=None, reductions=None, weights=None, deltas: dict | None = None) -> list[Variant]:
    """The product of the axes (an axis not given keeps the base value; no axis at all: the three types)."""
    base_type, base_deltas = loss_type(base_loss)
    if types is None and reductions is None and weights is None:
        types = list(LOSS_TYPES)
    axes = {"type": types or [base_type], "reduction": reductions or [base_loss["reduction"]], "weights": weights or [{}]}
    varying = [name for name, values in axes.items() if len(values) > 1] or ["type"]
    variants = []
    for kind, reduction, extra in itertools.product(axes["type"], axes["reduction"], axes["weights"]):
        parts = {"type": kind, "reduction": reduction, "weights": f"w({short_weights(extra)})" if extra else "w(base)"}
        label = ", ".join(parts[name] for name in varying)
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", "-".join(parts[name] for name in varying)).strip("_")
        variants.append(Variant(label, slug, kind, reduction, {**base_loss["weights"], **extra},
                                dict(deltas or base_deltas) if kind == "huber" else {}))
    return variants


def variant_columns(variant: Variant, deltas: bool = True) -> dict:
    """A variant's columns in ``losses.csv`` (and, without the deltas, in ``losses_summary.csv``)."""
    columns = {"type": variant.type, "reduction": variant.reduction, "weights": json.dumps(variant.weights)}
    if deltas:
        columns["deltas"] = json.dumps(variant.deltas) if variant.deltas else ""
    return columns


def variant_options(options: dict, variant: Variant) -> dict:
    options = copy.deepcopy(options)
    loss = options["architecture"]["training"]["loss"]
    _, base_deltas = loss_type(loss)
    loss.update(type=variant.type, reduction=variant.reduction, weights=dict(variant.weights),
                deltas=dict(variant.deltas) if variant.type == "huber" else base_deltas)
    return resolve_options(options)


# ---------------------------------------------------------------------------------------------
# The command


def read_source(source: str, trial=None, directory: str | Path = "studies", storage: str | None = None):
    """(name, options, compare_losses section, default runs folder, description) of a study or an options file."""
    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml"):
        raw = read_yaml(path)
        section = validate(CompareLosses, raw.pop(SECTION, None) or {}, f"{path}: {SECTION}")
        if trial is not None:
            raise InputError("--trial: only for a study; an options file is one set of hypers")
        options = resolve_options(absolute_datasets(raw, path.parent))
        return path.stem, options, section, Path("runs") / path.stem / "losses", f"options file {path}"
    found = open_study(source, directory, storage)
    chosen = choose_trial(found, trial)
    return found.name, chosen.options, CompareLosses(), found.folder / "losses", f"study {found.name}, trial {chosen.label} ({chosen.how})"


def compare_losses(source: str, types=None, reductions=None, weights=None, deltas: dict | None = None, seeds: int | None = None,
                   epochs: int | None = None, device: str | None = None, trial=None, directory: str | Path = "studies",
                   storage: str | None = None, reports: str | Path | None = None, runs: str | Path | None = None,
                   test_set: float | None = None, out: Callable[[str], None] = print) -> LossComparison:
    """Train the hypers of ``source`` with every loss variant and seed; write the report (module docstring)."""
    name, options, section, runs_default, described = read_source(source, trial, directory, storage)
    types = _axis(types, section.types, Literal[LOSS_TYPES], "--types")
    reductions = _axis(reductions, section.reductions, Literal[REDUCTIONS], "--reductions")
    weights = _weights_axis(weights, section.weights)
    seeds = seeds if seeds is not None else section.seeds
    epochs = epochs if epochs is not None else section.epochs
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds: must be at least 1, got {seeds!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise InputError(f"--epochs: must be at least 1, got {epochs!r}")
    if test_set is not None and not 0 < test_set < 1:
        raise InputError(f"--test-set: must be a fraction in (0, 1), got {test_set!r}")
    options = copy.deepcopy(options)
    if epochs is not None:
        options["architecture"]["training"]["num_epochs"] = epochs
    if device:
        options["device"] = device
    if test_set is not None:
        options["test_set"] = test_set
    options = resolve_options(options)
    epochs = options["architecture"]["training"]["num_epochs"]

    data = shared_data([options])
    base_loss = options["architecture"]["training"]["loss"]
    variants = build_variants(base_loss, types, reductions, weights)
    validate(Deltas, deltas or {}, "--deltas")
    given = {**loss_type(base_loss)[1], **(section.deltas.model_dump(exclude_none=True) if section.deltas else {}), **(deltas or {})}
    chosen_deltas = huber_deltas(given, data, options) if any(v.type == "huber" for v in variants) else {}
    for variant in variants:
        if variant.type == "huber":
            variant.deltas = {term: delta for term, (delta, _) in chosen_deltas.items()}

    base_seed = options["seed"]
    seed_values = [base_seed + k for k in range(seeds)]
    runs_dir = Path(runs) if runs is not None else runs_default
    out(f"compare-losses {name}: {len(variants)} variant(s) x {seeds} seed(s), {epochs} epochs; hypers from {described}")
    if chosen_deltas:
        out("huber deltas: " + ", ".join(f"{t} {d:.4g} ({how})" for t, (d, how) in chosen_deltas.items()))
    sets = [RunSet(variant.label, variant_options(options, variant), runs_dir / variant.slug) for variant in variants]
    by_label = {variant.label: variant for variant in variants}
    rows = [{"variant": row["variant"], **variant_columns(by_label[row["variant"]]), **row}
            for row in train_sets(sets, seed_values, data, out, key="variant")]

    per_structure = "energy" in options["architecture"]["training"]["per_structure_targets"]
    metrics = metric_names(rows)
    summary = []
    for label, stats in summarize(rows, key="variant").items():
        variant = by_label[label]
        for metric in metrics:
            mean, std = stats[metric]
            summary.append({"variant": label, **variant_columns(variant, deltas=False), "metric": metric,
                            "unit": unit_of(metric, per_structure), "mean": mean, "std": std,
                            "n": sum(r["variant"] == label for r in rows)})
    winners = pick_winners(summary, metrics)
    for row in summary:
        row["wins"] = any(w["metric"] == row["metric"] and w["winner"] == row["variant"] for w in winners)

    folder = Path(reports if reports is not None else Path(directory).parent / "reports") / name  # beside studies/
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = write_rows(folder / "losses.csv", rows)
    summary_path = write_rows(folder / "losses_summary.csv", summary)
    curves = {v.label: [read_history(runs_dir / v.slug / f"seed{s}" / "metrics.csv") for s in seed_values] for v in variants}
    header = [f"hypers: {described}", f"{len(variants)} loss variant(s) x seeds {', '.join(map(str, seed_values))}, "
              f"{epochs} epochs each; same data split and seeds for every variant",
              f"data: {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test structures; "
              "metrics on the test set with each run's best-validation weights"]
    if chosen_deltas:
        header.append("huber deltas: " + ", ".join(f"{t} {d:.4g} ({how})" for t, (d, how) in chosen_deltas.items()))
    page = write_losses_page(folder / "losses.html", name, header, variants, summary, winners, curves, metrics, per_structure)

    lines = [f"{'test metric':<32} {'winner':<20} {'mean ± std':<22} runner-up"]
    for w in winners:
        metric = f"{describe_metric(w['metric'], per_structure)} ({unit_of(w['metric'], per_structure)})"
        text = f"{metric:<32} {w['winner']:<20} {plus_minus(w['mean'], w['std']):<22}"
        if w["runner_up"] is not None:
            text += f" {w['runner_up']} {plus_minus(w['runner_up_mean'], w['runner_up_std'])} ({w['verdict']})"
        lines.append(text.rstrip())
    lines.append(f"report: {page}; runs: {csv_path}; summary: {summary_path}")
    for line in lines:
        out(line)
    return LossComparison(name, page, csv_path, summary_path, rows, summary, winners, chosen_deltas, lines)


def pick_winners(summary: list[dict], metrics: list[str]) -> list[dict]:
    """Per metric: the variant with the lowest mean, the runner-up, and whether the gap exceeds the spread
    (``clear``: runner-up mean - winner mean > sum of their standard deviations)."""
    winners = []
    for metric in metrics:
        ranked = sorted((r for r in summary if r["metric"] == metric and math.isfinite(r["mean"])), key=lambda r: r["mean"])
        if not ranked:
            continue
        first = ranked[0]
        second = ranked[1] if len(ranked) > 1 else None
        row = {"metric": metric, "winner": first["variant"], "mean": first["mean"], "std": first["std"],
               "runner_up": None, "runner_up_mean": math.nan, "runner_up_std": math.nan, "verdict": "only variant"}
        if second is not None:
            clear = second["mean"] - first["mean"] > first["std"] + second["std"]
            row.update(runner_up=second["variant"], runner_up_mean=second["mean"], runner_up_std=second["std"],
                       verdict="clear" if clear else "within spread")
        winners.append(row)
    return winners


# ---------------------------------------------------------------------------------------------
# A loss search that starts from a study's best


def losses_space(study: str, template: str | Path = "search_spaces/losses.yaml", trial=None, directory: str | Path = "studies",
                 storage: str | None = None, name: str | None = None) -> dict:
    """A search-space mapping that tunes the loss settings of ``template`` (its study, objective, budget,
    strategy and parameters sections) with every other hyperparameter, the dataset and the split fixed
    at ``study``'s best trial. Trials train the study's search epochs. Write it and run it with
    ``nanopet-tune <file>``; the search's first trial is the best trial's own loss (moved into range)."""
    from nanopet.tune.space import SECTIONS, load_search_space

    template_raw = read_yaml(Path(template))
    found = open_study(study, directory, storage)
    chosen = choose_trial(found, trial)
    options = copy.deepcopy(chosen.options)
    loss = options["architecture"]["training"]["loss"]
    template_loss = ((template_raw.get("architecture") or {}).get("training") or {}).get("loss") or {}
    if not loss_type(loss)[1] and template_loss.get("deltas"):
        loss["deltas"] = dict(template_loss["deltas"])  # used when a trial picks huber
    epochs = options["architecture"]["training"]["num_epochs"]
    raw = {k: options[k] for k in ("seed", "device", "base_precision") + DATASET_KEYS if k in options}
    raw["architecture"] = options["architecture"]
    for section in SECTIONS:
        if section in template_raw:
            raw[section] = copy.deepcopy(template_raw[section])
    raw.setdefault("study", {})
    raw["study"] = {**(raw["study"] or {}), "name": name or f"{found.name}-losses"}
    raw["budget"] = {**(raw.get("budget") or {}), "epochs": epochs}
    metric = found.studies[0].user_attrs.get("metric")
    if metric and metric != "val_loss":
        raw["objective"] = {**(raw.get("objective") or {}), "metric": metric}
    load_search_space(raw, check_data=False)  # validated now, not when the search starts
    return raw


def write_losses_space(path: str | Path, raw: dict, study: str, trial_label: str | None = None) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Loss search with every other hyperparameter fixed at the best trial of study {study}"
              + (f" ({trial_label})" if trial_label else "") + ".\n"
              f"# Run it with: nanopet-tune {path}\n")
    path.write_text(header + yaml.safe_dump(json.loads(json.dumps(raw)), sort_keys=False))
    return path
