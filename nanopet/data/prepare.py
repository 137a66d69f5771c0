"""Preparing a dataset on disk once, for every process that reads it: ``prepare(specs, cutoff)`` -> its folder.

Where: ``$NANOPET_PREPARED`` if set, else ``$NANOPET_CACHE/prepared`` (``~/.cache/nanopet-tune/prepared``), one
folder per dataset and cutoff, ``<file stem>-<key>-c<cutoff>``. The key is a hash of what the arrays depend on:
the content of every file read (structures and labels), the keys, units and explicit/implicit flags of each
label, and the format version. A file is hashed whole (blake2b); one over ``HASHED_EVERY_TIME`` bytes is hashed
once and its digest remembered with its size, inode and change times, so opening its prepared folder again does
not read it (any write to the file changes its change time, and it is hashed again). A changed file or setting
gives another key, so nothing stale is read; a folder prepared at a larger cutoff serves every smaller one.

How: frames are read in ranges of ``RANGE_FRAMES`` (``nanopet.data.frames``), one range per task of a process
pool where the machine has more than one core: read and validated as ``read_structures`` does, half neighbour
lists by vesin. This process appends each range's arrays to the ``.npy`` files in order and prints a line at
every tenth. The folder is written under a temporary name and renamed when complete (``meta.json`` last), under a
lock file: concurrent processes prepare it once, and a killed or failed preparation leaves nothing that is read
(the next preparation of that folder removes its remains).

When: ``load_data`` reads a dataset prepared when ``prepared`` says so, or by default (``prepared=None``) when its
files hold at least ``PREPARED_FROM`` bytes or a prepared folder of it exists already (``nanopet-tune prepare``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nanopet.data.builtin import cache_dir
from nanopet.data.neighbors import neighbor_list
from nanopet.data.read import DatasetSpec, ImplicitLabels, spec_files, spec_ranges, spec_structures
from nanopet.errors import InputError

PREPARED_FROM = 8 << 20  # bytes of dataset files from which load_data prepares by default (~2,000 32-atom frames)
RANGE_FRAMES = 1000  # frames per task
HASHED_EVERY_TIME = 64 << 20  # files up to this size are hashed at every open; larger ones once per change
NPY_HEADER = 128  # bytes of each .npy header (written first, completed when the length is known)

# the format on disk (read by nanopet.data.prepared; its docstring describes the arrays)
FORMAT = 1  # meta.json "format": a folder of another format is prepared anew, never read
# name -> (dtype, shape after the first axis, what the first axis counts)
ARRAYS = {
    "atom_offsets": ("<i8", (), "structures+1"),
    "pair_offsets": ("<i8", (), "structures+1"),
    "cells": ("<f8", (3, 3), "structures"),
    "pbc": ("|b1", (3,), "structures"),
    "energies": ("<f8", (), "structures"),
    "has_forces": ("|b1", (), "structures"),
    "stresses": ("<f8", (3, 3), "structures"),
    "stress_mask": ("|b1", (), "structures"),
    "volumes": ("<f8", (), "structures"),
    "max_neighbors": ("<i4", (), "structures"),
    "numbers": ("|u1", (), "atoms"),
    "positions": ("<f8", (3,), "atoms"),
    "forces": ("<f8", (3,), "atoms"),
    "pair_i": ("<i4", (), "pairs"),
    "pair_j": ("<i4", (), "pairs"),
    "pair_shifts": ("<i2", (3,), "pairs"),
    "pair_distances": ("<f8", (), "pairs"),
}
META = "meta.json"


def prepared_root() -> Path:
    """``$NANOPET_PREPARED``, else ``prepared/`` in the cache folder (``$NANOPET_CACHE``)."""
    return Path(os.environ.get("NANOPET_PREPARED") or cache_dir() / "prepared")


def prepared_folder(specs: list[DatasetSpec], cutoff: float, prepared: bool | None = None,
                    progress: Callable[[str], None] | None = None) -> Path | None:
    """The prepared folder to read ``specs`` from at ``cutoff`` (preparing it if needed), or None to read them into
    memory: ``prepared`` True or False decides; None prepares sets of ``PREPARED_FROM`` bytes or more and uses a
    folder prepared earlier at any size."""
    if prepared is False:
        return None
    if prepared is None and sum(path.stat().st_size for spec in specs for path in spec_files(spec)) < PREPARED_FROM:
        return find_prepared(specs, cutoff)
    return prepare(specs, cutoff, progress=progress)


def prepare(specs: list[DatasetSpec], cutoff: float, jobs: int | None = None, progress: Callable[[str], None] | None = None,
            root: str | Path | None = None) -> Path:
    """The folder of ``specs`` prepared at ``cutoff`` (or more), prepared now if there is none: see the module
    docstring. ``jobs``: processes (default: this process's cores); ``progress``: where the lines go (stderr)."""
    root = Path(root) if root is not None else prepared_root()
    progress = progress or _to_stderr
    started = {path: _stat(path) for spec in specs for path in spec_files(spec)}
    key = source_key(specs, root)
    found = find_prepared(specs, cutoff, root, key)
    if found is not None:
        return found
    name = f"{_stem(specs)}-{key[:20]}-c{float(cutoff)!r}"
    folder = root / name
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock", lambda: progress(f"waiting for another process preparing {folder}")):
        if (folder / META).is_file():
            return folder
        for remains in root.glob(f".{name}.*.tmp"):  # a preparation that was killed: nobody holds the lock
            shutil.rmtree(remains, ignore_errors=True)
        temporary = root / f".{name}.{os.getpid()}.tmp"
        try:
            _write(specs, float(cutoff), key, temporary, jobs, progress)
            changed = [str(path) for path, stat in started.items() if _stat(path) != stat]
            if changed:
                raise InputError(f"{changed[0]}: changed while it was being prepared; run again")
            os.rename(temporary, folder)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return folder


def find_prepared(specs: list[DatasetSpec], cutoff: float, root: str | Path | None = None, key: str | None = None) -> Path | None:
    """The prepared folder of ``specs`` with the smallest cutoff that is at least ``cutoff``, or None."""
    root = Path(root) if root is not None else prepared_root()
    if not root.is_dir():
        return None
    key = key or source_key(specs, root)
    best = None
    for folder in root.glob(f"*-{key[:20]}-c*"):
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            continue
        if meta.get("format") == FORMAT and meta.get("key") == key and meta["cutoff"] >= cutoff - 1e-12:
            if best is None or meta["cutoff"] < best[0]:
                best = (meta["cutoff"], folder)
    return best[1] if best else None


def source_key(specs: list[DatasetSpec], root: Path | None = None) -> str:
    """A hash of everything the prepared arrays depend on but the cutoff (see the module docstring)."""
    root = Path(root) if root is not None else prepared_root()

    digests = {path: file_digest(path, root) for spec in specs for path in spec_files(spec)}

    def label(spec_label):
        if spec_label is None:
            return None
        return {"file": digests[spec_label.path], "key": spec_label.key, "explicit": spec_label.explicit}

    described = [{"systems": digests[spec.systems_path], "length_factor": spec.length_factor,
                  "energy_factor": spec.energy_factor, **{name: label(getattr(spec, name)) for name in
                                                          ("energy", "forces", "stress", "virial")}} for spec in specs]
    return hashlib.blake2b(json.dumps({"format": FORMAT, "parts": described}, sort_keys=True).encode(), digest_size=20).hexdigest()


def file_digest(path: Path, root: Path) -> str:
    """blake2b of the file's content; for a large file, remembered under ``root/digests`` until the file changes."""
    stat = _stat(path)
    if stat[0] <= HASHED_EVERY_TIME:
        return _hash_file(path)
    memo = root / "digests" / (hashlib.blake2b(str(Path(path).resolve()).encode(), digest_size=16).hexdigest() + ".json")
    with contextlib.suppress(OSError, ValueError, KeyError):
        remembered = json.loads(memo.read_text())
        if remembered["stat"] == list(stat):
            return remembered["digest"]
    digest = _hash_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    temporary = memo.with_name(f".{memo.name}.{os.getpid()}")
    temporary.write_text(json.dumps({"path": str(path), "stat": list(stat), "digest": digest}))
    os.replace(temporary, memo)
    return digest


# ---------------------------------------------------------------------------------------------
# Writing a folder


def _write(specs: list[DatasetSpec], cutoff: float, key: str, folder: Path, jobs: int | None,
           progress: Callable[[str], None]) -> None:
    """Read and neighbour-list every frame of ``specs`` into ``folder`` (see the module docstring)."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    tasks = [(number, spec, frames, cutoff) for number, spec in enumerate(specs) for frames in spec_ranges(spec, RANGE_FRAMES)]
    ranges = [frames[spec.systems_path] for _, spec, frames, _ in tasks]
    total = None if any(r.stop is None for r in ranges) else sum(r.stop - r.start for r in ranges)
    jobs = max(1, min(jobs or _cores(), len(tasks)))
    files = {name: _ArrayFile(folder / f"{name}.npy", dtype, shape) for name, (dtype, shape, _) in ARRAYS.items()}
    files["atom_offsets"].append(np.zeros(1, dtype=np.int64))
    files["pair_offsets"].append(np.zeros(1, dtype=np.int64))
    labels = [ImplicitLabels() for _ in specs]
    counts = {"structures": [0] * len(specs), "atoms": 0, "pairs": 0}
    types: set = set()
    shown = [f"preparing {_shown_sources(specs)} at cutoff {cutoff:g} A ({jobs} process{'es' if jobs > 1 else ''}) into {folder.parent}"]
    progress(shown[0])
    next_line = 0.1
    with _pool(jobs) as pool:
        for number, part in (pool.imap(_prepare_range, tasks) if pool else map(_prepare_range, tasks)):
            n_atoms, n_pairs = part.pop("n_atoms"), part.pop("n_pairs")
            files["atom_offsets"].append(counts["atoms"] + np.cumsum(n_atoms))
            files["pair_offsets"].append(counts["pairs"] + np.cumsum(n_pairs))
            for name, values in part.pop("arrays").items():
                files[name].append(values)
            labels[number].merge(part.pop("labels"))
            types |= part.pop("types")
            counts["structures"][number] += len(n_atoms)
            counts["atoms"] += int(n_atoms.sum())
            counts["pairs"] += int(n_pairs.sum())
            done = sum(counts["structures"])
            if total and done >= next_line * total:
                progress(f"  {done:,}/{total:,} structures ({done / total:.0%}), {time.perf_counter() - started:.0f} s")
                next_line = math.floor(done / total * 10 + 1) / 10
    for spec, spec_labels in zip(specs, labels):
        spec_labels.finish(spec)
    for array_file in files.values():
        array_file.close()
    seconds = time.perf_counter() - started
    structures = sum(counts["structures"])
    meta = {"format": FORMAT, "key": key, "cutoff": cutoff, "structures": structures, "atoms": counts["atoms"],
            "pairs": counts["pairs"], "atomic_types": sorted(types), "seconds": round(seconds, 3), "created": time.time(),
            "parts": [{"systems": str(spec.systems_path), "structures": n, "files": [str(p) for p in spec_files(spec)]}
                      for spec, n in zip(specs, counts["structures"])]}
    (folder / META).write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(f.stat().st_size for f in folder.iterdir())
    progress(f"  prepared {structures:,} structures, {counts['pairs']:,} pairs at {cutoff:g} A: {size / 1e9:.2f} GB in {seconds:.0f} s")


def _prepare_range(task) -> tuple[int, dict]:
    """One range of frames: validated structures, their half neighbour lists, as the arrays of ``ARRAYS``."""
    number, spec, frames, cutoff = task
    labels = ImplicitLabels()
    columns: dict = {name: [] for name in ARRAYS if not name.endswith("_offsets")}
    n_atoms, n_pairs = [], []
    for structure in spec_structures(spec, frames, labels):
        half = neighbor_list(structure, cutoff)
        periodic_stress = structure.stress is not None and bool(structure.pbc.all())
        if len(half.shifts) and np.abs(half.shifts).max() > np.iinfo(np.int16).max:
            raise InputError(f"{structure.source}: a neighbour {np.abs(half.shifts).max()} cells away at cutoff {cutoff:g} A; "
                             "the cell is too thin to prepare")
        values = {
            "cells": structure.cell, "pbc": structure.pbc,
            "energies": np.nan if structure.energy is None else structure.energy,
            "has_forces": structure.forces is not None,
            "stresses": structure.stress if periodic_stress else np.zeros((3, 3)), "stress_mask": periodic_stress,
            "volumes": structure.volume,
            "max_neighbors": np.bincount(np.concatenate([half.i, half.j]), minlength=len(structure)).max(),
            "numbers": structure.numbers, "positions": structure.positions,
            "forces": structure.forces if structure.forces is not None else np.zeros((len(structure), 3)),
            "pair_i": half.i, "pair_j": half.j, "pair_shifts": half.shifts, "pair_distances": half.distances,
        }
        for name, value in values.items():
            columns[name].append(value)
        n_atoms.append(len(structure))
        n_pairs.append(len(half.i))
    arrays = {}
    for name, values in columns.items():
        dtype, shape, counted = ARRAYS[name]
        stack = np.stack if counted == "structures" else np.concatenate
        arrays[name] = stack(values).astype(dtype).reshape(-1, *shape) if values else np.zeros((0, *shape), dtype=dtype)
    types = set(np.unique(arrays["numbers"]).tolist())
    return number, {"arrays": arrays, "n_atoms": np.array(n_atoms, dtype=np.int64), "n_pairs": np.array(n_pairs, dtype=np.int64),
                    "labels": labels, "types": types}


class _ArrayFile:
    """An ``.npy`` file written a part at a time: a header of ``NPY_HEADER`` bytes, the rows, then the header again
    with the number of rows (the format is numpy's, version 1.0)."""

    def __init__(self, path: Path, dtype: str, shape: tuple):
        self.path, self.dtype, self.shape, self.rows = path, np.dtype(dtype), tuple(shape), 0
        self.handle = open(path, "wb")
        self.handle.write(b"\0" * NPY_HEADER)

    def append(self, values) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1, *self.shape)
        self.handle.write(values.tobytes())
        self.rows += len(values)

    def close(self) -> None:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.rows, *self.shape)})
        text = header.ljust(NPY_HEADER - 11) + "\n"
        self.handle.seek(0)
        self.handle.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1"))
        self.handle.close()


# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _pool(jobs: int):
    if jobs <= 1:
        yield None
        return
    import multiprocessing

    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(jobs) as pool:
        yield pool


@contextlib.contextmanager
def _locked(path: Path, waiting: Callable[[], None]):
    """An exclusive lock on ``path`` (a file lock: released if the process dies)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stat(path: Path) -> tuple:
    stat = Path(path).stat()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def _hash_file(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _stem(specs: list[DatasetSpec]) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in specs[0].systems_path.stem)[:40]
    return stem + (f"+{len(specs) - 1}" if len(specs) > 1 else "")


def _shown_sources(specs: list[DatasetSpec]) -> str:
    return str(specs[0].systems_path) + (f" and {len(specs) - 1} more" if len(specs) > 1 else "")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
