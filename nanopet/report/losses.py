"""The loss comparison's page, ``reports/<name>/losses.html`` (``nanopet-tune compare-losses``): the winners per test
metric with a clear / within-spread verdict, the test metrics per variant, the variants' settings, test RMSE bars and
validation learning curves. Variants are objects with ``label``, ``type``, ``reduction``, ``weights`` and ``deltas``
(``nanopet.compare_losses.Variant``)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from nanopet.report.page import write_page
from nanopet.runs import describe_metric, target_of, unit_of


def short_weights(weights: dict) -> str:
    return ",".join(f"{t}={w:g}" for t, w in weights.items())




def _table(head: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    def cell(tag, k, value):
        cls = ' class="text"' if k < text_columns else ""
        return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", k, h) for k, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell("td", k, v) for k, v in enumerate(row)) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


def plus_minus(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.3g}" if math.isfinite(mean) else "n/a"


def write_losses_page(path: Path, name: str, header: list[str], variants: list, summary: list[dict],
                      winners: list[dict], curves: dict, metrics: list[str], per_structure: bool) -> Path:
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    colors = {v.label: qualitative.Plotly[k % len(qualitative.Plotly)] for k, v in enumerate(variants)}
    lookup = {(r["variant"], r["metric"]): r for r in summary}
    sections = []

    win_rows = [[describe_metric(w["metric"], per_structure), unit_of(w["metric"], per_structure), w["winner"], plus_minus(w["mean"], w["std"]),
                 w["runner_up"] or "", plus_minus(w["runner_up_mean"], w["runner_up_std"]) if w["runner_up"] else "", w["verdict"]]
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
            cells.append(plus_minus(r["mean"], r["std"]) + (" *" if r["wins"] else ""))
        table_rows.append(cells)
    sections.append(("Test metrics: mean ± sample std over seeds of each variant and target; * marks the lowest mean",
                     _table(head, table_rows)))

    settings = [[v.label, v.type, v.reduction, short_weights(v.weights) or "base (1.0 each)",
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
