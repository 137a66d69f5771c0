"""Helpers of the retrain / compare-losses tests: a tiny real study with a held-out test set."""

from __future__ import annotations

from pathlib import Path

from tune_support import merge, tiny_space, write_space

TINY_DATA = {"systems": {"builtin": "emt-alloy", "n": 32, "seed": 0}}  # 16 train / 8 validation / 8 test


def tiny_study(folder: Path, name: str = "tiny", **sections):
    """Run a 4-trial, 2-epoch search from a search-space file in ``folder`` (studies in folder/studies)."""
    from nanopet.tune import load_search_space, run

    raw = tiny_space(folder / "studies", training_set=TINY_DATA, test_set=0.25, budget={"n_trials": 4, "epochs": 2},
                     study={"name": name})
    raw["architecture"]["training"]["checkpoint_interval"] = 1  # resumable at every epoch
    raw = merge(raw, sections)
    path = write_space(folder / f"{name}.yaml", raw)
    return run(load_search_space(path), threads=1, out=lambda message: None), path
