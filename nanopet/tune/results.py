"""What a search found: per-stage bests, gain over the defaults, and ``best.yaml`` to train the winner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from optuna.trial import TrialState

from nanopet.tune.space import RETRAIN_EPOCH_FACTOR, SearchSpace, _set
from nanopet.data.splits import absolute_datasets
from nanopet.tune.storage import masked, open_storage, storage_url
from nanopet.tune.studies import best_trial, chosen_trial, created_stages
from nanopet.tune.params import decode
from nanopet.tune.text import short


@dataclass
class SearchResult:
    status: str  # completed | timeout | interrupted
    study: str
    storage: str
    stages: list = field(default_factory=list)  # one dict per stage (studies that exist)
    best_value: float | None = None
    best_config: dict = field(default_factory=dict)  # parameter name -> value
    best_trial: str | None = None  # "<study>#<number>"
    best_dir: Path | None = None  # its artifacts (model.ckpt, metrics.csv)
    start_value: float | None = None  # the defaults trial's value
    front: list = field(default_factory=list)  # two-objective studies: [(metric, cost, config)]
    best_options: Path | None = None  # studies/<name>/best.yaml
    best_metrics: dict = field(default_factory=dict)  # the best trial's validation metrics (at its best epoch)
    start_metrics: dict = field(default_factory=dict)  # the defaults trial's
    best_epoch_seconds: float | None = None  # training seconds per epoch of the best trial
    start_epoch_seconds: float | None = None  # of the defaults trial

    @property
    def gain(self) -> float | None:
        if self.best_value is None or not self.start_value:
            return None
        return 1.0 - self.best_value / self.start_value


def summarize(space: SearchSpace, status: str) -> SearchResult:
    storage = open_storage(storage_url(space))
    result = SearchResult(status, space.study.name, masked(storage_url(space)))
    for stage, study in created_stages(space, storage):
        trials = study.get_trials(deepcopy=False)
        own = [t for t in trials if t.user_attrs.get("role") != "carried"]
        counts = {s.name.lower(): sum(t.state == s for t in own) for s in TrialState}
        row = {"study": stage.study_name, "label": stage.label, "parameters": list(stage.parameters),
               "budget": stage.n_trials, **counts}
        start = next((t for t in trials if t.user_attrs.get("role") in ("defaults", "carried") and t.state == TrialState.COMPLETE), None)
        if start is not None:
            row["start_value"] = start.values[0]
            if stage.index == 1:
                result.start_value = start.values[0]
        if len(study.directions) > 1:
            result.front = [(t.values[0], t.values[1], t.user_attrs.get("config", {}), t.user_attrs.get("artifacts"))
                            for t in sorted(study.best_trials, key=lambda t: t.values[0])]
        best = best_trial(study)
        if best is not None:
            row["best_value"] = best.values[0]
            row["best"] = {k: decode(v) for k, v in best.params.items()}
        chosen = chosen_trial(study)
        if chosen is not None:
            row["chosen"] = study.user_attrs["chosen"]["line"]
        final = chosen is not None and stage.index == stage.count  # the search's choice, once its last stage chose
        if final or (best is not None and (result.best_value is None or best.values[0] <= result.best_value)):
            pick = chosen if final else best
            result.best_value, result.best_trial = pick.values[0], pick.user_attrs.get("trial")
            result.best_config = dict(pick.user_attrs.get("config") or {k: decode(v) for k, v in pick.params.items()})
            result.best_dir = Path(pick.user_attrs["artifacts"]) if pick.user_attrs.get("artifacts") else None
            result.best_metrics = dict(pick.user_attrs.get("metrics") or {})
            result.best_epoch_seconds = epoch_seconds_of(pick)
        if start is not None and stage.index == 1:
            result.start_metrics = dict(start.user_attrs.get("metrics") or {})
            result.start_epoch_seconds = epoch_seconds_of(start)
        result.stages.append(row)
    if result.best_config:
        result.best_options = write_best_options(space, result)
    return result


def epoch_seconds_of(trial) -> float | None:
    """A finished trial's training seconds per epoch (its ``timing`` over its epochs), or None."""
    timing, epochs = trial.user_attrs.get("timing") or {}, trial.user_attrs.get("epochs")
    return timing["epochs"] / epochs if epochs and timing.get("epochs") else None


TARGET_METRICS = (("energy", "val_energy_rmse", "meV/atom", 1000.0), ("forces", "val_forces_rmse", "meV/A", 1000.0),
                  ("stress", "val_stress_rmse", "GPa", 1.0))


def comparison_lines(best: dict, start: dict, best_seconds: float | None, start_seconds: float | None) -> list[str]:
    """The best trial against the defaults trial on every target (validation RMSE at each one's best epoch) and in
    training time per epoch; a target on which the best is worse is said plainly."""
    parts, worse = [], []
    for target, key, unit, factor in TARGET_METRICS:
        if key in best and key in start and start[key]:
            gain = 1.0 - best[key] / start[key]
            parts.append(f"{target} {best[key] * factor:.4g} vs {start[key] * factor:.4g} {unit} ({100 * gain:+.1f}%)")
            if gain < 0:
                worse.append(target)
    lines = []
    if parts:
        lines.append("  validation RMSE, best vs defaults: " + ", ".join(parts))
    if best_seconds and start_seconds:
        lines.append(f"  training time per epoch: {best_seconds:.3g} s vs {start_seconds:.3g} s ({best_seconds / start_seconds:.2f}x)")
    if worse:
        lines.append(f"  WORSE than the defaults on {', '.join(worse)} (validation, at the search's epochs)")
    return lines


def write_best_options(space: SearchSpace, result: SearchResult) -> Path:
    """``studies/<name>/best.yaml``: an options.yaml with the best values, for ``nanopet-tune train``."""
    options = json.loads(json.dumps(space.options, default=str))
    for name, value in result.best_config.items():
        if name in space.parameters:
            _set(options, space.parameters[name].path, value)
    training = options["architecture"]["training"]
    if training.get("scheduler_epochs") == RETRAIN_EPOCH_FACTOR * space.budget.epochs:  # the search's, not the user's:
        del training["scheduler_epochs"]  # best.yaml's run anneals over its own epochs
    path = space.study.path / "best.yaml"
    header = (f"# best configuration of study {space.study.name}, chosen by objective.metric {space.objective.metric}: "
              f"{result.best_value:.6g} (trial {result.best_trial}, {space.budget.epochs} epochs, budget.equal "
              f"{space.budget.equal})\n"
              "# train it longer with: nanopet-tune train " + str(path) + "  (raise architecture.training.num_epochs)\n")
    options = absolute_datasets(options, space.base_dir)  # relative to the search file, wherever best.yaml is read
    path.write_text(header + yaml.safe_dump(options, sort_keys=False))
    return path


def report_lines(result: SearchResult, space: SearchSpace) -> list[str]:
    metric = space.objective.metric
    lines = [f"study {result.study} ({result.status}), storage {result.storage}"]
    for row in result.stages:
        budget = f"/{row['budget']}" if row.get("budget") else ""
        done = row["complete"] + row["pruned"] + row["fail"]
        text = (f"  {row['label']}: {done}{budget} trials ({row['complete']} complete, {row['pruned']} pruned, "
                f"{row['fail']} failed)")
        if "best_value" in row:
            text += f", best {row['best_value']:.4g}"
            if "start_value" in row:
                text += f" (start {row['start_value']:.4g})"
            text += " with " + ", ".join(f"{k}={short(v)}" for k, v in row["best"].items())
        lines.append(text)
        if "chosen" in row and "within" in row["chosen"]:
            lines.append(f"    {row['chosen'].split(': ', 1)[1]}")
    if result.front:
        lines.append(f"  Pareto front ({metric}, cost):")
        for value, cost, config, _ in result.front:
            lines.append(f"    {value:.4g}  {cost:.4g}  " + ", ".join(f"{k}={short(v)}" for k, v in config.items()))
    elif result.best_value is not None:
        gain = f", {100 * result.gain:.1f}% better than the defaults ({result.start_value:.4g})" if result.gain is not None else ""
        lines.append(f"best {metric} {result.best_value:.4g}{gain}: trial {result.best_trial} (objective.metric {metric}, "
                     f"budget.equal {space.budget.equal})")
        lines.append("  " + ", ".join(f"{k}={short(v)}" for k, v in result.best_config.items()))
        lines += comparison_lines(result.best_metrics, result.start_metrics, result.best_epoch_seconds, result.start_epoch_seconds)
        if result.best_dir is not None:
            lines.append(f"  model: {result.best_dir / 'model.ckpt'}; options: {result.best_options}")
    return lines

