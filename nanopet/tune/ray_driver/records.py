"""Recording finished Ray trials in the study's Optuna storage, as the Optuna driver records its own: state, per-epoch
values, the attributes (config, options, metrics, best epoch, artifacts, timing, reason), repeats as copies.""" 

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nanopet.tune.space import SearchSpace
from nanopet.tune.studies import defaults_point
from nanopet.tune.params import decode, distribution
from nanopet.tune.trial import best_metrics, DEFAULTS, finite, protected, RAY_PREFIX, repeat_of, STOPPED_FILE, timing, trial_folder, TrialRecord, user_attrs
from nanopet.tune.text import share_text
from nanopet.tune.ray_driver.names import (COST, DUPLICATE, LAST_CHECKPOINT, OBJECTIVE, TIME_ATTR, TRAINED_EPOCH)


def record_results(study: optuna.Study, space: SearchSpace, stage, fixed: dict, results) -> tuple[int, int]:
    """Add every finished Ray trial not yet in the stage's study as an Optuna trial; returns (added, unfinished).
    Unfinished trials (an interrupted experiment) are left to the run that restores it."""
    done = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    statuses = [trial.status for trial in results._experiment_analysis.trials]  # ResultGrid keeps this order
    added = unfinished = 0
    for result, status in zip(results, statuses):
        if status not in ("TERMINATED", "ERROR"):
            unfinished += 1
            continue
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        if trial_id in done or not all(name in config for name in stage.parameters):
            continue
        study.add_trial(ray_trial(space, stage, fixed, study, result, trial_id, config))
        folder = trial_folder(space.study.path, RAY_PREFIX + trial_id)  # finished: model.ckpt (complete trials) is what stays
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        (folder / LAST_CHECKPOINT).unlink(missing_ok=True)
        added += 1
    return added, unfinished


def ray_trial(space: SearchSpace, stage, fixed: dict, study: optuna.Study, result, trial_id: str, config: dict):
    """The Optuna trial of one finished Ray trial: params, per-epoch values, state and the attributes the
    Optuna driver's trials carry (config, options, metrics, best_epoch, artifacts, timing, reason)."""
    rows = []
    frame = result.metrics_dataframe
    if frame is not None and OBJECTIVE in frame:
        rows = [row for row in frame.to_dict("records") if finite(row.get(OBJECTIVE))]
    by_epoch = {int(row[TIME_ATTR]): row for row in rows if TIME_ATTR in row}  # epochs 1, 2, ..., or the shares' steps
    shares = bool(space.budget.data_shares)
    intermediate = {step if shares else step - 1: float(row[OBJECTIVE]) for step, row in sorted(by_epoch.items())}
    last = rows[-1] if rows else {}
    earlier = study.get_trials(deepcopy=False)
    folder = trial_folder(space.study.path, RAY_PREFIX + trial_id)
    params = {name: config[name] for name in stage.parameters}
    values = space.trial_values(fixed, {name: decode(v) for name, v in params.items()})
    wall = float(last.get("time_total_s", 0.0) or 0.0)
    by_trained = {int(row[TRAINED_EPOCH]): row for row in rows if finite(row.get(TRAINED_EPOCH))}  # each epoch trained (a trial whose
    # budget.equal gives it fewer epochs than budget.epochs reports several steps in one epoch)
    record = TrialRecord(driver="ray", ray_trial_id=trial_id, trial=f"{study.study_name}#{len(earlier)}", config=values,
                         options=space.options_for(values), epochs=None if shares else len(by_trained) or len(by_epoch),
                         timing=timing(wall, float(last.get("setup_time", 0.0) or 0.0), 0.0,
                                       float(sum(float(r.get("epoch_time", 0.0) or 0.0) for r in (by_trained or by_epoch).values()))))
    if finite(last.get("epoch_budget")):
        record.epoch_budget = int(last["epoch_budget"])
    if finite(last.get("measured_epoch_seconds")):
        record.epoch_seconds = float(last["measured_epoch_seconds"])
    if folder.is_dir():
        record.artifacts = str(folder.resolve())
    best_epoch = last.get("best_epoch")
    if best_epoch is not None and finite(best_epoch):
        record.best_epoch = int(best_epoch)
        record.metrics = best_metrics(last if shares else by_trained.get(int(best_epoch), by_epoch.get(int(best_epoch) + 1, last)))
    if shares and finite(last.get("compute")):
        record.compute = float(last["compute"])
    if last.get("cost") is not None and finite(last.get("cost")):
        record.cost = float(last["cost"])
    if params == defaults_point(space, stage) and not any(protected(t.user_attrs.get("role")) for t in earlier):
        record.role = DEFAULTS  # the study's gain over defaults is measured from it
    twin = duplicated(earlier, last)
    if twin is not None:  # recorded as the Optuna driver records a repeat: the twin's result, not trained again
        outcome = repeat_of(twin)
        record.epochs = None
        for key, value in outcome.attrs.items():
            setattr(record, key, value)
        state, value, intermediate = outcome.state, outcome.values, outcome.intermediate
    elif result.error is not None:
        state, value = TrialState.FAIL, None
        message = str(result.error).strip().splitlines()
        record.reason = f"{type(result.error).__name__}: {message[-1] if message else ''}"
    elif last.get("finished"):
        state = TrialState.COMPLETE
        if shares and finite(last.get("share_epochs")):
            record.epochs = int(last["share_epochs"])  # on all the training set, the last share
        value = [float(last[OBJECTIVE]), float(last[COST])] if space.objective.n_values > 1 else [float(last[OBJECTIVE])]
    elif rows:
        state, value = TrialState.PRUNED, None
        stopped = folder / STOPPED_FILE
        where = (f"the share {share_text(float(last.get('share', 0.0)) or 1.0)} of the training set" if shares
                 else f"epoch {len(by_epoch)}/{space.budget.epochs}")
        record.reason = stopped.read_text().strip() if stopped.is_file() else \
            f"stopped by ASHA after {where} ({space.objective.metric} {float(last[OBJECTIVE]):.4g}: not in the top fraction at this rung)"
    else:
        state, value = TrialState.FAIL, None
        record.reason = "no epoch reported (stopped or interrupted before the first epoch)"
    attrs = user_attrs(record)
    distributions = {name: distribution(space.parameters[name]) for name in stage.parameters}
    frozen = optuna.trial.create_trial(params=params, distributions=distributions, values=value, state=state,
                                       intermediate_values=intermediate if space.objective.n_values == 1 else None,
                                       user_attrs=attrs)
    end = last.get("clock", last.get("timestamp"))  # Ray's own timestamp has whole seconds only
    if finite(end):  # when it ran, not when it was recorded (timelines, trials per hour)
        frozen.datetime_complete = datetime.fromtimestamp(float(end))
        frozen.datetime_start = frozen.datetime_complete - timedelta(seconds=attrs["timing"]["wall"])
    return frozen


def duplicated(earlier: list, last: dict):
    """The recorded trial a duplicate's result (``last``) names, or None."""
    if not last.get(DUPLICATE):
        return None
    twin = json.loads(last[DUPLICATE])
    for t in earlier:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and \
                (t.user_attrs.get("ray_trial_id") == twin.get("ray_trial_id", "") or t.number == twin.get("number")):
            return t
    return None
