"""What a search found: per-stage bests, gain over the defaults, and ``best.yaml`` to train the winner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from optuna.trial import TrialState

from nanopet.tune.space import SearchSpace, _set
from nanopet.data.splits import absolute_datasets
from nanopet.tune.storage import masked, open_storage, storage_url
from nanopet.tune.study import best_trial, created_stages, decode, short


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
        if best is not None and (result.best_value is None or best.values[0] <= result.best_value):
            result.best_value, result.best_trial = best.values[0], best.user_attrs.get("trial")
            result.best_config = dict(best.user_attrs.get("config") or row["best"])
            result.best_dir = Path(best.user_attrs["artifacts"]) if best.user_attrs.get("artifacts") else None
        result.stages.append(row)
    if result.best_config:
        result.best_options = write_best_options(space, result)
    return result


def write_best_options(space: SearchSpace, result: SearchResult) -> Path:
    """``studies/<name>/best.yaml``: an options.yaml with the best values, for ``nanopet-tune train``."""
    options = json.loads(json.dumps(space.options, default=str))
    for name, value in result.best_config.items():
        if name in space.parameters:
            _set(options, space.parameters[name].path, value)
    path = space.study.path / "best.yaml"
    header = (f"# best configuration of study {space.study.name}: {space.objective.metric} "
              f"{result.best_value:.6g} (trial {result.best_trial}, {space.budget.epochs} epochs)\n"
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
    if result.front:
        lines.append(f"  Pareto front ({metric}, cost):")
        for value, cost, config, _ in result.front:
            lines.append(f"    {value:.4g}  {cost:.4g}  " + ", ".join(f"{k}={short(v)}" for k, v in config.items()))
    elif result.best_value is not None:
        gain = f", {100 * result.gain:.1f}% better than the defaults ({result.start_value:.4g})" if result.gain is not None else ""
        lines.append(f"best {metric} {result.best_value:.4g}{gain}: trial {result.best_trial}")
        lines.append("  " + ", ".join(f"{k}={short(v)}" for k, v in result.best_config.items()))
        if result.best_dir is not None:
            lines.append(f"  model: {result.best_dir / 'model.ckpt'}; options: {result.best_options}")
    return lines

