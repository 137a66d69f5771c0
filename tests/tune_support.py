"""Helpers of the tune tests: tiny search spaces (24 built-in EMT structures, d_pet 8, 2 epochs)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = {"cutoff": 3.5, "cutoff_width": 0.5, "d_pet": 8, "num_heads": 2, "num_gnn_layers": 1, "num_attention_layers": 1}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "parameters":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_space(directory: Path, **sections) -> dict:
    """A search-space mapping that trains in about a second per trial on one CPU thread."""
    raw = {
        "seed": 0, "device": "cpu", "base_precision": 32,
        "training_set": {"systems": {"builtin": "emt-alloy", "n": 24, "seed": 0}},
        "validation_set": 0.25, "test_set": 0.0,
        # a constant learning rate (plateau, patience 100): in 2-3 epochs of 3 steps a cosine's decay leaves good and bad
        # rates too close for the tests of the drivers' pruning and ranking to tell apart
        "architecture": {"model": dict(TINY_MODEL), "training": {"batch_size": 6, "learning_rate": 3.0e-3, "scheduler": "plateau"}},
        "study": {"name": "tiny", "directory": str(directory), "sampler": {"type": "random", "seed": 0},
                  "pruner": {"type": "none"}},
        "objective": {"metric": "val_forces_rmse"},
        "budget": {"n_trials": 6, "epochs": 2},
        "strategy": {"type": "joint", "min_improvement": 0.0},  # tests see every stage's argmin chosen
        "parameters": {"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                       "cutoff": {"type": "float", "low": 3.0, "high": 4.0, "step": 0.5}},
    }
    return merge(raw, sections)


def write_space(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trials(directory: Path, study_name: str, name: str = "tiny"):
    import optuna

    from nanopet.tune.storage import open_storage

    storage = open_storage(str(directory / name / "journal.log"), create=False)
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)


def cli(*args, cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``nanopet-tune`` command line in a subprocess."""
    kwargs.setdefault("env", cli_env())
    return subprocess.run([sys.executable, "-m", "nanopet.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def cli_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
