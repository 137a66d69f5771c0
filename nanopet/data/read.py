"""Read datasets described metatrain-style (``training_set:`` in ``options.yaml``) into Structures.

A dataset is a path, a list of datasets, or a dict::

    systems: {read_from: data.xyz, length_unit: angstrom}   # or `systems: data.xyz`
                                                             # or {builtin: emt-alloy, n: 200, seed: 0}
                                                             # or {builtin: xtb-molecules, n: 200}
    targets:
      energy: {key: energy, unit: eV, forces: {key: forces}, stress: {key: stress}}
      # or `virial: {key: virial}` instead of stress; `forces: false` to ignore forces

The keys, types and values of a dataset config are checked against the schema (nanopet/schema/options.py);
this module resolves its files. Any file ``ase.io.read`` understands works; frames are read one at a time
(``nanopet.data.frames``), never as a whole file's list. Labels are looked up in ``atoms.info``, ``atoms.arrays``
and then ``atoms.calc.results`` (where extxyz puts energy/forces/stress). Every problem is reported as a one-line
``InputError`` naming the file, the frame and the key. A dataset whose frames hold forces, a stress or a virial
under a key that no target reads gets one ``note:`` line on stderr naming the key and the setting that would read it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, did_you_mean
from ..schema import validate
from ..schema.options import DEFAULT_BUILTIN_SIZE, DatasetEntry
from .builtin import builtin_dataset_path
from .extxyz import frame_from_atoms
from .frames import FrameRange, frame_count, frame_ranges, read_frames
from .labels import LabelKeys, label_keys
from .structure import Structure


def _energy_units() -> dict:
    from ase import units

    return {
        "eV": 1.0,
        "meV": 1e-3,
        "Hartree": units.Hartree,
        "kcal/mol": units.kcal / units.mol,
        "kJ/mol": units.kJ / units.mol,
        "Ry": units.Ry,
    }


def _length_units() -> dict:
    from ase import units

    return {"angstrom": 1.0, "bohr": units.Bohr, "nm": units.nm}




@dataclass
class LabelSpec:
    """Where one label lives: its key, its file, and whether the user asked for it explicitly."""

    key: str
    path: Path
    explicit: bool


@dataclass
class DatasetSpec:
    """A dataset config resolved to files, keys and unit factors (to eV and Angstrom)."""

    systems_path: Path
    energy: LabelSpec
    forces: LabelSpec | None
    stress: LabelSpec | None
    virial: LabelSpec | None
    energy_factor: float = 1.0
    length_factor: float = 1.0
    name: str = ""  # the key path of the dataset in the options (training_set, test_set[1], ...) for messages


# ----------------------------------------------------------------------------------------------
# Public API


def read_structures(dataset, base_dir=".", name: str = "training_set") -> list[Structure]:
    """Read one dataset config (a path, a list of configs, or a dict) into Structures in eV and A.

    Relative paths resolve against ``base_dir`` (the directory of the options file); ``name`` is
    the key path used in error messages (e.g. ``training_set``).
    """
    return [s for spec in dataset_specs(dataset, base_dir, name) for s in spec_structures(spec)]


def dataset_specs(dataset, base_dir=".", name: str = "training_set") -> list[DatasetSpec]:
    """The files, keys and unit factors of one dataset config, one spec per part of a list."""
    if isinstance(dataset, list):
        if not dataset:
            raise InputError(f"{name}: empty list of datasets")
        return [spec for i, part in enumerate(dataset) for spec in dataset_specs(part, base_dir, f"{name}[{i}]")]
    return [_parse_dataset(dataset, Path(base_dir), name)]


def builtin_dataset(name: str, n: int, seed: int = 0) -> list[Structure]:
    """The built-in dataset ``name`` as Structures, generated once and cached on disk."""
    return read_structures(str(builtin_dataset_path(name, n, seed)))


def load_splits(options: dict, base_dir=".", seed: int = 0):
    """``(train, validation, test)`` Structures from ``training_set``/``validation_set``/``test_set``.

    ``validation_set`` and ``test_set`` are either datasets or fractions of the training set,
    taken out by a permutation seeded with ``seed`` (defaults: 0.1 and 0.0). A non-zero fraction
    always takes at least one structure.
    """
    if not isinstance(options, dict) or options.get("training_set") is None:
        raise InputError("options: 'training_set' is required (a file path or a dataset dict)")
    train = read_structures(options["training_set"], base_dir, "training_set")
    chosen = split_indices(options, len(train), seed)
    splits = {key: read_structures(options[key], base_dir, key) if indices is None else [train[i] for i in indices]
              for key, indices in chosen.items()}
    return splits["training_set"], splits["validation_set"], splits["test_set"]


def split_indices(options: dict, count: int, seed: int = 0) -> dict:
    """Which of the training set's ``count`` structures each split takes: ``{"training_set": indices,
    "validation_set": ..., "test_set": ...}``, sorted, or None for a split that is a dataset of its own."""
    defaults = {"validation_set": 0.1, "test_set": 0.0}
    # An absent key takes its default; an explicit null means no such split.
    configs = {key: options.get(key, default) for key, default in defaults.items()}
    configs = {key: 0.0 if value is None else value for key, value in configs.items()}
    fractions = {key: _fraction(key, value) for key, value in configs.items() if _is_number(value)}
    if sum(fractions.values()) >= 1.0:
        raise InputError(
            "validation_set + test_set fractions must sum to less than 1, got "
            + " + ".join(f"{fractions[k]:g}" for k in fractions)
        )
    sizes = {key: _split_size(fraction, count) for key, fraction in fractions.items()}
    if sum(sizes.values()) >= count:
        raise InputError(
            f"training_set has {count} structure(s): nothing is left for training after taking out "
            + ", ".join(f"{sizes[k]} for {k}" for k in sizes)
        )
    permutation = np.random.default_rng(seed).permutation(count)
    chosen, start = {}, 0
    for key in defaults:
        if key in sizes:
            chosen[key] = np.sort(permutation[start : start + sizes[key]])
            start += sizes[key]
        else:
            chosen[key] = None
    return {"training_set": np.sort(permutation[start:]), **chosen}


# ----------------------------------------------------------------------------------------------
# Splits


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(key: str, value) -> float:
    if not 0.0 <= value < 1.0:
        raise InputError(f"{key}: a fraction must be in [0, 1), got {value}")
    return float(value)


def _split_size(fraction: float, total: int) -> int:
    return max(1, round(fraction * total)) if fraction > 0 else 0


# ----------------------------------------------------------------------------------------------
# Parsing the dataset config


def _parse_dataset(dataset, base_dir: Path, name: str) -> DatasetSpec:
    validate(DatasetEntry, dataset, name)  # keys, types and values (nanopet/schema/options.py); below, the files
    if isinstance(dataset, (str, Path)):
        dataset = {"systems": str(dataset)}
    systems_path, length_unit = _parse_systems(dataset["systems"], base_dir, f"{name}.systems")
    targets = dataset.get("targets") or {}
    spec = _parse_energy(targets.get("energy") or {}, systems_path, base_dir, f"{name}.targets.energy")
    spec.length_factor = _unit_factor(length_unit, _length_units(), f"{name}.systems.length_unit")
    spec.name = name
    return spec


def _parse_systems(systems, base_dir: Path, where: str) -> tuple[Path, str]:
    """The structure file (generating a built-in dataset if asked) and its length unit."""
    if isinstance(systems, (str, Path)):
        return _resolve(systems, base_dir, where), "angstrom"
    if "builtin" in systems:
        return _builtin_path(systems, where), "angstrom"
    return _resolve(systems["read_from"], base_dir, f"{where}.read_from"), str(systems.get("length_unit") or "angstrom")


def _builtin_path(systems: dict, where: str) -> Path:
    try:
        return builtin_dataset_path(str(systems["builtin"]), systems.get("n", DEFAULT_BUILTIN_SIZE), systems.get("seed", 0))
    except InputError as error:
        raise InputError(f"{where}.builtin: {error}") from None


def _parse_energy(energy: dict, systems_path: Path, base_dir: Path, where: str) -> DatasetSpec:
    energy_path = _resolve(energy["read_from"], base_dir, f"{where}.read_from") if energy.get("read_from") else systems_path
    if energy.get("stress") and energy.get("virial"):
        raise InputError(f"{where}: give either 'stress' or 'virial', not both")
    stress_default = None if energy.get("virial") else True  # a virial replaces the stress

    def gradient(name: str, default):
        return _parse_gradient(energy.get(name, default), name, energy_path, base_dir, f"{where}.{name}")

    return DatasetSpec(
        systems_path=systems_path,
        energy=LabelSpec(str(energy.get("key") or "energy"), energy_path, explicit=True),
        forces=gradient("forces", True),
        stress=gradient("stress", stress_default),
        virial=gradient("virial", None),
        energy_factor=_unit_factor(str(energy.get("unit") or "eV"), _energy_units(), f"{where}.unit"),
    )


def _parse_gradient(value, default_key: str, energy_path: Path, base_dir: Path, where: str):
    """``forces``/``stress``/``virial``: false/None (off), true (default key), a key, or a dict.

    Returns a LabelSpec, or None when the label is off.
    """
    if value is None or value is False:
        return None
    if value is True:
        # The default key of forces and stress is used only if present; virial must be there.
        return LabelSpec(default_key, energy_path, explicit=default_key == "virial")
    if isinstance(value, str):
        return LabelSpec(value, energy_path, explicit=True)
    path = _resolve(value["read_from"], base_dir, f"{where}.read_from") if value.get("read_from") else energy_path
    return LabelSpec(str(value.get("key") or default_key), path, explicit=True)


def _unit_factor(unit: str, units: dict, where: str) -> float:
    by_lowercase = {name.lower(): factor for name, factor in units.items()}
    if unit.lower() not in by_lowercase:
        raise InputError(
            f"{where}: unknown unit '{unit}'{did_you_mean(unit, units)}; allowed: {', '.join(units)}"
        )
    return by_lowercase[unit.lower()]


def _resolve(path, base_dir: Path, where: str) -> Path:
    """The file ``path`` names (relative: to ``base_dir``); a missing one is an error naming the key path ``where``."""
    given = Path(str(path)).expanduser()
    resolved = given if given.is_absolute() else base_dir / given
    if not resolved.is_file():
        looked = "" if given.is_absolute() or base_dir == Path(".") else f" (looked for {resolved})"
        raise InputError(f"{where}: {path}: file not found{looked}")
    return resolved


# ----------------------------------------------------------------------------------------------
# Reading files and labels, one frame at a time


@dataclass
class ImplicitLabels:
    """Implicit (default-key) forces and stress over the frames of a dataset: read when any frame has them, and then
    every frame must have them (stress: every fully periodic frame). Frames are read one at a time (and in ranges
    side by side, ``merge``), so the rule is checked once all are read (``check``)."""

    seen: set = field(default_factory=set)  # labels some frame has
    missing: dict = field(default_factory=dict)  # label -> (frame, error) of the first frame without it
    found: LabelKeys = field(default_factory=LabelKeys)  # the label keys the frames hold (``nanopet.data.labels``)
    looked: set = field(default_factory=set)  # the sets of key names already looked at (frames of a file share one)

    def look(self, atoms) -> None:
        """Add the label keys of a frame whose set of key names is new."""
        results = getattr(atoms.calc, "results", None) or {}
        names = (tuple(atoms.info), tuple(atoms.arrays), tuple(results))
        if names not in self.looked:
            self.looked.add(names)
            self.found = self.found.union(label_keys(frame_from_atoms(atoms)))

    def note_missing(self, what: str, index: int, message: str) -> None:
        if what not in self.missing or index < self.missing[what][0]:
            self.missing[what] = (index, message)

    def merge(self, other: "ImplicitLabels") -> None:
        self.seen |= other.seen
        self.found, self.looked = self.found.union(other.found), self.looked | other.looked
        for what, (index, message) in other.missing.items():
            self.note_missing(what, index, message)

    def check(self) -> None:
        """The error of the first frame without a label that other frames have."""
        for what, (index, message) in sorted(self.missing.items(), key=lambda item: item[1][0]):
            if what in self.seen:
                raise InputError(message)

    def finish(self, spec: DatasetSpec) -> None:
        """Once every frame of ``spec`` is read: ``check``, then the note on labels no target reads (stderr)."""
        self.check()
        note = unused_labels_note(spec, self)
        if note:
            print(note, file=sys.stderr, flush=True)


def spec_files(spec: DatasetSpec) -> list[Path]:
    """The files of ``spec``: the structures first, then each other file a label is read from."""
    paths = [spec.systems_path]
    for label in (spec.energy, spec.forces, spec.stress, spec.virial):
        if label is not None and label.path not in paths:
            paths.append(label.path)
    return paths


def spec_ranges(spec: DatasetSpec, size: int) -> list[dict]:
    """The frames of ``spec`` in consecutive ranges of ``size``, as ``{file: FrameRange}`` with the same frames of
    each file; one range of whole files where a file cannot be read from the middle."""
    paths = spec_files(spec)
    ranges = {path: frame_ranges(path, size) for path in paths}
    if any(r[0].span is None for r in ranges.values()):
        _check_same_length(spec, {path: frame_count(path) for path in paths})
        return [{path: FrameRange(path) for path in paths}]
    _check_same_length(spec, {path: r[-1].stop for path, r in ranges.items()})
    return [dict(zip(paths, parts)) for parts in zip(*ranges.values())]


def spec_structures(spec: DatasetSpec, frames: dict | None = None, labels: ImplicitLabels | None = None):
    """Every frame of ``spec`` (or the range ``frames``, ``{file: FrameRange}`` from ``spec_ranges``) as a validated
    Structure in eV and A, one at a time. The implicit-label rule (``ImplicitLabels``) is checked at the end, or
    left to the caller who passes ``labels``."""
    paths = spec_files(spec)
    if frames is None:
        if len(paths) > 1:
            _check_same_length(spec, {path: frame_count(path) for path in paths})
        frames = {path: path for path in paths}
    start = frames[spec.systems_path].start if isinstance(frames[spec.systems_path], FrameRange) else 0
    own = labels is None
    labels = ImplicitLabels() if own else labels
    for offset, atoms in enumerate(zip(*(read_frames(frames[path]) for path in paths))):
        yield _structure(spec, dict(zip(paths, atoms)), start + offset, labels)
    if own:
        labels.finish(spec)


def _structure(spec: DatasetSpec, frame: dict, index: int, labels: ImplicitLabels) -> Structure:
    """Frame ``index`` (``frame``: its atoms in each file of ``spec``) as a validated Structure in eV and A."""
    atoms = frame[spec.systems_path]
    labels.look(frame[spec.energy.path])
    source = f"{spec.systems_path}:{index}"
    if len(atoms) == 0:
        raise InputError(f"{source}: structure has no atoms")
    _check_finite(atoms.positions, source, "positions")
    _check_finite(atoms.cell.array, source, "cell")
    values = {"energy": _energy(frame, spec, index)}
    if _wanted(frame, spec.forces, index, "forces", labels, exempt=False):
        values["forces"] = _forces(frame, spec, index, len(atoms))
    for what in ("stress", "virial"):
        if _wanted(frame, getattr(spec, what), index, what, labels, exempt=not atoms.pbc.all()):
            values["stress"] = _stress(frame, spec, index, what, atoms)
    return _to_structure(atoms, values, spec.length_factor, source)


def _wanted(frame: dict, label: LabelSpec | None, index: int, what: str, labels: ImplicitLabels, exempt: bool) -> bool:
    """Whether to read ``label`` in this frame: an explicit one always; an implicit one where the frame has it (its
    absence is noted, unless ``exempt``: a structure that is not fully periodic needs no stress)."""
    if label is None:
        return False
    if label.explicit:
        return True
    if _lookup(frame[label.path], label.key) is not None:
        labels.seen.add(what)
        return True
    if not exempt:
        labels.note_missing(what, index, _not_found(frame, label, index, what))
    return False


def unused_labels_note(spec: DatasetSpec, labels: ImplicitLabels) -> str | None:
    """One line when the frames of ``spec`` hold forces, a stress or a virial that no target of ``spec`` reads
    (``labels``: the keys found and the implicit labels read), naming the key and the setting that reads it; None
    otherwise. A label switched off (``forces: false``, ``stress: false``) is not mentioned."""
    def read(what: str) -> bool:
        label = getattr(spec, what)
        return label is not None and (label.explicit or what in labels.seen)

    found, unused = labels.found, []
    if spec.forces is not None and not read("forces") and found.forces:
        unused.append(("a per-atom 3-vector", "forces", found.forces[0]))
    if spec.stress is not None and not (read("stress") or read("virial")):
        unused += [(f"a {kind}", kind, getattr(found, kind)[0]) for kind in ("stress", "virial") if getattr(found, kind)][:1]
    if not unused:
        return None
    name = spec.name or str(spec.systems_path)
    where = name if name == str(spec.systems_path) else f"{name} {spec.systems_path}"
    held = " and ".join(f"{what} '{key}'" for what, _, key in unused)
    purpose = "it as forces" if [kind for _, kind, _ in unused] == ["forces"] else ("it" if len(unused) == 1 else "them")
    setting = ", ".join(f"{kind}: {{key: {key}}}" for _, kind, key in unused)
    return f"note: {where} holds {held} that no target uses; to train on {purpose} set targets: energy: {{{setting}}}"


def _to_structure(atoms, labels: dict, length_factor: float, source: str) -> Structure:
    structure = Structure.from_atoms(atoms, source=source, **labels)
    structure.positions = structure.positions * length_factor
    structure.cell = structure.cell * length_factor
    structure.info = {k: v for k, v in atoms.info.items() if np.isscalar(v)}
    return structure


def _check_same_length(spec: DatasetSpec, counts: dict) -> None:
    n_systems = counts[spec.systems_path]
    for path, n_labels in counts.items():
        if n_labels != n_systems:
            raise InputError(f"{path}: has {n_labels} frames but {spec.systems_path} has {n_systems}")


def _lookup(atoms, key: str):
    """A label from ``atoms.info``, ``atoms.arrays`` or the attached calculator's results."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays and key not in ("numbers", "positions"):
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key)


def _available_keys(atoms) -> list[str]:
    arrays = [k for k in atoms.arrays if k not in ("numbers", "positions")]
    results = list(getattr(atoms.calc, "results", None) or {})
    return sorted(set(atoms.info) | set(arrays) | set(results))


def _not_found(frame: dict, label: LabelSpec, index: int, what: str) -> str:
    """The error of frame ``index`` without ``label``: the keys it has, and how to ignore an implicit label."""
    keys = _available_keys(frame[label.path])
    hint = "" if label.explicit else f" (other frames have it; set {what}: false to ignore it)"
    return (f"{label.path}:{index}: {what} key '{label.key}' not found{did_you_mean(label.key, keys)}{hint}; "
            f"available keys: {', '.join(keys) or 'none'}")


def _label(frame: dict, label: LabelSpec, index: int, what: str) -> np.ndarray:
    """The value of ``label`` in frame ``index`` as a float array; a one-line error if absent."""
    value = _lookup(frame[label.path], label.key)
    if value is None:
        raise InputError(_not_found(frame, label, index, what))
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{label.path}:{index}: {what} key '{label.key}' is not numeric: {value!r}") from None


def _energy(frame: dict, spec: DatasetSpec, index: int) -> float:
    """Energy in eV."""
    label = spec.energy
    energy = _label(frame, label, index, "energy")
    if energy.size != 1:
        raise InputError(
            f"{label.path}:{index}: energy key '{label.key}' must be one number, got shape {energy.shape}"
        )
    _check_finite(energy, f"{label.path}:{index}", f"energy key '{label.key}'")
    return float(energy.reshape(())) * spec.energy_factor


def _forces(frame: dict, spec: DatasetSpec, index: int, n_atoms: int) -> np.ndarray:
    """Forces in eV/A."""
    label = spec.forces
    forces = _label(frame, label, index, "forces")
    if forces.shape != (n_atoms, 3):
        raise InputError(
            f"{label.path}:{index}: forces key '{label.key}' has shape {forces.shape}, expected ({n_atoms}, 3)"
        )
    _check_finite(forces, f"{label.path}:{index}", f"forces key '{label.key}'")
    return forces * spec.energy_factor / spec.length_factor


def _stress(frame: dict, spec: DatasetSpec, index: int, what: str, atoms):
    """Stress in eV/A^3 (ASE sign) from the ``stress`` or the ``virial`` label."""
    label = spec.stress if what == "stress" else spec.virial
    where = f"{label.path}:{index}"
    tensor = _full_tensor(_label(frame, label, index, what), where, what, label.key)
    _check_finite(tensor, where, f"{what} key '{label.key}'")
    if what == "stress":
        return tensor * spec.energy_factor / spec.length_factor**3
    volume = abs(np.linalg.det(atoms.cell.array)) * spec.length_factor**3
    if volume <= 0.0:
        raise InputError(f"{where}: virial key '{label.key}' needs a cell with a volume, but the volume is 0")
    return -tensor * spec.energy_factor / volume  # virial = -stress * volume


def _full_tensor(values: np.ndarray, where: str, what: str, key: str) -> np.ndarray:
    """3x3 tensor from 6 Voigt values (xx yy zz yz xz xy), 9 values, or a 3x3 array."""
    if values.size == 9:
        return values.reshape(3, 3)
    if values.size == 6:
        xx, yy, zz, yz, xz, xy = values.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise InputError(
        f"{where}: {what} key '{key}' has {values.size} values, expected 6 (Voigt), 9 or 3x3"
    )


def _check_finite(values, where: str, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise InputError(f"{where}: {what} contains NaN or inf")
