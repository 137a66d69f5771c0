"""What ``init`` decides from the data alone, each decision with the reason written above it in the search space.

- ``label_targets``: the keys and the energy unit (a one-line error naming the flag where they cannot be decided);
- ``splits``: validation and test fractions by size;
- ``cutoff_range``: from the neighbour table;
- ``initialisation``, ``pruner``: molecules or bulk, as measured (docs/howto/pruner-fidelity.md);
- ``MODEL_SIZES``: the model-size ladder, with each size's learning rates (``learning_rates``) and
  ``batch_sizes`` (cut to what the data and memory allow);
- ``epochs_wanted``: the epochs a trial should have to leave the force plateau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanopet.errors import InputError

VALIDATION_STRUCTURES, TEST_STRUCTURES = 200, 100  # wanted in the validation and test sets, within the shares below
VALIDATION_SHARE = (0.05, 0.2)
TEST_SHARE = (0.05, 0.1)
CUTOFF_BOUNDS = (3.0, 7.0)  # A, the neighbour table's range
CUTOFF_STEP = 0.5
BULK_CUTOFF_SPAN = 1.0  # A either side of the cutoff that gives the median atom 20 neighbours
MOLECULE_NEIGHBOUR_SHARE = 0.8  # molecules: up to where an atom sees this share of the neighbours it sees at 7 A
DEFAULT_CUTOFF = 5.0  # default-hypers.yaml: the defaults' trial trains at it (moved into the range)
DEFAULT_BATCH, DEFAULT_LEARNING_RATE = 16, 3.0e-4  # default-hypers.yaml
LEARNING_RATE_FACTOR = 2.0  # between neighbouring values of an enumerated learning-rate stage
MIN_STEPS_PER_EPOCH = 10  # a batch size leaves at least this many optimizer steps an epoch
PLATEAU_STEPS = 400  # optimizer steps a trial should take to leave the force plateau (see epochs_wanted)
MIN_EPOCHS, MAX_EPOCHS = 4, 200


class Reasoned(dict):
    """Choices (a mapping written into the space) that carry ``reason``, the comment written above them."""

    def __init__(self, values: dict, reason: str):
        super().__init__(values)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Labels and units


def label_targets(report, energy_key: str | None = None, forces_key: str | None = None,
                  stress_key: str | None = None) -> Reasoned:
    """The ``targets:`` of the data: the keys inspect found, or those given (``none`` switches forces or stress
    off). A key that cannot be decided (no energy, several candidates, one missing in some frames) or an energy
    unit that the file cannot tell and whose values do not look like eV is an InputError naming the flag."""
    name = report.files[0] if len(report.files) == 1 else f"{len(report.files)} files"
    energy = _pick(report, "energy", report.keys.energy, energy_key, "--energy-key", name)
    if energy is None:
        raise InputError(f"{name}: no energy found (a number in the comment line whose name contains 'energy'); "
                         "name it with --energy-key KEY")
    forces = _pick(report, "forces", report.keys.forces, forces_key, "--forces-key", name)
    kind = "virial" if (stress_key in report.keys.virial or not report.keys.stress) and report.keys.virial else "stress"
    stress = _pick(report, kind, getattr(report.keys, kind), stress_key, "--stress-key", name)
    _check_unit(report, name)
    targets = {"key": energy, "unit": report.energy_unit, "forces": {"key": forces} if forces else False}
    if stress == "stress" and report.key_frames.get(stress, 0) < report.structures:
        targets["stress"] = True  # the reader's default key: frames that are not periodic may lack it
    else:
        targets[kind] = {"key": stress} if stress else False
    found = [f"{what} '{key}' ({report.key_frames.get(key, 0):,} frames)" for what, key in
             (("energy", energy), ("forces", forces), (kind, stress)) if key]
    missing = [what for what, key in (("forces", forces), ("stress", stress)) if not key]
    text = "keys: " + ", ".join(found) + (f"; no {' or '.join(missing)}" if missing else "")
    given = [flag for flag, value in (("--energy-key", energy_key), ("--forces-key", forces_key),
                                      ("--stress-key", stress_key)) if value]
    text += (f" ({', '.join(given)} given)" if given else " (as inspect finds them)") + "\n" + _unit_reason(report)
    return Reasoned({"energy": targets}, text)


def _pick(report, kind: str, found: tuple, given: str | None, flag: str, name: str) -> str | None:
    """The key of ``kind`` (``found``: inspect's candidates): the one given, else the only one found."""
    if given == "none" and kind != "energy":
        return None
    if given:
        if given not in found:
            raise InputError(f"{flag} {given}: no {kind} under that key in {name}; found: {', '.join(found) or 'none'}")
        key = given
    elif len(found) > 1:
        off = "" if kind == "energy" else f" (or {flag} none)"
        raise InputError(f"{name}: several {kind} keys ({', '.join(found)}); say which with {flag} KEY{off}")
    else:
        key = found[0] if found else None
    held = report.key_frames.get(key, 0)
    if key is not None and held < report.structures and key != "stress":
        fix = f"{flag} none trains without {kind}" if kind != "energy" else "leave those frames out of the file"
        raise InputError(f"{name}: {kind} key '{key}' is missing in {report.structures - held:,} of "
                         f"{report.structures:,} frames (training needs it in every frame); {fix}")
    return key


UNIT_HINTS = ("forces:", "energies:")  # inspect's hints about the energy unit (a stress hint is about the stress's own)


def _check_unit(report, name: str) -> None:
    hints = [hint for hint in report.unit_hints if hint.startswith(UNIT_HINTS)]
    if hints and not report.energy_unit_given:
        first = hints[0].split(";")[0].split(" (")[0]
        outliers = [found for found in report.suspicious if found.kind in ("energy per atom outliers", "force outliers")]
        some = (f"; if only some frames are off (inspect flags {', '.join(f'{len(f.frames)} {f.kind}' for f in outliers)}), "
                "leave them out with --drop-suspicious") if outliers else ""
        raise InputError(f"{name}: the file does not say its energy unit and the values do not look like eV ({first}); "
                         f"give it with --energy-unit (eV, meV, Hartree, kcal/mol, kJ/mol, Ry){some}")


def _unit_reason(report) -> str:
    if report.energy_unit_given:
        return f"unit: {report.energy_unit}, given with --energy-unit (lengths in A)"
    values = []
    if report.force_rms is not None:
        values.append(f"force RMS {report.force_rms:.3g} eV/A")
    if report.energy_residual is not None:
        values.append(f"energies {report.energy_residual:.3g} eV/atom around a per-species baseline")
    return (f"unit: eV assumed: the file cannot tell, and its values look like eV ({', '.join(values) or 'no labels'}); "
            "if not, run init again with --energy-unit (lengths in A)")


# ---------------------------------------------------------------------------------------------
# Splits, cutoffs, initialisation, pruner


def is_molecular(report) -> bool:
    """Most structures are molecules (no periodic direction without a vacuum gap)."""
    return report.geometry.get("molecule", 0) > report.structures / 2


def splits(structures: int) -> Reasoned:
    """Validation and test fractions: about 200 and 100 structures, within 5-20% and 5-10% of the data."""
    validation = round(min(max(VALIDATION_STRUCTURES / structures, VALIDATION_SHARE[0]), VALIDATION_SHARE[1]), 2)
    test = round(min(max(TEST_STRUCTURES / structures, TEST_SHARE[0]), TEST_SHARE[1]), 2)
    counts = [max(1, round(share * structures)) for share in (validation, test)]
    reason = (f"splits by size: {counts[0]:,} validation structures ({validation:g}): every trial's value is a validation "
              f"RMSE, and on fewer than ~100-200 it moves between trials by more than strategy.min_improvement; "
              f"{counts[1]:,} test structures ({test:g}) held out for `nanopet-tune retrain`, which reports on them")
    return Reasoned({"validation_set": validation, "test_set": test}, reason)


def _half(value: float) -> float:
    return round(value / CUTOFF_STEP) * CUTOFF_STEP


def cutoff_range(report) -> Reasoned:
    """The cutoff's range (step 0.5 A) from the neighbour table: molecules from 3 A up to where an atom sees 80% of
    the neighbours it sees at 7 A (and not beyond the widest molecule); bulk 1 A either side of the cutoff that
    gives the median atom 20 neighbours, within 3-7 A and not below the second neighbour shell's end."""
    low_bound, high_bound = CUTOFF_BOUNDS
    neighbours = report.neighbours
    if neighbours is None:
        return Reasoned({"low": low_bound, "high": DEFAULT_CUTOFF},
                        f"cutoff {low_bound:g}-{DEFAULT_CUTOFF:g} A: no usable positions to count neighbours on")
    table = ", ".join(f"{row.mean:.1f} at {row.cutoff:g} A" for row in neighbours.rows)
    if is_molecular(report):
        widest = neighbours.rows[-1]
        grid = [low_bound + CUTOFF_STEP * k for k in range(1, int(round((widest.cutoff - low_bound) / CUTOFF_STEP)) + 1)]
        high = next((c for c in grid if neighbours.mean_at(c) >= MOLECULE_NEIGHBOUR_SHARE * widest.mean), widest.cutoff)
        if neighbours.molecule_diameter is not None:
            high = min(high, max(low_bound + CUTOFF_STEP, math.ceil(neighbours.molecule_diameter / CUTOFF_STEP) * CUTOFF_STEP))
        low = low_bound
        reason = (f"cutoff {low:g}-{high:g} A (molecules): from {low:g} A up to where the mean atom sees "
                  f"{100 * MOLECULE_NEIGHBOUR_SHARE:.0f}% of the neighbours it sees at {widest.cutoff:g} A "
                  f"({neighbours.mean_at(high):.1f} of {widest.mean:.1f}): a longer cutoff adds cost, not neighbours")
        if neighbours.molecule_diameter is not None:
            reason += f"; the widest molecule is {neighbours.molecule_diameter:.1f} A across"
        reason += ("; search_spaces/molecules.yaml's 3-5 A, where the built-in molecules' searches chose 3.5-5 A "
                   "(benchmarks/results/molecules-search.txt)")
    else:
        centre = neighbours.cutoff_for_20
        if centre is None:
            centre, why = high_bound - BULK_CUTOFF_SPAN, f"fewer than 20 neighbours within {neighbours.rows[-1].cutoff:g} A"
        else:
            why = f"the median atom has 20 neighbours within {centre:.2f} A"
        low = max(_half(centre) - BULK_CUTOFF_SPAN, low_bound)
        floor = _half(neighbours.shell_ends[1]) if len(neighbours.shell_ends) > 1 else None
        floored = floor is not None and floor > low
        low = min(floor if floored else low, high_bound - 2 * CUTOFF_STEP)
        high = max(min(_half(centre) + BULK_CUTOFF_SPAN, high_bound), low + 2 * CUTOFF_STEP)
        reason = (f"cutoff {low:g}-{high:g} A: {why}; {BULK_CUTOFF_SPAN:g} A either side of it, within "
                  f"{low_bound:g}-{high_bound:g} A (a trial's cost grows with its neighbours)")
        if floored:
            reason += (f", and not below the second neighbour shell's end ({neighbours.shell_ends[1]:g} A): a cutoff "
                       "that sees only the nearest neighbours learns fastest in a short trial and converges worse (the "
                       "EMT alloy: cutoff 3 won 10-epoch trials by 71%, then had 76% worse test forces than cutoff 4 "
                       "after 100 epochs; floored at 4 A the winners were 24% and 41% better; benchmarks/results/winner.txt)")
    return Reasoned({"low": float(low), "high": float(high)}, f"{reason}. Neighbours per atom: {table}")


def initialisation(report) -> Reasoned:
    if is_molecular(report):
        return Reasoned({"initialisation": "balanced"}, (
            "initialisation: balanced (molecules): the encoder's first layer scaled so the edge tokens carry as much "
            "geometry as species; on the built-in molecules it left the force plateau (1.0 eV/A) at epochs 12-14 "
            "where torch's stayed above it for 20-40 (benchmarks/results/plateau.txt), and the "
            "quick template with torch's ended 0.0% better than its defaults on a molecular file (issue #40)"))
    return Reasoned({"initialisation": "torch"}, (
        "initialisation: torch (bulk), the default: balanced fitted 20 EMT cells worse over 60 epochs (forces 0.105 "
        "vs 0.050 eV/A; docs/explanation/trainer.md, 'The force plateau')"))


def pruner(report, epochs: int) -> Reasoned:
    """docs/howto/pruner-fidelity.md: ranking on molecules, the median from a third of the epochs on
    bulk."""
    if is_molecular(report):
        return Reasoned({"type": "ranking"}, (
            "pruner: ranking (molecules): it decides only once the finished trials' early values rank their final "
            "ones (tau >= 0.6), so no trial is pruned while all sit on the force plateau; as molecules.yaml "
            "(docs/howto/pruner-fidelity.md)"))
    warm_up = max(2, round(epochs / 3))
    return Reasoned({"type": "median", "n_startup_trials": 3, "n_warmup_steps": warm_up}, (
        f"pruner: median from epoch {warm_up + 1} of {epochs} (a third): on the EMT alloy the early epochs rank the "
        "trials late (Kendall tau 0.01-0.26 after epoch 3 of 27, 0.33-0.63 after epoch 9), and successive halving from "
        "epoch 3 pruned the best (docs/howto/pruner-fidelity.md)"))


def epochs_wanted(steps_per_epoch: int) -> int:
    """Epochs for about ``PLATEAU_STEPS`` optimizer steps: 240-400 training molecules at batch 4-16 left the force
    plateau after 4-8 epochs, and a trial's plateau is set by its optimizer steps, not its epochs
    (benchmarks/results/molecules-search.txt, docs/howto/pruner-fidelity.md)."""
    return min(max(MIN_EPOCHS, math.ceil(PLATEAU_STEPS / max(1, steps_per_epoch))), MAX_EPOCHS)


# ---------------------------------------------------------------------------------------------
# Model sizes, learning rates, batch sizes


@dataclass(frozen=True)
class ModelSize:
    """A rung of the model-size ladder: the base model and the model stage's choices around it."""

    name: str
    model: dict
    d_pet: tuple
    gnn_layers: tuple  # (low, high)
    learning_rate: tuple  # (low, high)
    batch_sizes: tuple  # the batch-size stage's candidates (then cut to what the data and memory allow)

    @property
    def configurations(self) -> int:
        """Of the model stage (d_pet x GNN layers)."""
        return len(self.d_pet) * (self.gnn_layers[1] - self.gnn_layers[0] + 1)

    def describe(self) -> str:
        model = self.model
        return (f"{self.name} (d_pet {model.get('d_pet', 128)}, {model.get('num_gnn_layers', 2)} GNN x "
                f"{model.get('num_attention_layers', 2)} attention layers)")


MODEL_SIZES = (  # smallest first; tiny is quick.yaml's and molecules.yaml's, default is default-hypers.yaml's
    ModelSize("tiny", {"d_pet": 16, "num_heads": 2, "num_gnn_layers": 1, "num_attention_layers": 1}, (8, 16, 32), (1, 2),
              (3.0e-4, 1.0e-2), (2, 4, 8, 16)),
    ModelSize("small", {"d_pet": 64, "num_heads": 4, "num_gnn_layers": 2, "num_attention_layers": 2}, (32, 64, 128), (1, 3),
              (1.0e-4, 3.0e-3), (4, 8, 16, 32)),
    ModelSize("default", {}, (64, 128, 256), (1, 4), (1.0e-4, 3.0e-3), (8, 16, 32, 64)),
)


def learning_rates(size: ModelSize, factor: float = LEARNING_RATE_FACTOR) -> tuple:
    """The enumerated learning-rate stage's values: the documented 3e-4 times powers of ``factor`` within the size's
    range, 2 significant digits."""
    low, high = size.learning_rate
    powers = range(math.ceil(math.log(low / DEFAULT_LEARNING_RATE, factor) - 1e-9),
                   math.floor(math.log(high / DEFAULT_LEARNING_RATE, factor) + 1e-9) + 1)
    return tuple(float(f"{DEFAULT_LEARNING_RATE * factor ** k:.2g}") for k in powers)


def learning_rate_reason(size: ModelSize, grid: tuple | None) -> str:
    low, high = size.learning_rate
    text = (f"learning rate {low:g}-{high:g} ({'tiny models, as quick.yaml and molecules.yaml' if size is MODEL_SIZES[0] else 'as default.yaml'}): "
            "its top is for the search to rule out (above 2e-3 molecular trials stayed at the zero-force value; "
            "docs/howto/pruner-fidelity.md)")
    if grid:
        text += (f"; each of {len(grid)} values a factor {grid[1] / grid[0]:.2g} apart once: a few random draws from the "
                 "range can all miss the rates that leave the force plateau (benchmarks/bench_init.py)")
    else:
        text += "; searched by TPE on a log scale (enough trials for its model of the range)"
    return text


def batch_sizes(size: ModelSize, train_structures: int, atoms_fit: int | None, largest_structure: int) -> Reasoned:
    """The batch-size stage's choices: the size's candidates that leave at least ``MIN_STEPS_PER_EPOCH`` optimizer
    steps an epoch and whose batch of the largest structures fits in memory (``atoms_fit`` atoms in one pass); the
    base batch size is the documented 16, or the largest choice below it."""
    most_steps = max(1, train_structures // MIN_STEPS_PER_EPOCH)
    most_memory = max(1, atoms_fit // max(1, largest_structure)) if atoms_fit else None
    choices = [b for b in size.batch_sizes if b <= most_steps and (most_memory is None or b <= most_memory)]
    if not choices:
        choices = [max(1, min(most_steps, most_memory or most_steps))]
    base = max([b for b in choices if b <= DEFAULT_BATCH] or [choices[0]])
    reason = (f"batch sizes {', '.join(map(str, choices))}: at least {MIN_STEPS_PER_EPOCH} optimizer steps an epoch on "
              f"{train_structures:,} training structures (batch <= {most_steps})")
    if most_memory is not None:
        reason += f", and a batch of the largest structures ({largest_structure} atoms) within memory (<= {most_memory})"
    reason += (f"; base {base} (the documented {DEFAULT_BATCH} where it fits). With learning_rate_scaling: sqrt each "
               "batch size trains at the chosen learning rate x sqrt(batch / base): 39-51% over the defaults on four "
               "molecular seeds against 15-34% without (benchmarks/results/molecules-search.txt)")
    return Reasoned({"choices": choices, "base": base}, reason)
