"""The nanopet-tune command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import argparse
import re
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


def test_train_into_an_earlier_run_is_refused_or_replaced_never_mixed(xyz, tmp_path, capsys, monkeypatch):
    options = tiny_options(xyz)
    options["architecture"]["training"].update(num_epochs=2, checkpoint_interval=1)
    options["test_set"] = 0.25
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(options))
    run = tmp_path / "runs" / "options"
    code, out, err = main_run(capsys, "train", "options.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    first = (run / "metrics.csv").read_text()
    # every printed figure carries its unit, in the epoch lines' convention (meV, GPa)
    test_line = next(line for line in out.splitlines() if line.startswith("test:"))
    assert all(unit in test_line for unit in ("meV/atom", "meV/A", "GPa")), test_line
    assert (run / "train.log").read_text().splitlines()[1:3] == [l for l in out.splitlines() if l.startswith("epoch ")]

    code, out, err = main_run(capsys, "train", "options.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, "runs/options: holds an earlier run", "--resume runs/options/model.ckpt", "--overwrite")
    assert (run / "metrics.csv").read_text() == first

    (run / "checkpoints" / "model_7.ckpt").write_bytes(b"an older run's")
    code, out, err = main_run(capsys, "train", "options.yaml", "--overwrite", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    epochs = [row.split(",")[0] for row in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["model_0.ckpt", "model_1.ckpt"]

    # the resolved options: every default filled in, and `train` trains them again from anywhere
    hypers = yaml.safe_load((run / "hypers.yaml").read_text())
    assert hypers["architecture"]["training"]["scheduler_patience"] is not None and Path(hypers["training_set"]).is_absolute()
    code, out, err = main_run(capsys, "train", run / "hypers.yaml", "-o", tmp_path / "again", cwd=xyz.parent, monkeypatch=monkeypatch)
    assert code == 0, err
    assert (tmp_path / "again" / "metrics.csv").read_text().splitlines()[1:] != []


def test_one_flag_vocabulary_and_version(capsys, monkeypatch, tmp_path):
    import importlib.metadata

    from nanopet.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        shown = {flag for action in command._actions if action.help != argparse.SUPPRESS for flag in action.option_strings}
        assert not shown & {"--studies-dir", "--out", "--runs", "--reports"}, name  # the old spellings are hidden
        folders = {action.dest: action.option_strings for action in command._actions if action.help != argparse.SUPPRESS}
        if "directory" in folders:
            assert folders["directory"] == ["--directory"], name
    for new, old in ((["--directory", "s", "--reports-dir", "r"], ["--studies-dir", "s", "--out", "r"]),):
        assert vars(parser.parse_args(["report", "x", *new])) == vars(parser.parse_args(["report", "x", *old]))
    losses = ["compare-losses", "x"]
    assert (vars(parser.parse_args(losses + ["-o", "m", "--reports-dir", "r"]))
            == vars(parser.parse_args(losses + ["--runs", "m", "--reports", "r"])))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert not re.search(r"--(studies-dir|out|runs|reports)(?![\w-])", readme)

    code, out, err = main_run(capsys, "--version", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0 and out.strip() == f"nanopet-tune {importlib.metadata.version('nanopet-tune')}"


def test_make_data_creates_its_folder_and_refuses_nothing_to_write(tmp_path, capsys, monkeypatch):
    code, out, err = main_run(capsys, "make-data", "emt-alloy", "new/folder/d.xyz", "--n", 3, cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, err
    assert len(ase.io.read(tmp_path / "new" / "folder" / "d.xyz", ":")) == 3
    assert [line.strip().rsplit(": ", 1)[-1] for line in err.splitlines()] == ["1/3 structures", "2/3 structures", "3/3 structures"]
    code, out, err = main_run(capsys, "make-data", "emt-alloy", "empty.xyz", "--n", 0, cwd=tmp_path, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, "--n", "0")
    assert not (tmp_path / "empty.xyz").exists()
    (tmp_path / "file").write_text("")
    code, out, err = main_run(capsys, "make-data", "emt-alloy", "file/d.xyz", "--n", 3, cwd=tmp_path, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, "file/d.xyz")


def test_an_options_file_given_to_the_search_says_how_to_train_it(xyz, tmp_path, capsys, monkeypatch):
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(tiny_options(xyz)))
    code, out, err = main_run(capsys, "options.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, "options file", "nanopet-tune train options.yaml")


def test_missing_read_from_file_names_the_key_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "o.yaml").write_text(yaml.safe_dump({"training_set": {"systems": {"read_from": "nothere.xyz"}}}))
    code, out, err = main_run(capsys, "train", "o.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, "training_set.systems.read_from: nothere.xyz: file not found")
