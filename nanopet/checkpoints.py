"""A training run's files: checkpoints (``model.ckpt``, ``checkpoints/model_<epoch>.ckpt``) and ``metrics.csv``.

- ``save_checkpoint`` / ``load_checkpoint``: atomic writes, and reads that name a bad file in one line;
  a checkpoint is a dict tagged ``format: CHECKPOINT_FORMAT`` (written by ``nanopet.train``);
- ``model_from_checkpoint``: the ``NanoPET`` of a checkpoint, best-validation weights by default;
- ``append_csv`` / ``forget_epochs``: one row of metrics per logged epoch, and dropping the rows a resumed
  run repeats.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from nanopet.errors import InputError
from nanopet.model import NanoPET

CHECKPOINT_FORMAT = "nanopet-tune/1"


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic write: a killed process never leaves a half-written checkpoint behind."""
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(f"{path}: not a readable nanopet-tune checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a nanopet-tune checkpoint (expected format {CHECKPOINT_FORMAT})")
    return state


def model_from_checkpoint(path: str | Path, best: bool = True) -> NanoPET:
    """Rebuild the model of a checkpoint (best-validation weights by default)."""
    state = load_checkpoint(path)
    model = NanoPET(state["model"]["hypers"], state["model"]["atomic_types"])
    model.to(getattr(torch, state["model"]["dtype"]))
    model.load_state_dict(state["best_model_state_dict"] if best else state["model_state_dict"])
    return model


def forget_epochs(path: Path, first: int) -> None:
    """Drop the rows of epochs >= ``first`` from a metrics CSV (atomically), so that no epoch is listed twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < first]
    if len(kept) < len(lines):
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, path)


def append_csv(path: Path, metrics: dict, log_mae: bool) -> None:
    row = {k: v for k, v in metrics.items() if log_mae or not k.endswith("_mae")}
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
