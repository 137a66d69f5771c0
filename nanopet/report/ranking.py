"""How early a study's ranking forms: Kendall tau between the values its completed trials reported at each epoch (or
data share) and their final values, the figure that shows it, and the line a search prints at its end when it
pruned (``pruning_check``): whether the pruner decided before the ranking formed, and where to decide instead."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nanopet.report.collect import StudyData
from nanopet.report.figures import LAYOUT, STATE_COLORS, _whole, note, step_name
from nanopet.tune.pruning import kendall_tau


def _signed(tau: float | None) -> str:
    return "undefined" if tau is None else f"{tau:+.2f}"


WELL_RANKED = 0.6  # Kendall tau from which early values rank the final ones "well"


def _verdict(tau: float | None) -> str:
    """How well a tau ranks: well | roughly | barely | not ranked (all values equal)."""
    if tau is None:
        return "not ranked"
    return "well" if tau >= WELL_RANKED else "roughly" if tau >= 0.3 else "barely"


def _reading(tau: float | None) -> str:
    return {
        "not ranked": "no ranking (all values equal)",
        "well": "the early values rank the trials well, so pruning there is safe",
        "roughly": "the early values rank the trials only roughly, so pruning there can drop a trial that would have won",
        "barely": "the early values barely rank the trials, so pruning there discards trials that would have won: "
                  "prune later (larger n_warmup_steps or min_resource) or not at all",
    }[_verdict(tau)]


@dataclass
class Ranking:
    """How the completed trials' per-epoch values rank their final values (``early_ranking``). Under
    budget.data_shares the points are the shares (``names``) instead of epochs."""

    trials: int  # completed trials with a value at every epoch
    epochs: int  # points (epochs, or shares) of a completed trial
    taus: list  # Kendall tau of the values at point k (0-based, k < epochs - 1) against the final values
    stopped: pd.Series  # last point (0-based) of each pruned trial
    typical: int  # the point to read: where half the pruned trials had stopped, else a third of the way in
    rate_final: float | None = None  # Kendall tau of the learning rate against the final values
    rate_taus: list | None = None  # ... against the values at each point
    names: list | None = None  # each point's name ("share 1/8"); None: "epoch k"

    def name(self, point: int) -> str:
        return self.names[point] if self.names else f"epoch {point + 1}"

    @property
    def well_from(self) -> int | None:
        """The first epoch (0-based) from which the values rank the final ones well at every later epoch; None if
        none before the last does. A pruner's first decision there: n_warmup_steps / min_resource = this epoch."""
        well = [tau is not None and tau >= WELL_RANKED for tau in self.taus]
        return next((epoch for epoch in range(len(well)) if all(well[epoch:])), None)

    def advice(self) -> str | None:
        """Where to make the first pruning decision, when the pruner decided before the ranking formed."""
        if _verdict(self.taus[self.typical]) == "well":
            return None
        if self.names:  # data shares: where the shares should start
            if self.well_from is None:
                return (f"no share below all of the training set ranked them well (tau >= {WELL_RANKED}): a data-size "
                        "fidelity saves nothing here; prune on epochs or not at all")
            return (f"the values ranked the final ones well (tau >= {WELL_RANKED}) from {self.name(self.well_from)} on, so "
                    f"start budget.data_shares there")
        waits = "; or pruner: {type: ranking}, which waits for the ranking by itself"
        if self.well_from is None:
            return (f"no epoch before the last ranked them well (tau >= {WELL_RANKED}): prune only late "
                    "or not at all" + waits)
        return (f"the values ranked the final ones well (tau >= {WELL_RANKED}) from epoch {self.well_from + 1} of "
                f"{self.epochs} on, so make the first pruning decision no earlier: n_warmup_steps: {self.well_from} "
                f"(median) or min_resource: {self.well_from} (successive_halving, hyperband)" + waits)

    @property
    def short_horizon_bias(self) -> bool:
        """Lower learning rates end better, but that shows only late: early pruning favours high rates."""
        early = self.rate_taus[self.typical] if self.rate_taus else None
        return self.rate_final is not None and self.rate_final >= 0.3 and (early is None or early < self.rate_final - 0.3)


def ranking(data: StudyData) -> Ranking | str:
    """The ranking by epoch, or why it cannot be measured (a sentence)."""
    curves = data.curves[(data.curves["source"] == "storage") & ~data.curves["duplicate"] & (data.curves["role"] != "carried")]
    if data.n_objectives > 1 or curves.empty:
        return "the trials reported no per-epoch values (two-objective studies are not pruned, so they report none)"
    values = {trial: group.set_index("epoch")["value"] for trial, group in curves.groupby("trial", sort=False)}
    first = curves.groupby("trial", sort=False)[["state", "stage"]].first()
    state = first["state"]
    complete = [t for t in values if state[t] == "complete"]
    steps = max((list(values[t].index) for t in complete), key=len, default=[])  # the steps a trial reports
    if not data.data_shares and steps != list(range(len(steps))):
        steps = []
    epochs = len(steps)
    full = [t for t in complete if list(values[t].index) == steps]
    if len(full) < 4 or epochs < 2:
        return (f"needs at least 4 completed trials of {max(epochs, 2)} or more {'shares' if data.data_shares else 'epochs'} "
                f"with a value at every one (this study has {len(full)})")
    final = [values[t][steps[-1]] for t in full]
    stage = first["stage"][full].tolist()
    taus = [kendall_tau([values[t][k] for t in full], final, stage) for k in steps[:-1]]
    point = {step: k for k, step in enumerate(steps)}
    stopped = pd.Series([point.get(int(values[t].index.max()), 0) for t in values if state[t] == "pruned"], dtype=int)
    typical = min(int(stopped.median()) if not stopped.empty else max(0, epochs // 3 - 1), epochs - 2)
    names = [step_name(data, step) for step in steps] if data.data_shares else None
    result = Ranking(len(full), epochs, taus, stopped, typical, names=names)
    if "learning_rate" in data.parameters:
        rate = data.trials.set_index("trial").reindex(full)["learning_rate"]
        if rate.notna().all():
            rate = rate.astype(float).tolist()
            result.rate_final = kendall_tau(rate, final, stage)
            result.rate_taus = [kendall_tau(rate, [values[t][k] for t in full], stage) for k in steps[:-1]]
    return result


def early_ranking(data: StudyData):
    """Is pruning on early epochs trustworthy in this study? Kendall's tau between the value each completed trial
    reported at epoch k and its final value, for every k, with how many trials the pruner stopped at each epoch.
    Under budget.data_shares the same over the shares of the training set (the data-size fidelity)."""
    point, points = ("share of the training set", "shares") if data.data_shares else ("epoch", "epochs")
    caption = (f"How early the ranking forms: Kendall's tau between the value the completed trials reported at each {point} "
               f"and their final value (1: the ranking at that {point} is already the final one; 0: unrelated), against the "
               f"{points} at which the pruner stopped trials")
    measured = ranking(data)
    if isinstance(measured, str):
        return caption + ".", note(f"Not drawn: {measured}.")
    epochs, typical, stopped = measured.epochs, measured.typical, measured.stopped
    xs = [measured.name(k) for k in range(epochs - 1)] if data.data_shares else list(range(1, epochs))
    at = lambda k: measured.name(k) if data.data_shares else k + 1  # noqa: E731 - a bar's x
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.update_layout(**LAYOUT)
    figure.add_trace(go.Scatter(x=xs, y=measured.taus, mode="lines+markers", name=f"value at this {point} vs final value",
                                line={"color": "#1f77b4"}), secondary_y=False)
    tau = measured.taus[typical]
    if stopped.empty:
        parts = [f"no trial was pruned; at {measured.name(typical)} tau is {_signed(tau)}: {_reading(tau)}"]
    else:
        counts = stopped.value_counts().sort_index()
        figure.add_trace(go.Bar(x=[at(k) for k in counts.index], y=counts.values, name=f"trials pruned after this {point}",
                                width=0.6, marker={"color": STATE_COLORS["pruned"]}, opacity=0.35), secondary_y=True)
        parts = [f"half the {len(stopped)} pruned trials stopped by {measured.name(typical)}, where tau is {_signed(tau)}: "
                 f"{_reading(tau)} (computed over the trials pruning let finish, so it flatters the pruner: "
                 "a run with pruner: {type: none} shows the whole ranking)"]
    if measured.rate_final is not None:  # short-horizon bias: does the learning rate's effect show only late?
        figure.add_trace(go.Scatter(x=xs, y=measured.rate_taus, mode="lines+markers", name=f"learning rate vs value at this {point}",
                                    line={"color": "#9467bd", "dash": "dot"}), secondary_y=False)
        parts.append(f"the learning rate ranks the final values with tau {measured.rate_final:+.2f} (positive: lower rates "
                     f"end better) and the values at {measured.name(typical)} with {_signed(measured.rate_taus[typical])}")
        if measured.short_horizon_bias:
            parts.append("so pruning there favours high learning rates, which lead early and fall behind later "
                         "(short-horizon bias)")
    if advice := measured.advice():
        parts.append(advice)
    figure.update_xaxes(title=point, **({"type": "category"} if data.data_shares else _whole(epochs)))
    figure.update_yaxes(title="Kendall tau", range=[-1.05, 1.05], secondary_y=False)
    figure.update_yaxes(title="trials pruned", showgrid=False, secondary_y=True, tickmode="auto", nticks=5,
                        range=[0, 1.1 * max(1, int(counts.max()) if not stopped.empty else 1)])
    within = " (pairs of trials compared within each stage, as each stage prunes against its own)" if data.staged else ""
    return f"{caption}, over {measured.trials} completed trials of {epochs} {points}{within}; {'; '.join(parts)}.", figure


def pruning_check(data: StudyData) -> str | None:
    """One line for the end of a search that pruned: how far its pruning epochs can be trusted (None: nothing to say)."""
    measured = ranking(data)
    if isinstance(measured, str) or measured.stopped.empty:
        return None
    tau = measured.taus[measured.typical]
    line = (f"pruning check: half the {len(measured.stopped)} pruned trials stopped by {measured.name(measured.typical)}, where "
            f"the completed trials' values ranked their final ones {_verdict(tau)} (Kendall tau {_signed(tau)})")
    if measured.short_horizon_bias:
        line += "; lower learning rates ended better but led only late, so pruning there favours high rates"
    if advice := measured.advice():
        line += "; " + advice
    return line + "; see 'How early the ranking forms' in the report"
