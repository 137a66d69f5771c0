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
import html
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nanopet.errors import InputError, did_you_mean
from nanopet.options import LOSS_TERMS, loss_type, read_yaml, resolve_options
from nanopet.data.splits import DATASET_KEYS, absolute_datasets
from nanopet.retrain import (describe_metric, metric_names, read_history, shared_data, spread, target_of, train_run, unit_of, with_seed,
                             write_rows)
from nanopet.tune.storage import choose_trial, open_study

HUBER_FRACTION = 0.1  # delta = HUBER_FRACTION x RMS of the term's target on the training set
LOSS_TYPES = ("mse", "mae", "huber")
REDUCTIONS = ("mean", "sum")
SECTION = "compare_losses"
SECTION_KEYS = ("types", "reductions", "weights", "deltas", "seeds", "epochs")


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


def parse_weights(text: str) -> dict:
    """``forces=10,energy=0.1`` -> {forces: 10.0, energy: 0.1}."""
    weights = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        term, sep, value = part.partition("=")
        term = term.strip()
        if not sep or term not in LOSS_TERMS:
            raise InputError(f"--weights {text}: expected term=value pairs like forces=10,energy=0.1; "
                             f"{term!r} is not a loss term{did_you_mean(term, LOSS_TERMS)} (terms: {', '.join(LOSS_TERMS)})")
        try:
            weights[term] = float(value)
        except ValueError:
            raise InputError(f"--weights {text}: {term}={value!r} is not a number") from None
    if not weights:
        raise InputError(f"--weights {text!r}: empty; give term=value pairs like forces=10")
    return weights


def _axis(values, allowed, where: str) -> list:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise InputError(f"{where}: expected a list, e.g. [{', '.join(allowed)}]")
    out = []
    for value in values:
        if value not in allowed:
            raise InputError(f"{where}: unknown value {value!r}{did_you_mean(value, allowed)}; known: {', '.join(allowed)}")
        if value not in out:
            out.append(value)
    return out


def _weights_axis(values, where: str) -> list | None:
    if values is None:
        return None
    if isinstance(values, dict):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise InputError(f"{where}: expected a list of weight sets, e.g. [{{forces: 1}}, {{forces: 10}}]")
    out = []
    for k, value in enumerate(values):
        value = parse_weights(value) if isinstance(value, str) else value
        if not isinstance(value, dict) or not value:
            raise InputError(f"{where}[{k}]: expected a mapping of loss term to weight, e.g. {{forces: 10}}")
        for term, weight in value.items():
            if term not in LOSS_TERMS:
                raise InputError(f"{where}[{k}].{term}: unknown loss term{did_you_mean(term, LOSS_TERMS)}; known: {', '.join(LOSS_TERMS)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise InputError(f"{where}[{k}].{term}: must be a non-negative number, got {weight!r}")
        value = {t: float(value[t]) for t in LOSS_TERMS if t in value}
        if value not in out:
            out.append(value)
    return out


def _short(weights: dict) -> str:
    return ",".join(f"{t}={w:g}" for t, w in weights.items())


def build_variants(base_loss: dict, types=None, reductions=None, weights=None, deltas: dict | None = None) -> list[Variant]:
    """The product of the axes (an axis not given keeps the base value; no axis at all: the three types)."""
    base_type, base_deltas = loss_type(base_loss)
    if types is None and reductions is None and weights is None:
        types = list(LOSS_TYPES)
    axes = {"type": types or [base_type], "reduction": reductions or [base_loss["reduction"]], "weights": weights or [{}]}
    varying = [name for name, values in axes.items() if len(values) > 1] or ["type"]
    variants = []
    for kind, reduction, extra in itertools.product(axes["type"], axes["reduction"], axes["weights"]):
        parts = {"type": kind, "reduction": reduction, "weights": f"w({_short(extra)})" if extra else "w(base)"}
        label = ", ".join(parts[name] for name in varying)
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", "-".join(parts[name] for name in varying)).strip("_")
        variants.append(Variant(label, slug, kind, reduction, {**base_loss["weights"], **extra},
                                dict(deltas or base_deltas) if kind == "huber" else {}))
    return variants


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
        section = raw.pop(SECTION, None) or {}
        if not isinstance(section, dict):
            raise InputError(f"{path}: {SECTION}: expected a mapping with keys {', '.join(SECTION_KEYS)}")
        for key in section:
            if key not in SECTION_KEYS:
                raise InputError(f"{path}: {SECTION}.{key}: unknown key{did_you_mean(key, SECTION_KEYS)}; known: {', '.join(SECTION_KEYS)}")
        if trial is not None:
            raise InputError("--trial: only for a study; an options file is one set of hypers")
        options = resolve_options(absolute_datasets(raw, path.parent))
        return path.stem, options, section, Path("runs") / path.stem / "losses", f"options file {path}"
    found = open_study(source, directory, storage)
    chosen = choose_trial(found, trial)
    return found.name, chosen.options, {}, found.folder / "losses", f"study {found.name}, trial {chosen.label} ({chosen.how})"


def compare_losses(source: str, types=None, reductions=None, weights=None, deltas: dict | None = None, seeds: int | None = None,
                   epochs: int | None = None, device: str | None = None, trial=None, directory: str | Path = "studies",
                   storage: str | None = None, reports: str | Path | None = None, runs: str | Path | None = None,
                   test_set: float | None = None, out: Callable[[str], None] = print) -> LossComparison:
    """Train the hypers of ``source`` with every loss variant and seed; write the report (module docstring)."""
    name, options, section, runs_default, described = read_source(source, trial, directory, storage)
    types = _axis(types if types is not None else section.get("types"), LOSS_TYPES, "--types" if types else f"{SECTION}.types")
    reductions = _axis(reductions if reductions is not None else section.get("reductions"), REDUCTIONS,
                       "--reductions" if reductions else f"{SECTION}.reductions")
    weights = _weights_axis(weights if weights is not None else section.get("weights"),
                            "--weights" if weights else f"{SECTION}.weights")
    seeds = seeds if seeds is not None else section.get("seeds", 3)
    epochs = epochs if epochs is not None else section.get("epochs")
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
    if not isinstance(section.get("deltas") or {}, dict):
        raise InputError(f"{SECTION}.deltas: expected a mapping of loss term to delta, e.g. {{energy: 0.01, forces: 0.1}}")
    given = {**loss_type(base_loss)[1], **(section.get("deltas") or {}), **(deltas or {})}
    for term, value in given.items():
        if term not in LOSS_TERMS or isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(f"deltas.{term}: expected a loss term ({', '.join(LOSS_TERMS)}) with a positive delta, got {value!r}")
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
    rows = []
    for variant in variants:
        for seed in seed_values:
            run_options = with_seed(variant_options(options, variant), seed)
            row = train_run(run_options, runs_dir / variant.slug / f"seed{seed}", data, out, f"{variant.label} seed {seed}")
            rows.append({"variant": variant.label, "type": variant.type, "reduction": variant.reduction,
                         "weights": json.dumps(variant.weights), "deltas": json.dumps(variant.deltas) if variant.deltas else "",
                         **row})

    per_structure = "energy" in options["architecture"]["training"]["per_structure_targets"]
    metrics = metric_names(rows)
    summary = []
    for variant in variants:
        own = [r for r in rows if r["variant"] == variant.label]
        for metric in metrics:
            mean, std = spread(r.get(metric) for r in own)
            summary.append({"variant": variant.label, "type": variant.type, "reduction": variant.reduction,
                            "weights": json.dumps(variant.weights), "metric": metric, "unit": unit_of(metric, per_structure),
                            "mean": mean, "std": std, "n": len(own)})
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
        text = f"{metric:<32} {w['winner']:<20} {_pm(w['mean'], w['std']):<22}"
        if w["runner_up"] is not None:
            text += f" {w['runner_up']} {_pm(w['runner_up_mean'], w['runner_up_std'])} ({w['verdict']})"
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
# The page


def _table(head: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    def cell(tag, k, value):
        cls = ' class="text"' if k < text_columns else ""
        return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", k, h) for k, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell("td", k, v) for k, v in enumerate(row)) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.3g}" if math.isfinite(mean) else "n/a"


def write_losses_page(path: Path, name: str, header: list[str], variants: list[Variant], summary: list[dict],
                      winners: list[dict], curves: dict, metrics: list[str], per_structure: bool) -> Path:
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from nanopet.report.page import write_page

    colors = {v.label: qualitative.Plotly[k % len(qualitative.Plotly)] for k, v in enumerate(variants)}
    lookup = {(r["variant"], r["metric"]): r for r in summary}
    sections = []

    win_rows = [[describe_metric(w["metric"], per_structure), unit_of(w["metric"], per_structure), w["winner"], _pm(w["mean"], w["std"]),
                 w["runner_up"] or "", _pm(w["runner_up_mean"], w["runner_up_std"]) if w["runner_up"] else "", w["verdict"]]
                for w in winners]
    sections.append(("Winners: the variant with the lowest test mean per metric; 'clear' when the gap to the runner-up "
                     "exceeds the sum of their standard deviations over seeds, else the difference is within the seed spread",
                     _table(["metric", "unit", "winner", "mean ± std", "runner-up", "mean ± std", "verdict"], win_rows, 3)))

    head = ["variant"] + [f"{describe_metric(m, per_structure)} ({unit_of(m, per_structure)})" for m in metrics]
    table_rows = []
    for v in variants:
        cells = [v.label]
        for m in metrics:
            r = lookup[(v.label, m)]
            cells.append(_pm(r["mean"], r["std"]) + (" *" if r["wins"] else ""))
        table_rows.append(cells)
    sections.append(("Test metrics: mean ± sample std over seeds of each variant and target; * marks the lowest mean",
                     _table(head, table_rows)))

    settings = [[v.label, v.type, v.reduction, _short(v.weights) or "base (1.0 each)",
                 ", ".join(f"{t}={d:.4g}" for t, d in v.deltas.items())] for v in variants]
    sections.append(("Variants: the loss settings each variant trains with (everything else identical)",
                     _table(["variant", "type", "reduction", "weights", "huber deltas"], settings, 5)))

    rmse = [m for m in metrics if m.endswith("_rmse")] or metrics
    bars = make_subplots(rows=1, cols=len(rmse), subplot_titles=[f"{target_of(m)} ({unit_of(m, per_structure)})" for m in rmse])
    for k, metric in enumerate(rmse, start=1):
        for v in variants:
            r = lookup[(v.label, metric)]
            bars.add_trace(go.Bar(x=[v.label], y=[r["mean"]], error_y={"type": "data", "array": [r["std"]]},
                                  marker_color=colors[v.label], name=v.label, legendgroup=v.label, showlegend=k == 1), row=1, col=k)
    bars.update_layout(height=380, margin={"t": 40}, barmode="group")
    sections.append(("Test RMSE: bars are the mean over seeds, whiskers one standard deviation", bars))

    targets = [t for t in ("energy", "forces", "stress", "virial")
               if any(f"val_{t}_rmse" in row for runs in curves.values() for history in runs for row in history)]
    if targets:
        columns = min(2, len(targets))
        rows = math.ceil(len(targets) / columns)
        figure = make_subplots(rows=rows, cols=columns, subplot_titles=[f"validation {t} RMSE ({unit_of(f'val_{t}_rmse', per_structure)})"
                                                                       for t in targets])
        for k, target in enumerate(targets):
            where = {"row": k // columns + 1, "col": k % columns + 1}
            for v in variants:
                epochs, mean, low, high = _curve(curves[v.label], f"val_{target}_rmse")
                if not epochs:
                    continue
                color = colors[v.label]
                figure.add_trace(go.Scatter(x=epochs + epochs[::-1], y=list(high) + list(low[::-1]), fill="toself",
                                            fillcolor=color, opacity=0.15, line={"width": 0}, hoverinfo="skip",
                                            showlegend=False, legendgroup=v.label), **where)
                figure.add_trace(go.Scatter(x=epochs, y=list(mean), mode="lines", line={"color": color}, name=v.label,
                                            legendgroup=v.label, showlegend=k == 0), **where)
            figure.update_yaxes(type="log", **where)
            figure.update_xaxes(title_text="epoch", **where)
        figure.update_layout(height=330 * rows + 60, margin={"t": 40})
        sections.append(("Learning curves: validation RMSE per epoch, mean over seeds, the band spans the seeds' lowest to "
                         "highest (the validation loss is not compared: its meaning changes with the loss)", figure))
    return write_page(path, f"Loss comparison: {name}", header, sections)


def _curve(histories: list[list[dict]], key: str) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, and per epoch the mean, lowest and highest value over seeds."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for row in history:
            value = row.get(key)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(int(row["epoch"]), []).append(value)
    epochs = sorted(by_epoch)
    mean = np.array([np.mean(by_epoch[e]) for e in epochs])
    low = np.array([min(by_epoch[e]) for e in epochs])
    high = np.array([max(by_epoch[e]) for e in epochs])
    return epochs, mean, low, high


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
