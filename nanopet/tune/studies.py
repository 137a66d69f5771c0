"""Optuna studies of a search space: sampler, pruner, the stage plan, and opening a stage.

- Storage: see ``storage`` (journal file, SQLite or PostgreSQL; stage studies' names).
- Strategy ``joint`` is one study named ``<name>``; ``staged`` is one study per stage, named
  ``<name>.stage<k>-<parameters>``, each carrying user attributes ``stage``, ``parameters`` and
  ``fixed`` (the values earlier stages chose), so every stage is visible in the storage.
- The first trial of a study is the default hypers (enqueued); a later stage starts instead from
  the previous stage's best trial, added as an already-completed trial (role ``carried``) so it
  is not trained twice. Either way each study reports its gain over where it started.
- A stage (or joint study) whose parameters have no more configurations than its budget, all
  discrete, is enumerated: each configuration once in a seeded random order, whatever the sampler
  (a sampler would repeat some and miss others), and it ends when none is left.
"""

from __future__ import annotations

import json
import warnings

import optuna
from optuna.trial import TrialState

from nanopet.errors import InputError
from nanopet.loss import NO_SKILL_GMEAN
from nanopet.tune.params import decode, distribution, encode
from nanopet.tune.plan import Stage, plan
from nanopet.tune.text import short
from nanopet.tune.pruning import RankingPruner, RankingRule
from nanopet.tune.sampling import RUNG_TRIALS, RungTPESampler
from nanopet.tune.space import SearchSpace
from nanopet.tune.storage import masked, open_storage, storage_url
from nanopet.tune.trial import CARRIED, DEFAULTS, result_attrs


# ---------------------------------------------------------------------------------------------
# Sampler and pruner


def make_sampler(settings: dict, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of ``study.sampler``; ``seed_offset`` keeps parallel workers and resumed runs distinct."""
    kwargs = {k: v for k, v in settings.items() if k not in ("type", "seed", "rank_at", "rung_trials")}
    seed = settings.get("seed")
    seed = None if seed is None else int(seed) + seed_offset
    kind = settings["type"]
    if kind == "tpe":
        tpe = optuna.samplers.TPESampler(seed=seed, **kwargs)
        if settings.get("rank_at", "final") == "rung":
            return RungTPESampler(tpe, settings.get("rung_trials", RUNG_TRIALS))
        return tpe
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, **kwargs)
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise InputError("study.sampler.type: cmaes needs the cmaes package (pip install cmaes)") from None
        return optuna.samplers.CmaEsSampler(seed=seed, **kwargs)
    raise InputError(f"study.sampler.type: unknown sampler {kind!r}")


class Enumerate(optuna.samplers.BruteForceSampler):
    """Every configuration once, in a seeded random order, skipping those finished, failed or running. The
    stage ends by ``remaining`` (BruteForceSampler's own ``study.stop()`` works only inside ``optimize``)."""

    def __init__(self, seed: int | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(seed=seed)

    def after_trial(self, study, trial, state, values) -> None:
        pass


def stage_sampler(space: SearchSpace, stage: Stage, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """``Enumerate`` for an enumerated stage, else the sampler of ``study.sampler``."""
    if stage.enumerated:
        seed = space.study.sampler.get("seed")
        return Enumerate(None if seed is None else int(seed) + seed_offset)
    return make_sampler(space.study.sampler, seed_offset)


def make_pruner(settings: dict, epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of ``study.pruner``; ``epochs``: the last step a trial reports (``Budget.max_resource``:
    its epochs, or its last data share's step), hyperband's default max_resource."""
    kwargs = {k: v for k, v in settings.items() if k != "type"}
    kind = settings["type"]
    if kind == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if kind == "hyperband":
        kwargs.setdefault("max_resource", epochs)
        return optuna.pruners.HyperbandPruner(**kwargs)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    if kind == "ranking":
        return RankingPruner(RankingRule.of(settings, epochs))
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------------
# Parameters as Optuna distributions (non-scalar choices, e.g. heads: {energy: linear}, travel as JSON)


# ---------------------------------------------------------------------------------------------
# Stages


def created_stages(space: SearchSpace, storage) -> list[tuple[Stage, optuna.Study]]:
    """The stages whose studies exist in ``storage``, with their studies, in order (a search creates them in order)."""
    created = []
    for stage in plan(space):
        try:
            created.append((stage, optuna.load_study(study_name=stage.study_name, storage=storage)))
        except KeyError:
            break
    return created


def directions(space: SearchSpace) -> list[str]:
    return ["minimize"] * space.objective.n_values


def open_stage(storage, space: SearchSpace, stage: Stage, fixed: dict, previous: optuna.trial.FrozenTrial | None,
               worker_index: int = 0, enqueue_defaults: bool = True) -> optuna.Study:
    """Create or load the study of ``stage`` (call under the study lock). A new study gets its first trial:
    the defaults (enqueued, unless ``enqueue_defaults`` is False: the Ray driver's searcher proposes
    them itself), or ``previous`` (the earlier stage's best) carried in as a completed trial."""
    study = optuna.create_study(storage=storage, study_name=stage.study_name, directions=directions(space),
                                load_if_exists=True, pruner=make_pruner(space.study.pruner, space.budget.max_resource))
    attrs = study.user_attrs
    fingerprint = space.fingerprint()
    if "fingerprint" not in attrs:
        for key, value in {"fingerprint": fingerprint, "search": space.study.name, "stage": stage.index,
                           "stages": stage.count, "parameters": list(stage.parameters), "fixed": fixed,
                           "metric": space.objective.metric, "objective": vars(space.objective),
                           "source": str(space.source) if space.source else None,
                           **({"data_shares": list(space.budget.data_shares)} if space.budget.data_shares else {})}.items():
            study.set_user_attr(key, value)
    elif attrs["fingerprint"] != fingerprint:
        raise InputError(f"study {stage.study_name!r} in {masked(storage_url(space))} was created from a different search space "
                         f"(dataset, base hypers, parameters or objective changed); use --study-name NEW or remove {space.study.path}")
    elif attrs.get("fixed") != json.loads(json.dumps(fixed)):
        raise InputError(f"study {stage.study_name!r} was run with earlier stages' values {attrs.get('fixed')}, but they are "
                         f"now {fixed} (an earlier stage's budget grew); use --study-name NEW")
    trials = study.get_trials(deepcopy=False)
    study.sampler = stage_sampler(space, stage, seed_offset=1_000_003 * worker_index + len(trials))
    if not trials and (previous is not None or enqueue_defaults):
        start_trial(study, space, stage, fixed, previous)
    return study


def defaults_point(space: SearchSpace, stage: Stage) -> dict | None:
    """The parameters (as stored) of the first stage's defaults trial, which is never stopped early (the gain is
    measured from it); None in a later stage (it starts from the carried-in best) or when a base value is out of
    its parameter's choices."""
    values = space.defaults()
    if stage.index != 1 or not all(name in values for name in stage.parameters):
        return None
    return {name: encode(values[name]) for name in stage.parameters}


def start_trial(study: optuna.Study, space: SearchSpace, stage: Stage, fixed: dict, previous) -> None:
    if previous is None:
        defaults = space.defaults()
        params = {name: defaults[name] for name in stage.parameters if name in defaults}
        study.enqueue_trial({k: encode(v) for k, v in params.items()}, user_attrs={"role": DEFAULTS}, skip_if_exists=True)
        return
    # the previous best trained this stage's parameters at their base values: carry it in if they are in range
    params = {name: space.base_value(name) for name in stage.parameters}
    parameters = space.parameters
    if not all(parameters[k].contains(v) for k, v in params.items()):
        study.set_user_attr("baseline", {"values": previous.values, "trial": previous.user_attrs.get("trial")})
        return
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=previous.values,
        params={k: encode(v) for k, v in params.items()},
        distributions={k: distribution(parameters[k]) for k in params},
        user_attrs={**result_attrs(previous), "role": CARRIED, "config": {**fixed, **params}, "trial": previous.user_attrs.get("trial")},
        intermediate_values=dict(previous.intermediate_values),
    ))


def best_trial(study: optuna.Study):
    """The best completed trial (single objective), or None."""
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return min(completed, key=lambda t: t.values[0]) if completed else None


def start_of(study: optuna.Study):
    """The stage's starting point, when it completed: its defaults trial (first stage) or the carried-in best of the
    stage before (which trained this stage's parameters at their base values)."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("role") in (DEFAULTS, CARRIED) and t.values), None)


def chosen_trial(study: optuna.Study):
    """The trial a finished stage chose (``chosen_values`` records it), or None."""
    number = (study.user_attrs.get("chosen") or {}).get("trial")
    if number is None:
        return None
    trial = study.get_trials(deepcopy=False)[number]
    return trial if trial.state == TrialState.COMPLETE and trial.values else None


def chosen_values(space: SearchSpace, stage: Stage, fixed: dict, study: optuna.Study) -> tuple[dict, object, str]:
    """Values fixed for the next stages: ``fixed`` plus this stage's choice, the trial it comes from, and a line that
    says why. The choice is the stage's best trial, unless it beats the stage's starting point (its defaults or
    carried-in trial) by less than ``strategy.min_improvement`` of that trial's value: then the trials cannot be told
    apart from noise and the starting values are carried forward (a stage must not lock in a choice made on noise).
    With ``objective.metric: val_rmse_gmean`` (and no cost), values at or above 1 (no better than predicting each
    target's mean: a stage whose trials all sit on the force plateau) count as 1, so a best of 1.0 against a start
    of 1.16 is noise, not a 14% gain. With no completed trial, the defaults. The choice is recorded in the study
    (user attribute ``chosen``)."""
    best = best_trial(study)
    if best is None:
        defaults = space.defaults()
        return space.trial_values(fixed, {k: defaults[k] for k in stage.parameters if k in defaults}), None, \
            f"{stage.label}: no completed trial; keeping the base values"
    start, margin = start_of(study), space.strategy.min_improvement
    shown = lambda trial: ", ".join(f"{k}={short(decode(trial.params[k]))}" for k in stage.parameters if k in trial.params)  # noqa: E731
    chosen, line = best, f"{stage.label}: best {shown(best)} ({best.values[0]:.4g})"
    no_skill = NO_SKILL_GMEAN if space.objective.metric == "val_rmse_gmean" and not space.objective.needs_cost else None
    score = lambda trial: min(trial.values[0], no_skill) if no_skill else trial.values[0]  # noqa: E731
    if start is not None and best is not start and score(best) > score(start) * (1.0 - margin):
        chosen = start
        if no_skill and score(start) == no_skill:
            line = (f"{stage.label}: best {shown(best)} ({best.values[0]:.4g}) and the starting {shown(start)} "
                    f"({start.values[0]:.4g}) are no better than predicting each target's mean (val_rmse_gmean "
                    f"{no_skill:g}, within {100 * margin:g}%): nothing learned to rank them by, keeping {shown(start)}; "
                    f"longer trials (a larger budget.epochs) could leave the plateau")
        else:
            line = (f"{stage.label}: best {shown(best)} ({best.values[0]:.4g}) is within {100 * margin:g}% of the starting "
                    f"{shown(start)} ({start.values[0]:.4g}): indistinguishable, keeping {shown(start)}")
    elif start is not None and best is not start:
        line += f", {100 * (1 - best.values[0] / start.values[0]):.1f}% better than the starting {shown(start)}"
    if study.user_attrs.get("chosen", {}).get("trial") != chosen.number:
        study.set_user_attr("chosen", {"trial": chosen.number, "line": line})
    return space.trial_values(fixed, {k: decode(chosen.params[k]) for k in stage.parameters if k in chosen.params}), chosen, line


# ---------------------------------------------------------------------------------------------
# Counting trials against the budget


def check_resumable(space: SearchSpace) -> None:
    """Fail early (before starting workers) if a study of this name was made from another search space."""
    storage = open_storage(storage_url(space))
    names = {s.study_name: s for s in storage.get_all_studies()}
    for stage in plan(space):
        study = names.get(stage.study_name)
        if study is not None and study.user_attrs.get("fingerprint") not in (None, space.fingerprint()):
            raise InputError(f"study {stage.study_name!r} in {masked(storage_url(space))} was created from a different search "
                             f"space (dataset, base hypers, parameters or objective changed); use --study-name NEW or "
                             f"remove {space.study.path}")
