"""Read a study, every stage of it, from its Optuna storage into tables: one row per trial, one per epoch.

Driver-neutral: anything that writes trials into an Optuna storage with nanopet's user attributes
(``nanopet.tune.trial.TrialRecord``, the set both drivers write; intermediate values = per-epoch
validation objective) is read the same way, whichever driver ran it. Nothing is written to the storage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from nanopet.errors import InputError, did_you_mean
from nanopet.tune.optuna_driver.lease import stale_reason
from nanopet.tune.space import GRACE_PERIOD
from nanopet.tune.storage import find_storage, is_stage_study, masked, open_storage, search_name, search_studies
from nanopet.tune.params import decode
from nanopet.tune.trial import CARRIED, DEFAULTS, record_of

STATES = ("complete", "pruned", "fail", "running", "waiting")
TRIAL_COLUMNS = ("study", "stage", "number", "trial", "state", "role", "value")  # then cost, parameters, ...
TAIL_COLUMNS = ("epochs", "compute", "best_epoch", "wall_s", "setup_s", "epochs_s", "reason", "duplicate_of", "retry_of",
                "started", "completed", "artifacts")


@dataclass
class StudyData:
    """A search as it stands in its storage."""

    search: str  # the name given to the search (stage studies are <search>.stage<k>-<parameters>)
    storage: str  # the storage URL, password masked
    stages: list  # one dict per Optuna study, in stage order: study, stage, parameters, fixed, counts, values
    planned_stages: int  # stages the search will have (a running staged search has created fewer)
    metric: str  # e.g. val_forces_rmse
    objective: dict  # {metric, cost, cost_measure, cost_weight}
    n_objectives: int  # 2: (metric, cost) Pareto front
    parameters: list  # tuned parameter names, in stage order
    distributions: dict  # name -> optuna distribution (as the trials recorded it)
    trials: pd.DataFrame  # one row per trial (TRIAL_COLUMNS, cost, parameters, metrics, TAIL_COLUMNS)
    curves: pd.DataFrame  # one row per trial and epoch: study, stage, number, trial, state, role, epoch, value, source
    # budget.data_shares of a data-size fidelity: then a curve's "epoch" is the step of a share (share / the first)
    data_shares: tuple | None = None
    frozen: dict = field(default_factory=dict)  # Optuna study name -> its trials as stored (FrozenTrial)
    running: list = field(default_factory=list)  # "study#number" of trials whose worker is alive
    stale: list = field(default_factory=list)  # "study#number: why" of RUNNING trials whose worker is gone
    generated: datetime = field(default_factory=lambda: datetime.now().astimezone())
    retrain: dict | None = None  # studies/<search>/best/summary.yaml of nanopet-tune retrain, when there is one

    @property
    def staged(self) -> bool:
        return self.planned_stages > 1

    @property
    def completed(self) -> pd.DataFrame:
        """Completed trials with a value (carried-in and duplicate trials included: they are results)."""
        return self.trials[(self.trials["state"] == "complete") & self.trials["value"].notna()]

    @property
    def status(self) -> str:
        """running | interrupted | unfinished | finished | empty (a study with no trial)."""
        if self.trials.empty:
            return "empty"
        if self.running:
            return "running"
        if self.stale:
            return "interrupted"
        if (self.trials["state"] == "waiting").any() or len(self.stages) < self.planned_stages:
            return "unfinished"
        return "finished"

    def best(self) -> pd.Series | None:
        """The best completed trial (single objective: lowest value; two objectives: lowest metric)."""
        done = self.completed
        if done.empty:
            return None
        return done.loc[done["value"].idxmin()]

    def start(self) -> pd.Series | None:
        """Where the search started: the completed default-hypers trial of the first stage (or, for one later
        stage reported alone, the earlier stages' best carried into it)."""
        if not self.stages:
            return None
        first = self.trials[(self.trials["stage"] == self.stages[0]["stage"]) & (self.trials["state"] == "complete")]
        for role in ("defaults", "carried"):
            if (first["role"] == role).any():
                return first[first["role"] == role].iloc[0]
        return None


# ---------------------------------------------------------------------------------------------
# Finding the study


def locate(study: str, directory: str | Path = "studies", storage: str | None = None) -> tuple[str, str]:
    """(storage URL, search name) of a study given by name (``studies/<name>/``), a stage study's name
    (``<name>.stage2-learning_rate``), a journal file or a storage URL (search name "": the one it holds)."""
    try:
        url = find_storage(study, directory, storage)
    except InputError as error:
        base = search_name(study)
        if base == study:
            known = [p.name for p in Path(directory).glob("*/")]
            raise InputError(f"{error}{did_you_mean(study, known)}") from None
        url = find_storage(base, directory, storage)
    by_path = not storage and ("://" in study or Path(study).is_file())
    return url, ("" if by_path else study)


def _select(summaries: list, search: str, url: str) -> tuple[str, list]:
    """The search name and its Optuna studies (stage order) among a storage's studies."""
    if not search:  # a journal file or URL: the storage must hold one search
        names = sorted({search_name(s.study_name, s.user_attrs) for s in summaries})
        if len(names) != 1:
            raise InputError(f"storage {masked(url)} holds {'no studies' if not names else 'several searches: ' + ', '.join(names)}; "
                             "name one: nanopet-tune report NAME --storage URL")
        search = names[0]
    exact = [s for s in summaries if s.study_name == search]
    if exact and is_stage_study(search):  # one stage of a staged search, asked for by its own name
        return search, exact
    return search, search_studies(summaries, search)


# ---------------------------------------------------------------------------------------------
# Reading


def collect(study: str, directory: str | Path = "studies", storage: str | None = None,
            grace_period: float = GRACE_PERIOD) -> StudyData:
    """Everything a report needs about ``study``; ``InputError`` if there is no such study."""
    url, search = locate(study, directory, storage)
    backend = open_storage(url, create=False)
    summaries = backend.get_all_studies()
    search, chosen = _select(summaries, search, url)
    if not chosen:
        if summaries:
            names = ", ".join(sorted(s.study_name for s in summaries))
            raise InputError(f"study {search!r}: not in storage {masked(url)}{did_you_mean(search, [s.study_name for s in summaries])} "
                             f"(studies there: {names})")
        # the storage exists but holds no study yet (a search that has not created it): an empty report
        return StudyData(search, masked(url), [], 1, "value", {}, 1, [], {}, pd.DataFrame(columns=TRIAL_COLUMNS + TAIL_COLUMNS),
                         _curve_frame([]))
    rows, curve_rows, stages, running, stale, frozen = [], [], [], [], [], {}
    distributions: dict = {}
    now = time.time()
    first_attrs = chosen[0].user_attrs
    objective = dict(first_attrs.get("objective") or {})
    metric = first_attrs.get("metric") or objective.get("metric") or "value"
    n_objectives = len(chosen[0].directions)
    planned = max(int(s.user_attrs.get("stages", 1)) for s in chosen)
    if len(chosen) == 1 and is_stage_study(chosen[0].study_name) and chosen[0].study_name == search:
        planned = 1  # one stage asked for by name: report it alone
    for summary in chosen:
        frozen[summary.study_name] = backend.get_all_trials(backend.get_study_id_from_name(summary.study_name), deepcopy=False)
    base_values = _base_values(frozen.values())
    for summary in chosen:
        attrs = summary.user_attrs
        stage = int(attrs.get("stage", 1))
        trials = frozen[summary.study_name]
        parameters = list(attrs.get("parameters") or _names(trials))
        fixed = dict(attrs.get("fixed") or {})
        for t in trials:
            for name, d in t.distributions.items():
                distributions.setdefault(name, d)
            row = _trial_row(summary.study_name, stage, t, n_objectives, fixed, base_values)
            rows.append(row)
            curve_rows += _curve(row, t, metric)
            if t.state == TrialState.RUNNING:
                why = stale_reason(t, grace_period, now)
                (stale if why else running).append(f"{row['trial']}: {why}" if why else row["trial"])
        own = [t for t in trials if t.user_attrs.get("role") != "carried"]
        counts = {s: sum(t.state.name.lower() == s for t in own) for s in STATES}
        stages.append({"study": summary.study_name, "stage": stage, "parameters": parameters, "fixed": fixed,
                       "baseline": attrs.get("baseline"), **counts, **_stage_values(trials)})
    ordered = []
    for s in stages:
        ordered += [p for p in s["parameters"] if p not in ordered]
    trials_frame = _trial_frame(rows, ordered)
    shares = first_attrs.get("data_shares")
    data = StudyData(search, masked(url), stages, planned, metric, objective, n_objectives, ordered, distributions,
                     trials_frame, _curve_frame(curve_rows), tuple(shares) if shares else None, frozen, running, stale)
    data.retrain = retrain_summary(Path(directory) / search / "best" / "summary.yaml")
    return data


def retrain_summary(path: Path) -> dict | None:
    """What ``nanopet-tune retrain`` found (its ``summary.yaml``), or None before a retrain."""
    import yaml

    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def _names(trials) -> list[str]:
    names: list[str] = []
    for t in trials:
        names += [n for n in t.params if n not in names]
    return names


def _base_values(stages) -> dict:
    """Base value of each parameter tuned in a later stage: what earlier stages trained with. Read off the
    start trial (defaults or carried-in) of the stage that tunes it, which trained at the base values."""
    base = {}
    for trials in stages:
        for t in trials:
            if t.user_attrs.get("role") in (DEFAULTS, CARRIED):
                for name, value in t.params.items():
                    base.setdefault(name, decode(value))
    return base


def _trial_row(study: str, stage: int, t: optuna.trial.FrozenTrial, n_objectives: int, fixed: dict, base: dict) -> dict:
    record = record_of(t.user_attrs)
    values = t.values if t.values is not None else [None] * n_objectives
    config = dict(record.config or {})
    params = {name: decode(value) for name, value in t.params.items()}
    full = {**{k: v for k, v in base.items() if k not in params and k not in fixed}, **fixed, **params, **config}
    role = record.role or ""
    trained = role != CARRIED and record.duplicate_of is None
    epochs = record.epochs if t.state == TrialState.COMPLETE else None
    if epochs is None:
        epochs = len(t.intermediate_values) or _epochs_in_file(record.artifacts) + 1
    timing = record.timing or {}
    row = {"study": study, "stage": stage, "number": t.number, "trial": f"{study}#{t.number}",
           "state": t.state.name.lower(), "role": role, "value": values[0]}
    if n_objectives > 1:
        row["cost"] = values[1]
    row["_config"] = full
    row["_metrics"] = dict(record.metrics or {})
    compute = record.compute if record.compute is not None else float(epochs)  # epochs x share of the training set
    row.update({"epochs": epochs if trained else 0, "compute": compute if trained else 0.0, "best_epoch": record.best_epoch,
                "wall_s": timing.get("wall"), "setup_s": timing.get("setup"), "epochs_s": timing.get("epochs"),
                "reason": record.reason or "", "duplicate_of": record.duplicate_of, "retry_of": record.retry_of,
                "started": t.datetime_start, "completed": t.datetime_complete, "artifacts": record.artifacts or ""})
    if "cost" not in row and record.cost is not None:
        row["cost"] = record.cost
    return row


def _epochs_in_file(folder: str | None) -> int:
    """The last epoch in the trial's metrics.csv (-1 if none): for trials whose storage has no curve."""
    frame = _metrics_file(folder)
    return int(frame["epoch"].max()) if frame is not None and len(frame) else -1


def _metrics_file(folder: str | None) -> pd.DataFrame | None:
    if not folder or not (Path(folder) / "metrics.csv").is_file():
        return None
    try:
        return pd.read_csv(Path(folder) / "metrics.csv")
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _curve(row: dict, t: optuna.trial.FrozenTrial, metric: str) -> list[dict]:
    """The learning curve: intermediate values (the objective so far, per epoch); else, when the driver
    reported none (two-objective studies), the metric per epoch from the trial's metrics.csv."""
    common = {k: row[k] for k in ("study", "stage", "number", "trial", "state", "role")}
    common["duplicate"] = row["duplicate_of"] is not None
    if t.intermediate_values:
        return [{**common, "epoch": int(step), "value": float(v), "source": "storage"}
                for step, v in sorted(t.intermediate_values.items()) if v is not None and math.isfinite(v)]
    frame = _metrics_file(t.user_attrs.get("artifacts")) if t.state != TrialState.WAITING else None
    if frame is None or metric not in frame:
        return []
    return [{**common, "epoch": int(e), "value": float(v), "source": "metrics.csv"}
            for e, v in zip(frame["epoch"], frame[metric]) if math.isfinite(v)]


def _curve_frame(rows: list[dict]) -> pd.DataFrame:
    columns = ["study", "stage", "number", "trial", "state", "role", "duplicate", "epoch", "value", "source"]
    return pd.DataFrame(rows, columns=columns)


def _trial_frame(rows: list[dict], parameters: list[str]) -> pd.DataFrame:
    metrics: list[str] = []
    for row in rows:
        metrics += [m for m in row["_metrics"] if m not in metrics]
    has_cost = any("cost" in row for row in rows)
    records = []
    for row in rows:
        record = {k: row[k] for k in TRIAL_COLUMNS}
        if has_cost:
            record["cost"] = row.get("cost")
        for name in parameters:
            value = row["_config"].get(name)
            record[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        for m in metrics:
            record[m] = row["_metrics"].get(m)
        record.update({k: row[k] for k in TAIL_COLUMNS})
        records.append(record)
    columns = list(TRIAL_COLUMNS) + (["cost"] if has_cost else []) + parameters + metrics + list(TAIL_COLUMNS)
    frame = pd.DataFrame(records, columns=columns)
    for name in parameters:  # integer parameters stay integers where some trials lack them (64, not 64.0)
        values = [r[name] for r in records if r[name] is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[name] = frame[name].astype("Int64")
    for name in ("duplicate_of", "retry_of", "best_epoch"):
        frame[name] = frame[name].astype("Int64")
    frame["epochs"] = frame["epochs"].astype(int)
    return frame.sort_values(["stage", "number"], kind="stable").reset_index(drop=True)


def _stage_values(trials) -> dict:
    """A stage's start value (its defaults or carried-in trial) and best value."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    start = next((t for t in done if t.user_attrs.get("role") in ("defaults", "carried")), None)
    best = min(done, key=lambda t: t.values[0]) if done else None
    return {"start_value": start.values[0] if start else None, "best_value": best.values[0] if best else None,
            "best_number": best.number if best else None}
