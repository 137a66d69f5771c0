"""The nanopet-tune command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml


def nanopet_tune(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nanopet.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def tiny_options(data_file) -> dict:
    return {
        "seed": 1,
        "architecture": {
            "model": {"cutoff": 3.5, "cutoff_width": 0.5, "d_pet": 8, "num_heads": 2, "num_attention_layers": 1,
                      "num_gnn_layers": 1},
            "training": {"batch_size": 4, "num_epochs": 3, "log_interval": 1, "checkpoint_interval": 2, "learning_rate": 1e-3},
        },
        "training_set": str(data_file),
        "validation_set": 0.25,
        "test_set": 0.0,
    }


@pytest.fixture(scope="module")
def xyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "emt.xyz"
    result = nanopet_tune("make-data", "emt-alloy", path, "--n", 12, "--seed", 3, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return path


def test_make_data_writes_labelled_structures(xyz):
    frames = ase.io.read(xyz, ":")
    assert len(frames) == 12
    assert all(len(a) == 32 for a in frames)
    assert np.all(np.isfinite([a.get_potential_energy() for a in frames]))
    assert frames[0].get_forces().shape == (32, 3) and frames[0].get_stress().shape == (6,)


def test_train_writes_model_metrics_and_checkpoints(xyz, tmp_path):
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump(tiny_options(xyz)))
    result = nanopet_tune("train", options, "-o", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 3  # log_interval 1, 3 epochs
    assert (tmp_path / "run" / "model.ckpt").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["model_0.ckpt", "model_2.ckpt"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,learning_rate,train_loss,val_loss")
    state = torch.load(tmp_path / "run" / "model.ckpt", weights_only=True)
    assert state["epoch"] == 2

    resumed = nanopet_tune("train", options, "-o", tmp_path / "run2", "--resume", tmp_path / "run" / "checkpoints" / "model_0.ckpt",
                           cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert len([line for line in resumed.stdout.splitlines() if line.startswith("epoch ")]) == 2


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_options_file(tmp_path):
    one_line_error(nanopet_tune("train", tmp_path / "nope.yaml", cwd=tmp_path), "nope.yaml", "no such file")


def test_unknown_hyperparameter_names_key_path(xyz, tmp_path):
    options = tiny_options(xyz)
    options["architecture"]["training"]["learning_rat"] = 1e-3
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(options))
    one_line_error(nanopet_tune("train", tmp_path / "o.yaml", cwd=tmp_path), "architecture.training.learning_rat", "learning_rate")


def test_yaml_syntax_error_names_line(tmp_path):
    (tmp_path / "o.yaml").write_text("seed: 0\narchitecture: {model: [\n")
    one_line_error(nanopet_tune("train", tmp_path / "o.yaml", cwd=tmp_path), "o.yaml", "line")


def test_nan_forces_name_file_frame_and_key(xyz, tmp_path):
    frames = ase.io.read(xyz, ":")
    frames[2].calc.results["forces"][5, 1] = np.nan
    bad = tmp_path / "bad.xyz"
    ase.io.write(bad, frames)
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(tiny_options(bad)))
    one_line_error(nanopet_tune("train", tmp_path / "o.yaml", cwd=tmp_path), "bad.xyz", "2", "forces")


def test_unknown_element_in_fixed_composition_weights(xyz, tmp_path):
    options = tiny_options(xyz)
    options["architecture"]["training"]["fixed_composition_weights"] = {"energy": {29: -3.5, 79: -3.0, 13: -3.3}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(options))
    one_line_error(nanopet_tune("train", tmp_path / "o.yaml", cwd=tmp_path), "fixed_composition_weights", "13")

# ----------------------------------------------------------------------------------------------
# The front door (#20): in-process runs of nanopet.cli.main, as a first-day user meets it


def main_run(capsys, *args, cwd, monkeypatch):
    """``nanopet-tune ARGS`` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from nanopet.cli import main

    monkeypatch.chdir(cwd)
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse: --version, --help, usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_quickstart_study_is_retrained_compared_and_reported_without_extra_flags(tmp_path, capsys, monkeypatch):
    quick = yaml.safe_load((Path(__file__).parent.parent / "search_spaces" / "quick.yaml").read_text())
    # quick.yaml's own split, objective and parameters; less data, a tiny model and a one-trial budget
    quick["training_set"] = {"systems": {"builtin": "emt-alloy", "n": 24, "seed": 0}}
    quick["architecture"]["model"].update(d_pet=8)
    quick.update(budget={"n_trials": 1, "epochs": 1}, strategy={"type": "joint"})
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(quick))
    code, out, err = main_run(capsys, "quick.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    code, out, err = main_run(capsys, "retrain", "quick", "--epochs", 1, "--seeds", 1, cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    assert "test set, 1 seed" in out and (tmp_path / "studies" / "quick" / "best" / "summary.csv").is_file()
    code, out, err = main_run(capsys, "compare-losses", "quick", "--types", "mse", "--epochs", 1, "--seeds", 1,
                              cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    assert (tmp_path / "reports" / "quick" / "losses.html").is_file()
    code, out, err = main_run(capsys, "report", "quick", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    assert (tmp_path / "reports" / "quick" / "index.html").is_file()


def test_missing_read_from_file_names_the_key_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "o.yaml").write_text(yaml.safe_dump({"training_set": {"systems": {"read_from": "nothere.xyz"}}}))
    code, out, err = main_run(capsys, "train", "o.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, "training_set.systems.read_from: nothere.xyz: file not found")
