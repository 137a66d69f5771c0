"""Built-in datasets: name -> generator, the cache file, and its generation on first use.

Each generator is ``generate(n, seed, progress) -> list[ase.Atoms]`` (labels in a
SinglePointCalculator), fully determined by ``(n, seed)``. The cached file is named after the
dataset, ``n`` and ``seed``, under ``$NANOPET_CACHE`` (default ``~/.cache/nanopet-tune``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..errors import InputError, did_you_mean
from .emt import generate_emt_alloy
from .xtb import generate_xtb_molecules

GENERATORS = {"emt-alloy": generate_emt_alloy, "xtb-molecules": generate_xtb_molecules}
BUILTIN_DATASETS = tuple(GENERATORS)


def write_builtin_dataset(name: str, path, n: int, seed: int = 0, show_progress: bool = True) -> Path:
    """Generate the built-in dataset ``name`` and write it to ``path`` as extended XYZ.

    With ``show_progress``, a line goes to stderr at every tenth of the structures.
    """
    return _write(name, Path(path), n, seed, shown_as=Path(path) if show_progress else None)


def builtin_dataset_path(name: str, n: int, seed: int = 0) -> Path:
    """Path of the cached extxyz file of a built-in dataset, generating it if needed.

    The file is written to a temporary name and moved into place, so concurrent processes
    asking for the same dataset never see a partial file.
    """
    _generator(name)
    directory = cache_dir()
    path = directory / f"{name}-n{int(n)}-s{int(seed)}.xyz"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        _write(name, Path(temporary), n, seed, shown_as=path)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def cache_dir() -> Path:
    """``$NANOPET_CACHE`` if set, else ``~/.cache/nanopet-tune``."""
    return Path(os.environ.get("NANOPET_CACHE") or Path.home() / ".cache" / "nanopet-tune")


def _write(name: str, path: Path, n: int, seed: int, shown_as: Path | None) -> Path:
    """Generate and write; progress lines (naming ``shown_as``) only when ``shown_as`` is given."""
    import ase.io

    generate = _generator(name)
    progress = _progress_printer(name, n, seed, shown_as) if shown_as is not None else None
    ase.io.write(path, generate(int(n), seed=int(seed), progress=progress), format="extxyz")
    return path


def _generator(name: str):
    if name not in GENERATORS:
        raise InputError(
            f"unknown built-in dataset '{name}'{did_you_mean(name, BUILTIN_DATASETS)}; "
            f"known: {', '.join(BUILTIN_DATASETS)}"
        )
    return GENERATORS[name]


def _progress_printer(name: str, n: int, seed: int, path: Path):
    """``progress(done, total)`` printing one stderr line at every tenth of the structures."""
    step = max(1, int(n) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"generating built-in dataset {name} (n={total}, seed {seed}) into {path}: "
                  f"{done}/{total} structures", file=sys.stderr, flush=True)

    return progress
