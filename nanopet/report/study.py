"""A study's report: ``reports/<study>/index.html`` (figures), ``trials.csv`` (one row per trial), ``summary.md``."""

from __future__ import annotations

from pathlib import Path

from nanopet.report import figures, ranking
from nanopet.report.collect import StudyData, collect
from nanopet.report.importance import DOCUMENTED_ORDER, Importances, measure
from nanopet.report.page import write_page

INDEX, CSV, SUMMARY = "index.html", "trials.csv", "summary.md"


def write_study_report(study: str, directory: str | Path = "studies", storage: str | None = None,
                       out_dir: str | Path = "reports") -> tuple[Path, StudyData]:
    """Write the three files under ``out_dir/<search name>/``; return the page and what was read."""
    data = collect(study, directory, storage)
    measured = measure(data)
    folder = Path(out_dir) / data.search
    folder.mkdir(parents=True, exist_ok=True)
    data.trials.to_csv(folder / CSV, index=False)
    sections = report_sections(data, measured)
    lines = header_lines(data)
    page = write_page(folder / INDEX, f"Study report: {data.search}", lines, sections)
    (folder / SUMMARY).write_text(summary_markdown(data, measured, lines, sections))
    return page, data


def report_sections(data: StudyData, measured: Importances) -> list[tuple[str, object]]:
    sections = [figures.history(data)]
    if data.staged:
        sections.append(figures.stage_progress(data))
    if data.n_objectives > 1:
        sections.append(figures.front(data))
    sections += [figures.importances(data, measured), figures.parallel(data), figures.slices(data),
                 figures.contour(data, measured), figures.learning_curves(data), ranking.early_ranking(data),
                 figures.compute(data),
                 figures.top_trials(data)]
    failed = figures.failures(data)
    if failed is not None:
        sections.append(failed)
    return sections


def counts_text(data: StudyData) -> str:
    own = data.trials[data.trials["role"] != "carried"]
    counts = own["state"].value_counts()
    parts = [f"{counts[s]} {figures.STATE_NAMES[s]}" for s in figures.STATE_NAMES if s in counts]
    return f"{len(own)}" + (f" ({', '.join(parts)})" if parts else "")


def status_line(data: StudyData) -> str:
    status = data.status
    again = f"run nanopet-tune report {data.search} again for an update"
    if status == "empty":
        return "Status: EMPTY - the study has no trials yet, so there is nothing to plot; start or resume the search."
    if status == "running":
        shown = ", ".join(data.running[:5]) + (" ..." if len(data.running) > 5 else "")
        return (f"Status: STILL RUNNING - {len(data.running)} trial(s) in progress ({shown}); this report is a snapshot "
                f"taken {data.generated:%Y-%m-%d %H:%M %Z}; {again}.")
    if status == "interrupted":
        return (f"Status: INTERRUPTED - {len(data.stale)} trial(s) were left running by workers that are gone "
                f"({'; '.join(data.stale[:3])}); resume the search to re-run them.")
    if status == "unfinished":
        waiting = int((data.trials["state"] == "waiting").sum())
        parts = []
        if len(data.stages) < data.planned_stages:
            parts.append(f"{len(data.stages)} of {data.planned_stages} stages started")
        if waiting:
            parts.append(f"{waiting} trial(s) waiting")
        return f"Status: UNFINISHED - {', '.join(parts)}; resume the search to finish it."
    return "Status: finished - no trial is running."


def header_lines(data: StudyData) -> list[str]:
    label = figures.objective_label(data)
    if data.staged:
        plan = "; ".join(f"{s['stage']}: {', '.join(s['parameters'])}" for s in data.stages)
        kind = f"Staged search over {data.planned_stages} stages ({plan})"
    else:
        kind = f"Search over {', '.join(data.parameters) or 'no parameters yet'}"
    objective = f"minimise {label}" + (" and inference cost (two objectives: a Pareto front)" if data.n_objectives > 1 else "")
    completed = data.completed
    lines = [status_line(data)] + ([f"{kind}; objective: {objective}."] if data.parameters else []) + [f"Trials: {counts_text(data)}.",
             figures.gain_sentence(data) if not completed.empty else no_result(data)]
    best = data.best()
    if best is not None and data.parameters:
        lines.append("Best configuration: " + ", ".join(f"{p}={figures._fmt(best[p])}" for p in data.parameters))
        lines += cost_lines(data, best)
    if data.retrain:
        lines.append(f"Retrained ({data.retrain.get('epochs')} epochs, seeds {data.retrain.get('seeds')}; nanopet-tune retrain): "
                     f"{data.retrain.get('verdict')}.")
    lines += [f"Storage: {data.storage}; every trial with its parameters, state, value, epochs, wall time and reason is in "
              f"{CSV}, a text summary in {SUMMARY}.",
              f"Generated {data.generated:%Y-%m-%d %H:%M %Z} by nanopet-tune report; works offline (plotly.js is beside this page)."]
    return lines


def cost_lines(data: StudyData, best) -> list[str]:
    """What the best trial costs to train against the defaults trial: seconds per epoch, measured in the search."""
    start = data.trials[(data.trials["role"] == "defaults") & (data.trials["state"] == "complete")]
    per_epoch = lambda row: row["epochs_s"] / row["epochs"] if row["epochs"] and row["epochs_s"] else None  # noqa: E731
    mine, theirs = per_epoch(best), per_epoch(start.iloc[0]) if not start.empty else None
    if not mine or not theirs:
        return []
    return [f"Training cost: the best trial took {mine:.3g} s an epoch, the defaults {theirs:.3g} s ({mine / theirs:.2f}x)."]


def no_result(data: StudyData) -> str:
    states = set(data.trials["state"])
    if states == {"fail"}:
        return (f"No result: all {len(data.trials)} trials failed; the reasons are under Failed trials below "
                f"and in {CSV}.")
    return f"No result yet: {figures._nothing_completed(data)}."


def summary_markdown(data: StudyData, measured: Importances, lines: list[str], sections: list) -> str:
    out = [f"# Study report: {data.search}", ""] + [f"- {line}" for line in lines] + [""]
    if data.staged:
        out += ["## Stages", "", "| stage | parameters | complete | pruned | failed | start value | best value |",
                "|---|---|---|---|---|---|---|"]
        for s in data.stages:
            out.append(f"| {s['stage']} | {', '.join(s['parameters'])} | {s['complete']} | {s['pruned']} | {s['fail']} | "
                       f"{figures._fmt(s['start_value'])} | {figures._fmt(s['best_value'])} |")
        out.append("")
    out += ["## Parameter importances", ""]
    if measured.values:
        out += [f"Method: {measured.method}, {measured.n_trials} completed trials.", "",
                "| parameter | importance | documented rank |", "|---|---|---|"]
        for name, value in measured.values.items():
            rank = DOCUMENTED_ORDER.index(name) + 1 if name in DOCUMENTED_ORDER else "-"
            out.append(f"| {name} | {value:.3f} | {rank} |")
        out += ["", measured.agreement, ""]
        if measured.unvaried:
            out += [f"Not varied by any completed trial, so not ranked: {', '.join(measured.unvaried)}.", ""]
    else:
        out += [f"Not measured: {measured.missing}.", ""]
    done = data.completed
    done = done[(done["role"] != "carried") & done["duplicate_of"].isna()].sort_values("value", kind="stable").head(figures.TOP)
    out += [f"## Top {figures.TOP} trials", ""]
    if done.empty:
        out += [f"None: {figures._nothing_completed(data)}.", ""]
    else:
        columns = ["trial", "value"] + (["cost"] if "cost" in done else []) + list(data.parameters) + ["epochs", "wall_s"]
        out += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(figures._fmt(row[c]) for c in columns) + " |" for _, row in done.iterrows()]
        out.append("")
    failed = data.trials[data.trials["state"] == "fail"]
    if not failed.empty:
        out += ["## Failed trials", ""] + [f"- {count} x {reason or '(no reason recorded)'}"
                                           for reason, count in failed["reason"].value_counts().items()] + [""]
    out += [f"## Figures ({INDEX})", ""] + [f"- {caption}" for caption, _ in sections] + [""]
    return "\n".join(out)
