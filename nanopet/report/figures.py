"""The figures of a study report, one function each: ``(caption, plotly Figure or HTML)``.

A caption reads ``"Heading: what to read from it"``. When a figure cannot be drawn (no completed
trial yet, one parameter only, ...) the function returns an HTML note saying what is missing, so a
report is always written.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution
from plotly.subplots import make_subplots

from nanopet.report.collect import StudyData
from nanopet.report.importance import (
    DOCUMENTED_ORDER,
    FEW_TRIALS,
    Importances,
)
from nanopet.tune.params import decode
from nanopet.tune.text import share_text

STATE_COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "fail": "#d62728", "running": "#2ca02c", "waiting": "#7f7f7f"}
STATE_NAMES = {"complete": "complete", "pruned": "pruned", "fail": "failed", "running": "running", "waiting": "waiting"}
STAGE_COLORS = ("#1f77b4", "#9467bd", "#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e")
LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 70, "r": 30, "t": 30, "b": 60},
          "legend": {"orientation": "h", "y": -0.18}}
TOP = 10


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def objective_label(data: StudyData) -> str:
    objective = data.objective or {}
    if objective.get("cost") == "penalty":
        return f"{data.metric} × cost^{objective.get('cost_weight', 0.1):g}"
    return data.metric


def _figure(**layout) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(**{**LAYOUT, **layout})
    return figure


def _log_scale(values) -> bool:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def _fmt(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _whole(count: int) -> dict:
    """Axis settings for counts (trials, epochs): integer ticks only."""
    step = max(1, math.ceil(count / 10))
    return {"tick0": 1 if step == 1 else 0, "dtick": step} if count <= 100 else {"tickformat": "d"}


def _log_ticks(low: float, high: float) -> tuple[list, list]:
    """Ticks for an axis in log10 units: 1, 2, 5 per decade within [low, high]."""
    values = [m * 10.0**e for e in range(math.floor(low) - 1, math.ceil(high) + 2) for m in (1, 2, 5)]
    inside = [v for v in values if low - 1e-9 <= math.log10(v) <= high + 1e-9]
    if len(inside) < 2:
        inside = [10**low, 10**high] if high > low else [10**low]
    return [math.log10(v) for v in inside], [f"{v:.3g}" for v in inside]


def _nothing_completed(data: StudyData) -> str:
    if data.trials.empty:
        return "no trials recorded yet"
    counts = data.trials["state"].value_counts()
    parts = [f"{counts[s]} {STATE_NAMES[s]}" for s in STATE_NAMES if s in counts]
    return f"no completed trial yet ({', '.join(parts)})"


def _started(data: StudyData) -> pd.DataFrame:
    """Trials that ran (not waiting, not carried in from an earlier stage), in the order they started."""
    trials = data.trials[(data.trials["state"] != "waiting") & (data.trials["role"] != "carried")]
    return trials.sort_values("started", kind="stable")


def _stage_of(data: StudyData) -> dict:
    return {name: stage["stage"] for stage in data.stages for name in stage["parameters"]}


# ---------------------------------------------------------------------------------------------
# Parameter axes: numbers (log where the distribution is), categories as labels


def _category(value) -> str:
    """A categorical value as its label (the same for a stored choice and a table cell: 64, 64.0, "json:{}")."""
    value = decode(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _is_categorical(data: StudyData, name: str) -> bool:
    return isinstance(data.distributions.get(name), CategoricalDistribution)


def _is_log(data: StudyData, name: str) -> bool:
    return bool(getattr(data.distributions.get(name), "log", False))


def _choices(data: StudyData, name: str) -> list[str]:
    return [_category(c) for c in data.distributions[name].choices]


def _coordinate(data: StudyData, name: str, values: pd.Series) -> np.ndarray:
    """Values as numbers for interpolation: log10 for log parameters, choice index for categoricals."""
    if _is_categorical(data, name):
        choices = _choices(data, name)
        return np.array([choices.index(_category(v)) if _category(v) in choices else np.nan for v in values], dtype=float)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return np.log10(numbers) if _is_log(data, name) else numbers


def _axis(data: StudyData, name: str) -> dict:
    if _is_categorical(data, name):
        return {"title": name, "type": "category", "categoryorder": "array", "categoryarray": _choices(data, name)}
    return {"title": name + (" (log scale)" if _is_log(data, name) else ""), "type": "log" if _is_log(data, name) else "linear"}


def _plot_values(data: StudyData, name: str, values: pd.Series) -> list:
    return [_category(v) for v in values] if _is_categorical(data, name) else list(values)


# ---------------------------------------------------------------------------------------------
# Figures


def history(data: StudyData):
    caption = (f"Optimization history: Each completed trial's {objective_label(data)} in the order trials started, "
               "with the best so far as a line; a flat line means the search stopped finding better settings.")
    trials = _started(data)
    done = trials[(trials["state"] == "complete") & trials["value"].notna()]
    if done.empty:
        return caption, note(f"Not drawn: {_nothing_completed(data)}.")
    order = {trial: k + 1 for k, trial in enumerate(trials["trial"])}
    figure = _figure(xaxis={"title": "trial (in the order started)", **_whole(len(order))}, yaxis={"title": objective_label(data)})
    for k, stage in enumerate(data.stages):
        part = done[done["stage"] == stage["stage"]]
        if part.empty:
            continue
        name = f"stage {stage['stage']}: {', '.join(stage['parameters'])}" if data.staged else "completed trial"
        figure.add_trace(go.Scatter(x=[order[t] for t in part["trial"]], y=part["value"], mode="markers", name=name,
                                    marker={"color": STAGE_COLORS[k % len(STAGE_COLORS)], "size": 8},
                                    text=part["trial"], hovertemplate="%{text}<br>%{y:.4g}<extra></extra>"))
    best = done["value"].cummin()
    figure.add_trace(go.Scatter(x=[order[t] for t in done["trial"]], y=best, mode="lines", name="best so far",
                                line={"shape": "hv", "color": "#222", "width": 2}))
    if data.staged:
        for stage in data.stages[1:]:
            first = trials[trials["stage"] == stage["stage"]]
            if not first.empty:
                figure.add_vline(x=order[first["trial"].iloc[0]] - 0.5, line={"dash": "dot", "color": "#999"})
    if _log_scale(done["value"]):
        figure.update_yaxes(type="log")
    return caption, figure


def importances(data: StudyData, measured: Importances):
    heading = "Parameter importances"
    if not measured.values:
        return (f"{heading}: Which hyperparameters changed the result most, against the documented order "
                f"{' > '.join(DOCUMENTED_ORDER)}.", note(f"Not measured: {measured.missing}."))
    rough = f" (from {measured.n_trials} completed trials{': rough' if measured.n_trials < FEW_TRIALS else ''})"
    method = measured.method[:1].upper() + measured.method[1:]
    unvaried = f" Not varied by any completed trial, so not ranked: {', '.join(measured.unvaried)}." if measured.unvaried else ""
    caption = f"{heading}: {method}{rough}; longer bars changed the result more. {measured.agreement}{unvaried}"
    names = list(measured.values)[::-1]
    labels = [f"{n} (documented #{DOCUMENTED_ORDER.index(n) + 1})" if n in DOCUMENTED_ORDER else f"{n} (not documented)"
              for n in names]
    figure = _figure(xaxis={"title": "importance (share, sums to 1)", "range": [0, 1.05]}, yaxis={"automargin": True},
                     height=max(260, 60 + 45 * len(names)), showlegend=False)
    figure.add_trace(go.Bar(x=[measured.values[n] for n in names], y=labels, orientation="h", marker={"color": "#1f77b4"},
                            text=[f"{measured.values[n]:.2f}" for n in names], textposition="outside",
                            hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    return caption, figure


def parallel(data: StudyData):
    caption = (f"Parallel coordinates: One line per completed trial through its parameter values to its "
               f"{objective_label(data)} (dark = better); bundles of dark lines show the values good trials share.")
    done = data.completed
    done = done[done["role"] != "carried"]
    if done.empty or not data.parameters:
        return caption, note(f"Not drawn: {_nothing_completed(data) if done.empty else 'no tuned parameters'}.")
    dimensions = []
    for name in data.parameters:
        values = _coordinate(data, name, done[name])
        if _is_categorical(data, name):
            choices = _choices(data, name)
            dimensions.append({"label": name, "values": values, "tickvals": list(range(len(choices))), "ticktext": choices,
                               "range": [0, max(1, len(choices) - 1)]})
        elif _is_log(data, name) and np.isfinite(values).any():
            tickvals, ticktext = _log_ticks(np.nanmin(values), np.nanmax(values))
            dimensions.append({"label": f"{name} (log)", "values": values, "tickvals": tickvals, "ticktext": ticktext})
        else:
            dimensions.append({"label": name, "values": values})
    values = done["value"].to_numpy(dtype=float)
    dimensions.append({"label": objective_label(data), "values": values})
    figure = _figure(margin={"l": 80, "r": 80, "t": 60, "b": 30})
    figure.add_trace(go.Parcoords(dimensions=dimensions, line={"color": values, "colorscale": "Viridis", "showscale": True,
                                                               "colorbar": {"title": "value"}}))
    return caption, figure


def slices(data: StudyData):
    staged = data.staged and len(data.stages) > 1
    caption = (f"Slice plots: The {objective_label(data)} of each completed trial against each parameter "
               + ("within the stage that tuned it (the others fixed)" if staged else "over all completed trials")
               + "; a clear valley marks a value worth keeping, a flat cloud a parameter that hardly matters.")
    done = data.completed
    if done.empty or not data.parameters:
        return caption, note(f"Not drawn: {_nothing_completed(data) if done.empty else 'no tuned parameters'}.")
    stage_of = _stage_of(data)
    names = data.parameters
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = make_subplots(rows=rows, cols=columns, shared_yaxes=True, horizontal_spacing=0.06, vertical_spacing=0.2)
    figure.update_layout(**{**LAYOUT, "height": 330 * rows, "showlegend": False})
    order = {trial: k for k, trial in enumerate(_started(data)["trial"])}
    for k, name in enumerate(names):
        part = done[done["stage"] == stage_of[name]] if staged else done
        part = part[part[name].notna()]
        row, col = divmod(k, columns)
        figure.add_trace(go.Scatter(x=_plot_values(data, name, part[name]), y=part["value"], mode="markers", text=part["trial"],
                                    marker={"size": 8, "color": [order.get(t, 0) + 1 for t in part["trial"]], "colorscale": "Blues",
                                            "cmin": 1, "cmax": max(2, len(order)), "line": {"width": 0.5, "color": "#333"},
                                            "showscale": k == 0, "colorbar": {"title": "trial (order started)"}},
                                    hovertemplate=f"%{{text}}<br>{name}=%{{x}}<br>%{{y:.4g}}<extra></extra>"),
                         row=row + 1, col=col + 1)
        axis = _axis(data, name)
        figure.update_xaxes(title=axis["title"], type=axis["type"], row=row + 1, col=col + 1,
                            **({"categoryorder": "array", "categoryarray": axis["categoryarray"]} if "categoryarray" in axis else {}))
        if col == 0:
            figure.update_yaxes(title=objective_label(data), row=row + 1, col=1)
    if _log_scale(done["value"]):
        figure.update_yaxes(type="log")
    return caption, figure


def contour(data: StudyData, measured: Importances):
    ranked = [n for n in measured.values if n in data.parameters] + [n for n in data.parameters if n not in measured.values]
    pair = ranked[:2]
    heading = "Contour of the two most important parameters"
    if len(pair) < 2:
        return f"{heading}: How they act together.", note("Not drawn: the study tunes fewer than two parameters.")
    x, y = pair
    caption = (f"{heading} ({x}, {y}): The {objective_label(data)} interpolated between the completed trials (dots); "
               "the darkest region is where to look, and a tilted valley means the two must be tuned together.")
    done = data.completed
    done = done[(done["role"] != "carried") & done[x].notna() & done[y].notna()]
    if done.empty:
        return caption, note(f"Not drawn: {_nothing_completed(data)}.")
    cx, cy = _coordinate(data, x, done[x]), _coordinate(data, y, done[y])
    z = done["value"].to_numpy(dtype=float)
    keep = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(z)
    cx, cy, z, done = cx[keep], cy[keep], z[keep], done[keep]
    figure = _figure(xaxis={"title": _axis(data, x)["title"]}, yaxis={"title": _axis(data, y)["title"]})
    stage_of = _stage_of(data)
    apart = data.staged and stage_of.get(x) != stage_of.get(y)
    surface = None if apart else _interpolate(cx, cy, z)
    if surface is None:
        reason = ("tuned in different stages (one at a time), the trials vary one of them with the other fixed, so there is "
                  "no surface to interpolate" if apart else "the trials do not span an area (fewer than three points off "
                  "one line), so there is no surface to interpolate")
        caption = (f"{heading} ({x}, {y}): The {objective_label(data)} of each completed trial as the dot colour (dark = better); "
                   f"{reason}.")
    else:
        gx, gy, gz = surface
        figure.add_trace(go.Contour(x=_ticks(data, x, gx), y=_ticks(data, y, gy), z=gz, colorscale="Viridis", ncontours=15,
                                    colorbar={"title": "value"}, hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>%{{z:.4g}}<extra></extra>"))
    figure.add_trace(go.Scatter(x=_ticks(data, x, cx), y=_ticks(data, y, cy), mode="markers", text=done["trial"], showlegend=False,
                                marker={"size": 9, "color": z if surface is None else "white", "colorscale": "Viridis",
                                        "showscale": surface is None, "line": {"width": 1, "color": "#222"}},
                                hovertemplate=f"%{{text}}<br>{x}=%{{x}}<br>{y}=%{{y}}<extra></extra>"))
    for name, axis in ((x, "xaxis"), (y, "yaxis")):
        if _is_log(data, name):
            figure.update_layout({axis: {"type": "log"}})
        elif _is_categorical(data, name):
            choices = _choices(data, name)
            figure.update_layout({axis: {"tickvals": list(range(len(choices))), "ticktext": choices}})
    return caption, figure


def _ticks(data: StudyData, name: str, coordinates):
    """Back from interpolation coordinates to axis values (log parameters: 10**c; categoricals stay indices)."""
    coordinates = np.asarray(coordinates, dtype=float)
    return 10**coordinates if _is_log(data, name) else coordinates


def _interpolate(x, y, z, n: int = 60):
    points = np.unique(np.column_stack([x, y]), axis=0)
    if len(points) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy.interpolate import griddata
    from scipy.spatial import QhullError

    gx, gy = np.linspace(x.min(), x.max(), n), np.linspace(y.min(), y.max(), n)
    mx, my = np.meshgrid(gx, gy)
    sx, sy = np.ptp(x), np.ptp(y)  # interpolate on a unit square: axes in different units
    try:
        gz = griddata(np.column_stack([(x - x.min()) / sx, (y - y.min()) / sy]), z,
                      ((mx - x.min()) / sx, (my - y.min()) / sy), method="linear")
    except (QhullError, ValueError):
        return None
    if not np.isfinite(gz).any():
        return None
    return gx, gy, gz


def shares_of(data: StudyData, steps) -> list:
    """Under budget.data_shares, each step (share / the first share) as its share of the training set."""
    return [float(step) * data.data_shares[0] for step in steps]


def step_name(data: StudyData, step) -> str:
    """"epoch 3" (step 2), or under budget.data_shares "share 1/4" (step 2 of shares 1/8 .. 1)."""
    if data.data_shares:
        return f"share {share_text(shares_of(data, [step])[0])}"
    return f"epoch {int(step) + 1}"


def learning_curves(data: StudyData):
    curves = data.curves[~data.curves["duplicate"] & (data.curves["role"] != "carried")]
    from_file = not curves.empty and (curves["source"] == "metrics.csv").all()
    per = "per share of the training set (the value at the end of each)" if data.data_shares and not from_file else "per epoch"
    what = f"{data.metric} per epoch (from each trial's metrics.csv)" if from_file else \
        f"{objective_label(data)} at the best validation loss so far, {per}"
    caption = (f"Learning curves: The {what}, one line per trial coloured by outcome; pruned curves stop early, and "
               "good pruning stops curves that stay above the completed ones.")
    if curves.empty:
        return caption, note(f"Not drawn: no trial reported an epoch yet ({_nothing_completed(data)}).")
    shares = bool(data.data_shares) and not from_file
    title = "share of the training set (each trained from scratch)" if shares else "epoch"
    figure = _figure(xaxis={"title": title, **({"type": "log"} if shares else _whole(int(curves["epoch"].max()) + 1))},
                     yaxis={"title": data.metric + " per epoch" if from_file else f"{objective_label(data)} (best so far)"})
    shown = set()
    groups = sorted(curves.groupby(["study", "number"], sort=False), key=lambda g: list(STATE_COLORS).index(g[1]["state"].iloc[0]))
    many = len(groups) > 30
    for _, curve in groups:  # completed first, so pruned and failed curves are drawn on top
        state = curve["state"].iloc[0]
        xs = shares_of(data, curve["epoch"]) if shares else curve["epoch"] + 1
        figure.add_trace(go.Scatter(x=xs, y=curve["value"], mode="lines+markers" if len(curve) < 3 or shares else "lines",
                                    name=STATE_NAMES[state], legendgroup=state, showlegend=state not in shown,
                                    line={"color": STATE_COLORS[state], "width": 1 if many else 1.5}, marker={"size": 5},
                                    opacity=0.6 if many else 0.85,
                                    text=[curve["trial"].iloc[0]] * len(curve),
                                    hovertemplate="%{text} (" + STATE_NAMES[state] + ")<br>" + ("share" if shares else "epoch")
                                    + " %{x}: %{y:.4g}<extra></extra>"))
        shown.add(state)
    if _log_scale(curves["value"]):
        figure.update_yaxes(type="log")
    return caption, figure


def compute(data: StudyData):
    heading = "Compute spent"
    trials = _started(data)
    trials = trials[trials["state"].isin(["complete", "pruned", "fail"])].sort_values("completed", kind="stable")
    if not (trials["state"] == "complete").any():
        return f"{heading}: The best value against epochs and hours trained.", note(f"Not drawn: {_nothing_completed(data)}.")
    epochs = trials["compute"].to_numpy(dtype=float)  # epochs on all the training set (x share under data_shares)
    seconds = trials["wall_s"].fillna(0).to_numpy(dtype=float)
    trained = (trials["state"] == "complete") & (trials["epochs"] > 0) & trials["duplicate_of"].isna()
    full = float(trials.loc[trained, "epochs"].max()) if trained.any() else float(trials["epochs"].max())
    pruned = (trials["state"] == "pruned").to_numpy()
    per_epoch = (trials["epochs_s"].fillna(0) / trials["compute"].clip(lower=1e-9)).to_numpy(dtype=float)
    if data.data_shares:  # against a search that trains every trial all its epochs on all the data
        stopped = (pruned | trained.to_numpy()) & (epochs > 0)
        extra_epochs = np.where(stopped, full - epochs, 0.0)
    else:
        extra_epochs = np.where(pruned, np.maximum(full - epochs, 0), 0.0)
    extra_seconds = extra_epochs * per_epoch
    best = trials["value"].where(trials["state"] == "complete").cummin().ffill().to_numpy(dtype=float)
    total_s, saved_s = seconds.sum(), extra_seconds.sum()
    unit, scale = ("GPU/CPU hours", 3600.0) if total_s + saved_s >= 1800 else (("GPU/CPU minutes", 60.0) if total_s + saved_s >= 60
                                                                                  else ("GPU/CPU seconds", 1.0))
    if pruned.any():
        share = extra_epochs.sum() / max(epochs.sum() + extra_epochs.sum(), 1)
        how = "the data shares and pruning" if data.data_shares else "pruning"
        baseline = f"{full:.0f} epochs on all the training set" if data.data_shares else f"{full:.0f} epochs"
        verb, amount = ("saved", extra_epochs.sum()) if extra_epochs.sum() >= 0 else ("cost", -extra_epochs.sum())
        extra = "" if verb == "saved" else " more"
        saved = (f"{how} of {int(pruned.sum())} trials {verb} about {amount:.0f}{extra} of {epochs.sum() + extra_epochs.sum():.0f} "
                 f"epochs ({100 * abs(share):.0f}%) and {abs(saved_s) / scale:.3g} {unit.split()[1]}{extra} "
                 f"(dashed: had they all run {baseline})")
    else:
        saved = "no trial was pruned, so nothing was saved by pruning"
    counted = "epochs trained (x the share of the training set)" if data.data_shares else "epochs trained"
    caption = (f"{heading}: The best {objective_label(data)} so far against {counted} and {unit} of trial wall time "
               f"({epochs.sum():.0f} epochs, {total_s / scale:.3g} {unit.split()[1]} in all); {saved}.")
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    figure.update_layout(**LAYOUT)
    for col, (used, extra, title) in enumerate(((epochs, extra_epochs, "epochs trained (cumulative)"),
                                               (seconds / scale, extra_seconds / scale, f"{unit} (cumulative)")), start=1):
        figure.add_trace(go.Scatter(x=np.cumsum(used), y=best, mode="lines+markers" if len(trials) <= 30 else "lines",
                                    name="as run", legendgroup="run",
                                    showlegend=col == 1, line={"shape": "hv", "color": "#1f77b4"}, text=trials["trial"],
                                    hovertemplate="%{text}<br>%{x:.3g}: best %{y:.4g}<extra></extra>"), row=1, col=col)
        if pruned.any():
            figure.add_trace(go.Scatter(x=np.cumsum(used + extra), y=best, mode="lines", name="without pruning (estimated)",
                                        legendgroup="full", showlegend=col == 1, line={"shape": "hv", "dash": "dash", "color": "#ff7f0e"}),
                             row=1, col=col)
        figure.update_xaxes(title=title, row=1, col=col, **(_whole(int(np.sum(used + extra))) if col == 1 else {}))
    figure.update_yaxes(title=f"best {objective_label(data)}", row=1, col=1)
    if _log_scale(best):
        figure.update_yaxes(type="log")
    return caption, figure


def stage_progress(data: StudyData):
    """Staged searches: the best value after each stage, from the default hypers on."""
    planned = data.planned_stages
    missing = planned - len(data.stages)
    later = f"; {missing} of {planned} stages not started yet" if missing > 0 else ""
    caption = (f"Best value after each stage: The {objective_label(data)} of the default hypers and the best after each stage, "
               f"labelled with the value that stage chose; a stage that barely lowers it tuned a parameter that mattered little{later}.")
    xs, ys, texts = [], [], []
    first = data.stages[0] if data.stages else None
    if first and first.get("start_value") is not None:
        xs.append("default hypers")
        ys.append(first["start_value"])
        texts.append("")
    best_of = data.completed.set_index("trial")
    for stage in data.stages:
        if stage.get("best_value") is None:
            continue
        xs.append(f"stage {stage['stage']}: {', '.join(stage['parameters'])}")
        ys.append(stage["best_value"])
        row = best_of.loc[f"{stage['study']}#{stage['best_number']}"]
        texts.append(", ".join(f"{p}={_fmt(row[p])}" for p in stage["parameters"] if p in row))
    if len(xs) < 1:
        return caption, note(f"Not drawn: {_nothing_completed(data)}.")
    figure = _figure(xaxis={"title": "", "type": "category"}, yaxis={"title": f"best {objective_label(data)}"}, showlegend=False)
    figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers+text", text=texts, textposition="top center",
                                line={"color": "#1f77b4"}, marker={"size": 10}, hovertemplate="%{x}<br>%{y:.4g}<extra></extra>"))
    if len(ys) > 1:
        pad = 0.15 * (max(ys) - min(ys) or abs(max(ys)) * 0.05 or 1)
        figure.update_yaxes(range=[min(ys) - pad, max(ys) + 2 * pad])
    return caption, figure


def front(data: StudyData):
    """Two-objective studies: accuracy against inference cost, the Pareto front highlighted."""
    measure = (data.objective or {}).get("cost_measure", "inference_time")
    scale, unit = (1e6, "inference time (µs per atom, energy + forces)") if measure == "inference_time" else (1.0, "parameters")
    done = data.completed
    done = done[(done["role"] != "carried") & done["cost"].notna()] if "cost" in done else done.iloc[0:0]
    caption = (f"Accuracy against {unit.split(' (')[0]}: Every completed trial (grey) and the Pareto front (no trial is both more accurate "
               "and cheaper) joined by a red line; pick along the front by how much accuracy a faster model may cost.")
    if done.empty:
        return caption, note(f"Not drawn: {_nothing_completed(data)}.")
    points = done.sort_values(["cost", "value"])
    on_front, best = [], math.inf
    for _, row in points.iterrows():
        if row["value"] < best:
            on_front.append(row["trial"])
            best = row["value"]
    front_rows = points[points["trial"].isin(on_front)]
    figure = _figure(xaxis={"title": unit}, yaxis={"title": data.metric})
    others = points[~points["trial"].isin(on_front)]
    figure.add_trace(go.Scatter(x=others["cost"] * scale, y=others["value"], mode="markers", name="trial", text=others["trial"],
                                marker={"color": "#aaa", "size": 8}, hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    figure.add_trace(go.Scatter(x=front_rows["cost"] * scale, y=front_rows["value"], mode="lines+markers", name="Pareto front",
                                text=front_rows["trial"], line={"shape": "hv", "color": "#d62728"}, marker={"size": 10},
                                hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    defaults = done[done["role"] == "defaults"]
    if not defaults.empty:
        figure.add_trace(go.Scatter(x=defaults["cost"] * scale, y=defaults["value"], mode="markers", name="default hypers",
                                    marker={"symbol": "star", "size": 14, "color": "#222"}))
    return caption, figure


def top_trials(data: StudyData, top: int = TOP):
    """An HTML table of the best trials, and the gain of the best over the default hypers."""
    caption = f"Top {top} trials: The best completed trials (repeats and carried-in copies left out) and the gain over the default hypers."
    done = data.completed
    done = done[(done["role"] != "carried") & done["duplicate_of"].isna()].sort_values("value", kind="stable").head(top)
    if done.empty:
        return caption, note(f"No table: {_nothing_completed(data)}.")
    columns = ["trial"] + (["stage"] if data.staged else []) + ["value"] + (["cost"] if "cost" in done else []) \
        + list(data.parameters) + ["epochs", "best_epoch", "wall_s"]
    titles = {"value": "value" if objective_label(data) == "value" else f"value ({objective_label(data)})"}
    head = "".join(f'<th class="{"text" if c == "trial" else ""}">{html.escape(titles.get(c, c))}</th>' for c in ["#"] + columns)
    body = []
    for rank, (_, row) in enumerate(done.iterrows(), start=1):
        cells = [f"<td>{rank}</td>"] + [f'<td class="{"text" if c == "trial" else ""}">{html.escape(_fmt(row[c]))}</td>' for c in columns]
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return caption, f"<p>{html.escape(gain_sentence(data))}</p>{table}"


def gain_sentence(data: StudyData) -> str:
    best, start = data.best(), data.start()
    if best is None:
        return f"No best trial: {_nothing_completed(data)}."
    label = objective_label(data)
    text = f"Best {label} {best['value']:.4g} (trial {best['trial']})"
    if start is None:
        defaults = data.trials[data.trials["role"] == "defaults"]
        why = (f"the default-hypers trial {defaults['trial'].iloc[0]} ended {STATE_NAMES[defaults['state'].iloc[0]]}"
               + (f" ({defaults['reason'].iloc[0]})" if defaults['reason'].iloc[0] else "")) if not defaults.empty else \
            "the study has no default-hypers trial"
        return text + f"; no gain over the defaults can be stated: {why}."
    carried = start["role"] == "carried"
    if best["trial"] == start["trial"] or best["value"] == start["value"]:
        what = "the earlier stages' best" if carried else "the default hypers"
        return f"No trial has beaten {what} yet (trial {start['trial']}, {label} {start['value']:.4g})."
    gain = 1 - best["value"] / start["value"] if start["value"] else float("nan")
    direction = "lower" if gain >= 0 else "higher"
    than = "this stage's start (the earlier stages' best)" if carried else "the default hypers'"
    return text + (f" is {100 * abs(gain):.1f}% {direction} than {than} {start['value']:.4g} (trial {start['trial']})"
                   + (" (accuracy objective; see the front for the cost)" if data.n_objectives > 1 else "") + ".")


def failures(data: StudyData):
    """Why trials failed: each distinct reason with its count and trials (None when nothing failed)."""
    failed = data.trials[data.trials["state"] == "fail"]
    if failed.empty:
        return None
    caption = "Failed trials: Why they failed (trials.csv has every reason; trial folders hold error.txt and train.log)."
    rows = []
    for reason, group in failed.groupby(failed["reason"].replace("", "(no reason recorded)"), sort=False):
        names = ", ".join(group["trial"].head(8)) + (f", ... ({len(group)} in all)" if len(group) > 8 else "")
        rows.append(f'<tr><td>{len(group)}</td><td class="text">{html.escape(reason)}</td><td class="text">{html.escape(names)}</td></tr>')
    return caption, ('<table><thead><tr><th>count</th><th class="text">reason</th><th class="text">trials</th></tr></thead>'
                     f"<tbody>{''.join(rows)}</tbody></table>")
