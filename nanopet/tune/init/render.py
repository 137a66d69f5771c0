"""The search space ``init`` writes, in the layout of search_spaces/*.yaml with a comment above every choice, and the
few lines it prints."""

from __future__ import annotations

import textwrap

import yaml

from nanopet.tune.init import rules
from nanopet.tune.init.plan import FILL, MAX_TRIAL_SHARE, STAGE_SETS, TUNED_LEARNING_RATES, Plan, Timing
from nanopet.tune.init.rules import MODEL_SIZES
from nanopet.tune.text import minutes

WIDTH = 118
SHOWN_FRAMES = 10


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _comment(text: str, indent: str = "") -> list[str]:
    """``text`` as comment lines of at most ``WIDTH`` characters; each paragraph (a newline) starts a new line."""
    lines = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, WIDTH - len(indent) - 2, break_on_hyphens=False) or [""]
    return [f"{indent}# {line}".rstrip() for line in lines]


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' * (count != 1)}"


def render(raw: dict, *, report, flagged, choices, plan: Plan, timing: Timing, budget: float, workers: int, command: str,
           dropped: list, pruning) -> str:
    """The search space's text: ``raw`` with every choice under its reason. ``report``: inspect's report of the data
    searched on, ``flagged``: of the files given (the same unless ``dropped`` frames were left out)."""
    species = ", ".join(s.symbol for s in report.species)
    geometry = ", ".join(f"{count:,} {kind}" for kind, count in report.geometry.items())
    lines = _comment(
        f"Search space written by `nanopet-tune init` for {', '.join(flagged.files)} ({_plural(report.structures, 'structure')}, "
        f"{report.atoms:,} atoms; {species}; {geometry}), fitted to a {minutes(budget)} budget on this machine "
        f"({_plural(workers, 'worker')} on {timing.device}, {_plural(timing.threads, 'thread')} each). Each choice says why; "
        "edit any of them (docs/reference/search-space-format.md). Run it:")
    lines += [f"#   {command}", ""]
    lines += _suspicious(flagged, dropped)
    lines += ["seed: 0", f"device: {raw['device']}  # the device init timed on", "base_precision: 32"]
    lines += _comment(choices.targets.reason)
    dataset = raw["training_set"]
    lines.append("training_set:")
    for entry in ([dataset] if isinstance(dataset, dict) else dataset):
        first, rest = ("  ", "  ") if isinstance(dataset, dict) else ("  - ", "    ")
        lines += [f"{first}systems: {_flow(entry['systems'])}", f"{rest}targets:",
                  f"{rest}  energy: {_flow(entry['targets']['energy'])}"]
    lines += _comment(choices.splits.reason)
    lines += [f"validation_set: {raw['validation_set']}", f"test_set: {raw['test_set']}", ""]

    model, training = raw["architecture"]["model"], raw["architecture"]["training"]
    lines += _comment(
        "base hypers: every trial starts from these (then nanopet/default-hypers.yaml), and the defaults' trial trains "
        f"them as they are, so the search's gain is over an untuned run of this size: cutoff {model['cutoff']:g} A (the "
        f"documented {rules.DEFAULT_CUTOFF:g}, within the range), learning rate {training['learning_rate']:g} and batch "
        f"size {training['batch_size']} (documented, the batch where it fits), the model below.")
    lines.append("architecture:")
    lines += _comment(_model_reason(plan, budget), "  ")
    lines.append(f"  model: {_flow(model)}")
    lines += _comment(choices.initialisation.reason, "  ")
    lines += [f"  training: {_flow(training)}", ""]

    study = raw["study"]
    lines += ["study:", f"  name: {study['name']}  # studies/{study['name']}/; reports/{study['name']}/",
              f"  sampler: {_flow(study['sampler'])}"]
    lines += _comment(pruning.reason, "  ")
    lines += [f"  pruner: {_flow(study['pruner'])}", f"  keep_checkpoints: {study['keep_checkpoints']}", "", "objective:"]
    lines += _comment("the default: the geometric mean over the targets of validation RMSE / spread, so the winner is "
                      "good at every target", "  ")
    lines += [f"  metric: {raw['objective']['metric']}", "", "budget:"]
    lines += _comment(_budget_reason(plan, timing, budget, workers), "  ")
    lines += [f"  {key}: {value}" for key, value in raw["budget"].items()]
    lines += ["", "strategy:"]
    lines += _comment(_strategy_reason(plan, choices), "  ")
    lines += [f"  {key}: {_flow(value) if isinstance(value, (list, dict)) else value}" for key, value in raw["strategy"].items()]
    lines += ["", "parameters:"]
    size = plan.size
    reasons = {"cutoff": choices.cutoffs.reason, "batch_size": choices.batches[size.name].reason,
               "learning_rate": rules.learning_rate_reason(size, plan.learning_rates),
               "d_pet": (f"model size: d_pet {' / '.join(map(str, size.d_pet))} and num_gnn_layers {size.gnn_layers[0]}-"
                         f"{size.gnn_layers[1]} around the {size.name} base, searched together last (the least important;"
                         " docs/explanation/search.md)")}
    for key, spec in raw["parameters"].items():
        lines += _comment(reasons[key], "  ") if key in reasons else []
        lines.append(f"  {key}: {_flow(spec)}")
    return "\n".join(lines) + "\n"


def _suspicious(report, dropped: list) -> list[str]:
    if not report.suspicious:
        return []
    text = "suspicious frames found by inspect (0-based): " + "; ".join(
        f"{found.kind}: {', '.join(report.frame_name(ref) for ref in found.frames[:SHOWN_FRAMES])}"
        + (f" and {len(found.frames) - SHOWN_FRAMES} more" if len(found.frames) > SHOWN_FRAMES else "")
        for found in report.suspicious)
    if dropped:
        text += f". Left out with --drop-suspicious ({_plural(len(dropped), 'frame')}): the training set is a copy without them."
    else:
        text += (". They are in the training set: look at them (`nanopet-tune inspect`), or run init again with "
                 "--drop-suspicious to leave them out.")
    return _comment(text) + [""]


def _model_reason(plan: Plan, budget: float) -> str:
    size = plan.size
    text = f"model: {size.describe()}"
    if size is MODEL_SIZES[0]:
        larger = MODEL_SIZES[1]
        return text + (f", as quick.yaml and molecules.yaml: a larger one ({larger.describe()}) is chosen only where "
                       f"its every stage with {TUNED_LEARNING_RATES[0]} learning-rate trials fits the budget at the "
                       "epochs wanted, and this one does not")
    return text + (f": the largest of {', '.join(s.name for s in MODEL_SIZES)} whose every stage, with "
                   f"{TUNED_LEARNING_RATES[0]} learning-rate trials, fits the budget at the epochs wanted (timed here)")


def _budget_reason(plan: Plan, timing: Timing, budget: float, workers: int) -> str:
    rounds = plan.rounds(workers)
    return (
        f"sized here: one epoch of the base hypers took {timing.epoch:.3g} s (validation included), a trial's start "
        f"{timing.setup:.2g} s and budget.equal's measurement {timing.measure:.2g} s, reading the data and its "
        f"neighbour lists {timing.data:.2g} s. equal: time gives every trial the base hypers' training time for "
        f"{plan.epochs} epochs (a faster configuration trains more epochs), so a trial takes about "
        f"{minutes(plan.trial_seconds)} whatever it tries, and the {plan.n_trials} trials ({' + '.join(map(str, plan.counts))}) "
        f"run in {rounds} rounds of {_plural(workers, 'worker')} (a stage's last trials finish before the next starts): "
        f"predicted_seconds, with the start and the report, within {FILL:.0%} of the {minutes(budget)} budget (pruning "
        f"only shortens it). epochs: about {rules.PLATEAU_STEPS} optimizer steps, where a molecular trial leaves the "
        "force plateau, as far as the budget allows. timeout: the budget; no trial starts after it and running ones "
        f"finish (a trial is at most {MAX_TRIAL_SHARE:.0%} of the budget). The search's last line says the time it took "
        "against these two.")


def _strategy_reason(plan: Plan, choices) -> str:
    names = [s if isinstance(s, str) else " + ".join(s) for s in plan.stages]
    text = (f"staged, in the documented order of importance: {', '.join(names)}, each stage from the earlier ones' best; "
            f"split: the trials of each stage, every configuration of a small stage once")
    full = choices.stages(STAGE_SETS[0], plan.size)
    if len(plan.stages) < len(full):
        text += f" (this budget fits {len(plan.stages)} of the {len(full)} stages at enough epochs)"
    return text


def summary_lines(report, flagged, raw: dict, plan: Plan, timing: Timing, budget: float, workers: int,
                  dropped: list) -> list[str]:
    """What init prints: the choices in a few words (``flagged``: inspect's report of the files given)."""
    dataset = raw["training_set"] if isinstance(raw["training_set"], dict) else raw["training_set"][0]
    targets = dataset["targets"]["energy"]
    keys = ", ".join(f"{kind} '{spec['key'] if isinstance(spec, dict) else kind}'" for kind, spec in
                     (("energy", targets), ("forces", targets.get("forces")), ("stress", targets.get("stress")),
                      ("virial", targets.get("virial"))) if spec)
    unit = targets["unit"] + ("" if report.energy_unit_given else " (assumed: the values look like eV)")
    model, training, parameters = raw["architecture"]["model"], raw["architecture"]["training"], raw["parameters"]
    searched = []
    for name, spec in parameters.items():
        values = spec.get("choices") or [spec["low"], spec["high"]]
        searched.append(f"{name} {'/'.join(f'{v:g}' for v in values) if 'choices' in spec else f'{values[0]:g}-{values[1]:g}'}")
    lines = [f"  data: {_plural(report.structures, 'structure')} ({'molecules' if rules.is_molecular(report) else 'bulk'}); "
             f"{keys}; unit {unit}",
             f"  splits: validation {raw['validation_set']}, test {raw['test_set']}",
             f"  searched: {'; '.join(searched)}",
             f"  base: {plan.size.name} model (d_pet {model.get('d_pet', 128)}), cutoff {model['cutoff']:g}, batch "
             f"{training['batch_size']}, learning rate {training['learning_rate']:g}, initialisation "
             f"{training['initialisation']}; pruner {raw['study']['pruner']['type']}",
             f"  timed here: an epoch of the base hypers {timing.epoch:.3g} s, the data {timing.data:.2g} s "
             f"({_plural(timing.threads, 'thread')} per worker)",
             f"  plan: {plan.n_trials} trials ({' + '.join(map(str, plan.counts))}) x {plan.epochs} epochs at equal time on "
             f"{_plural(workers, 'worker')}: predicted {minutes(plan.predicted)} of a {minutes(budget)} budget"]
    for found in flagged.suspicious:
        shown = ", ".join(flagged.frame_name(ref) for ref in found.frames[:SHOWN_FRAMES])
        lines.append(f"  suspicious: {found.kind}: {shown}{' ...' if len(found.frames) > SHOWN_FRAMES else ''}")
    if dropped:
        lines.append(f"  left out (--drop-suspicious): {_plural(len(dropped), 'frame')}, written without them to "
                     f"{', '.join(report.files)}")
    elif flagged.suspicious:
        lines.append("  they are in the training set: look at them with nanopet-tune inspect, or --drop-suspicious")
    return lines
