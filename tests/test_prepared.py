"""Datasets prepared on disk (nanopet.data.prepare, nanopet.data.prepared): the same batches and training as in
memory, rebuilt when the source changes, never read half written, shared by processes; frames read as a stream."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from conftest import EMT_CUTOFF
from tune_support import cli_env

from nanopet.data import prepare as prepare_module
from nanopet.data import prepared as prepared_module
from nanopet.data.batch import GraphDataset
from nanopet.data.builtin import builtin_dataset_path
from nanopet.data.frames import frame_ranges, read_frames
from nanopet.data.prepare import find_prepared, prepare
from nanopet.data.prepared import PreparedDataset, PreparedStore, open_store
from nanopet.data.read import dataset_specs, read_structures
from nanopet.data.splits import load_data
from nanopet.errors import InputError

PREPARED_CUTOFF = 5.0


@pytest.fixture(autouse=True)
def prepared_root(tmp_path, monkeypatch):
    """Prepared folders of these tests go to a folder of their own, never the user's cache."""
    root = tmp_path / "prepared"
    monkeypatch.setenv("NANOPET_PREPARED", str(root))
    return root


@pytest.fixture(scope="module")
def builtin_file() -> Path:
    """The built-in EMT Cu-Au dataset, 40 structures (generated once and cached like every built-in set)."""
    return builtin_dataset_path("emt-alloy", 40, 0)


def copy_of(path: Path, folder: Path, name: str = "data.xyz") -> Path:
    target = folder / name
    target.write_bytes(Path(path).read_bytes())
    return target


def quiet_prepare(path, cutoff=PREPARED_CUTOFF, **kwargs) -> Path:
    return prepare(dataset_specs(str(path)), cutoff, progress=lambda line: None, **kwargs)


def assert_same_batches(expected, got, batch):
    for field in dataclasses.fields(expected):
        a, b = getattr(expected, field.name), getattr(got, field.name)
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            assert a is not None and b is not None, (batch, field.name)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (batch, field.name)
        else:
            assert a == b, (batch, field.name)


# ----------------------------------------------------------------------------------------------
# The same data as in memory


def test_prepared_batches_equal_in_memory_batches_bit_for_bit(builtin_file, monkeypatch):
    memory = GraphDataset(read_structures(str(builtin_file)), PREPARED_CUTOFF)
    folder = quiet_prepare(builtin_file)
    prepared = PreparedDataset(open_store(folder))
    monkeypatch.setattr(prepared_module, "COUNTING_CHUNK", 1500)  # neighbour counts a few structures at a time
    np.testing.assert_array_equal(PreparedStore(folder).max_neighbors(3.3), memory.at_cutoff(3.3).max_neighbors)
    rng = np.random.default_rng(0)
    for cutoff in (PREPARED_CUTOFF, EMT_CUTOFF, 3.3):  # the folder's cutoff, then lists filtered by distance
        a, b = memory.at_cutoff(cutoff), prepared.at_cutoff(cutoff)
        keep = np.sort(rng.permutation(len(a))[:30])
        a, b = a.subset(keep), b.subset(keep)
        for name in ("n_atoms", "energies", "periodic", "stress_mask", "max_neighbors", "volumes", "stresses",
                     "atom_numbers", "atom_forces"):
            left, right = getattr(a, name), getattr(b, name)
            left, right = (left(), right()) if callable(left) else (left, right)
            np.testing.assert_array_equal(left, right, err_msg=name)
        assert (a.has_forces, a.has_stress, a.atomic_types) == (b.has_forces, b.has_stress, b.atomic_types)
        np.testing.assert_array_equal(a.species_counts([29, 79]), b.species_counts([29, 79]))
        offsets = rng.normal(size=len(a))
        for k, dtype in enumerate((torch.float32, torch.float64, torch.float32)):
            indices = rng.choice(len(a), 7, replace=False)
            assert_same_batches(a.batch(indices, dtype=dtype, energy_offsets=offsets),
                                b.batch(indices, dtype=dtype, energy_offsets=offsets), (cutoff, k))
    structure = prepared.structure(3)
    np.testing.assert_array_equal(structure.positions, memory.structure(3).positions)
    assert structure.source == f"{builtin_file}:3" and structure.energy == memory.structure(3).energy


def test_ranges_prepared_by_several_processes_equal_one_pass(builtin_file, tmp_path, monkeypatch):
    whole = open_store(quiet_prepare(builtin_file, jobs=1, root=tmp_path / "one"))
    monkeypatch.setattr(prepare_module, "RANGE_FRAMES", 7)
    parts = open_store(quiet_prepare(builtin_file, jobs=2, root=tmp_path / "two"))
    assert whole.arrays.keys() == parts.arrays.keys()
    for name in whole.arrays:
        np.testing.assert_array_equal(whole.arrays[name], parts.arrays[name], err_msg=name)


def test_training_on_prepared_data_gives_the_in_memory_losses(builtin_file, emt_options):
    from nanopet.train import train

    options = emt_options(num_epochs=2, batch_size=6)
    options.update(training_set=str(builtin_file), validation_set=0.2, test_set=0.1)
    results = {}
    for prepared in (False, True):
        data = load_data(options, cutoff=PREPARED_CUTOFF, prepared=prepared)
        assert bool(data.prepared_folders) == prepared
        results[prepared] = train(options, data=data, log=lambda line: None)
    for memory, disk in zip(results[False].history, results[True].history):
        for key in ("train_loss", "val_loss", "val_energy_rmse", "val_forces_rmse", "train_forces_rmse"):
            assert memory[key] == disk[key], key
    assert results[False].test_metrics == results[True].test_metrics


# ----------------------------------------------------------------------------------------------
# Keyed by content and cutoff; nothing half written is read


def test_a_changed_file_or_a_larger_cutoff_prepares_anew(builtin_file, tmp_path):
    path = copy_of(builtin_file, tmp_path)
    first = quiet_prepare(path)
    assert quiet_prepare(path) == first and quiet_prepare(path, cutoff=EMT_CUTOFF) == first  # a smaller cutoff filters it
    frames = list(read_frames(path))
    frames[0].calc.results["energy"] += 1.0
    ase.io.write(path, frames, format="extxyz")
    second = quiet_prepare(path)
    assert second != first
    energies = PreparedDataset(open_store(second)).energies
    assert energies[0] == pytest.approx(PreparedDataset(open_store(first)).energies[0] + 1.0)
    third = quiet_prepare(path, cutoff=6.0)
    assert third not in (first, second) and open_store(third).cutoff == 6.0
    assert find_prepared(dataset_specs(str(path)), 5.5) == third


def test_different_keys_or_units_are_different_preparations(builtin_file, tmp_path):
    path = copy_of(builtin_file, tmp_path)
    plain = prepare(dataset_specs(str(path)), PREPARED_CUTOFF, progress=lambda line: None)
    in_mev = {"systems": str(path), "targets": {"energy": {"unit": "meV"}}}
    other = prepare(dataset_specs(in_mev), PREPARED_CUTOFF, progress=lambda line: None)
    assert other != plain
    ratio = PreparedDataset(open_store(other)).energies / PreparedDataset(open_store(plain)).energies
    np.testing.assert_allclose(ratio, 1e-3)


def test_a_failed_preparation_leaves_nothing_that_is_read(builtin_file, tmp_path, monkeypatch, prepared_root):
    path = copy_of(builtin_file, tmp_path)
    original, calls = prepare_module._prepare_range, []

    def failing(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(task)

    monkeypatch.setattr(prepare_module, "RANGE_FRAMES", 5)
    monkeypatch.setattr(prepare_module, "_prepare_range", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        quiet_prepare(path, jobs=1)
    assert find_prepared(dataset_specs(str(path)), PREPARED_CUTOFF) is None
    assert not [p for p in prepared_root.iterdir() if p.is_dir() and p.name != "digests"]  # no temporary folder left


def test_a_killed_preparation_leaves_nothing_that_is_read(builtin_file, tmp_path, prepared_root):
    path = copy_of(builtin_file, tmp_path)
    script = textwrap.dedent(f"""
        import time
        from nanopet.data import prepare as module
        from nanopet.data.read import dataset_specs
        original = module._prepare_range
        def slow(task):
            time.sleep(0.3)
            return original(task)
        module.RANGE_FRAMES, module._prepare_range = 4, slow
        module.prepare(dataset_specs({str(path)!r}), {PREPARED_CUTOFF}, jobs=1)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env=cli_env(), stderr=subprocess.PIPE, text=True)

    def half_written() -> bool:  # a temporary folder with some pairs in it
        files = list(prepared_root.glob(".*.tmp/pair_i.npy"))
        return bool(files) and files[0].stat().st_size > prepare_module.NPY_HEADER

    deadline = time.time() + 60
    while not half_written():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    specs = dataset_specs(str(path))
    assert find_prepared(specs, PREPARED_CUTOFF) is None  # the half-written folder is never found
    folder = quiet_prepare(path)  # prepared again, and the remains removed
    assert not list(prepared_root.glob(".*.tmp"))
    assert len(PreparedDataset(open_store(folder))) == 40


def test_two_processes_open_one_preparation_and_read_the_same_data(builtin_file, tmp_path, prepared_root):
    path = copy_of(builtin_file, tmp_path)
    script = textwrap.dedent(f"""
        import hashlib, json, sys
        import numpy as np
        from nanopet.data.splits import load_data
        options = {{"training_set": {str(path)!r}, "validation_set": 0.25, "architecture": {{"model": {{"cutoff": 4.5}}}}}}
        data = load_data(options, cutoff=5.0, prepared=True)
        batch = data.train.batch(np.arange(len(data.train)))
        digest = hashlib.sha1(b"".join(t.numpy().tobytes() for t in (batch.positions, batch.centers, batch.edge_reverse,
                                                                     batch.forces, batch.energy))).hexdigest()
        print(json.dumps({{"folders": data.prepared_folders, "digest": digest}}))
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert results[0] == results[1] and len(results[0]["folders"]) == 1
    started = [line for _, stderr in outputs for line in stderr.splitlines() if line.startswith("preparing ")]
    assert len(started) == 1, outputs  # one prepared it, the other waited and read it


# ----------------------------------------------------------------------------------------------
# Frames as a stream; bad frames named


def test_frames_are_read_as_a_stream_in_ranges(builtin_file, monkeypatch):
    whole = read_structures(str(builtin_file))
    monkeypatch.setattr(ase.io, "read", lambda *args, **kwargs: pytest.fail("a whole file was read at once"))
    ranges = frame_ranges(builtin_file, 6)
    assert [(r.start, r.stop) for r in ranges][-2:] == [(30, 36), (36, 40)]
    frames = [atoms for r in reversed(ranges) for atoms in read_frames(r)][::-1]
    streamed = read_structures(str(builtin_file))
    assert len(streamed) == len(whole) == len(frames) == 40
    for a, b in zip(whole, streamed):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert (a.energy, a.source) == (b.energy, b.source)


def test_bad_frames_are_named_when_prepared_in_ranges(builtin_file, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "RANGE_FRAMES", 5)
    frames = list(read_frames(builtin_file))
    frames[13].positions[2, 1] = np.nan
    ase.io.write(tmp_path / "nan.xyz", frames, format="extxyz")
    with pytest.raises(InputError, match=r"nan\.xyz:13: positions contains NaN"):
        quiet_prepare(tmp_path / "nan.xyz", jobs=2)

    frames = list(read_frames(builtin_file))
    frames[11].calc.results.pop("forces")
    ase.io.write(tmp_path / "forces.xyz", frames, format="extxyz")
    with pytest.raises(InputError, match=r"forces\.xyz:11: forces key 'forces' not found.*forces: false"):
        quiet_prepare(tmp_path / "forces.xyz", jobs=2)

    text = (Path(builtin_file).read_text().splitlines(keepends=True))
    atoms_per_frame = 32 + 2
    broken = text[: 7 * atoms_per_frame] + ["thirty-two\n"] + text[7 * atoms_per_frame + 1 :]
    (tmp_path / "broken.xyz").write_text("".join(broken))
    with pytest.raises(InputError, match=r"broken\.xyz:7: cannot read the file"):
        quiet_prepare(tmp_path / "broken.xyz")
    assert find_prepared(dataset_specs(str(tmp_path / "nan.xyz")), PREPARED_CUTOFF) is None


# ----------------------------------------------------------------------------------------------
# Where preparation happens: load_data, the prepare command, a search's launcher


def test_load_data_prepares_large_sets_and_uses_any_prepared_one(builtin_file, tmp_path, monkeypatch):
    path = copy_of(builtin_file, tmp_path)
    options = {"training_set": str(path), "architecture": {"model": {"cutoff": 4.0}}}
    assert load_data(options).prepared_folders == []  # small: in memory
    from nanopet.cli import main

    assert main(["prepare", str(path), "--cutoff", "4.5"]) == 0
    data = load_data(options)  # a prepared folder exists: it is used, at a smaller cutoff
    assert len(data.prepared_folders) == 1 and data.train.cutoff == 4.0
    monkeypatch.setattr(prepare_module, "PREPARED_FROM", 1)
    other = copy_of(builtin_file, tmp_path, "other.xyz")
    other.write_text(other.read_text().replace("sampling=rattled", "sampling=shaken"))
    assert len(load_data({**options, "training_set": str(other)}).prepared_folders) == 1  # large: prepared


def test_search_workers_map_one_prepared_copy(builtin_file, tmp_path, monkeypatch, capfd):
    from tune_support import tiny_space

    from nanopet.tune import load_search_space
    from nanopet.tune.optuna_driver.workers import forkable, launch

    if not forkable([]):
        pytest.skip("forked CPU workers only")
    monkeypatch.setattr(prepare_module, "PREPARED_FROM", 1)
    path = copy_of(builtin_file, tmp_path)
    space = load_search_space(tiny_space(tmp_path / "studies", training_set=str(path), budget={"n_trials": 2, "epochs": 1}))
    assert launch(space, workers=2, out=lambda line: None).status == "completed"
    records = [json.loads(p.read_text()) for p in (tmp_path / "studies" / "tiny" / "workers").glob("*.json")]
    assert len(records) == 2 and records[0]["prepared"] == records[1]["prepared"] and len(records[0]["prepared"]) == 1
    started = [line for line in capfd.readouterr().err.splitlines() if line.startswith("preparing ")]
    assert len(started) == 1  # by the launcher, before the workers started


def test_eval_of_a_prepared_file_reports_and_writes_what_the_in_memory_read_does(builtin_file, tmp_path, emt_options,
                                                                                  monkeypatch):
    from nanopet.evaluate import evaluate_model
    from nanopet.train import train

    path = copy_of(builtin_file, tmp_path)
    options = emt_options(num_epochs=1)
    options.update(training_set=str(path), validation_set=0.5)
    train(options, output_dir=tmp_path / "run", log=lambda line: None)
    results = []
    for threshold in (prepare_module.PREPARED_FROM, 1):  # in memory, then prepared
        monkeypatch.setattr(prepare_module, "PREPARED_FROM", threshold)
        output = tmp_path / f"predictions-{threshold}.xyz"
        metrics = evaluate_model(tmp_path / "run" / "model.ckpt", [path], output, batch_size=4, out=lambda line: None)
        results.append((metrics, output.read_text()))
        assert (find_prepared(dataset_specs(str(path)), EMT_CUTOFF) is not None) == (threshold == 1)
    assert results[0] == results[1] and results[0][0][str(path)]["test_forces_rmse"] > 0


def test_other_ase_formats_are_prepared_in_one_range(builtin_file, tmp_path):
    frames = list(read_frames(builtin_file))[:12]
    ase.io.write(tmp_path / "frames.traj", frames)
    memory = GraphDataset(read_structures(str(tmp_path / "frames.traj")), PREPARED_CUTOFF)
    prepared = PreparedDataset(open_store(quiet_prepare(tmp_path / "frames.traj", jobs=2)))
    assert len(prepared) == 12
    assert_same_batches(memory.batch(np.arange(12)), prepared.batch(np.arange(12)), "traj")


def test_a_prepared_dataset_travels_to_other_processes_by_name(builtin_file):
    import pickle

    dataset = PreparedDataset(open_store(quiet_prepare(builtin_file))).restrict(EMT_CUTOFF).subset(np.arange(20))
    message = pickle.dumps(dataset)
    assert len(message) < 20_000  # the folder's name and the view, not its arrays
    again = pickle.loads(message)
    assert again.store is dataset.store  # in this process: the same maps
    assert_same_batches(dataset.batch(np.arange(5)), again.batch(np.arange(5)), "pickled")


@pytest.mark.slow
def test_ddp_ranks_train_identically_on_a_prepared_dataset(builtin_file, emt_options, tmp_path):
    from test_ddp import free_port, run_processes, train_worker

    options = emt_options(num_epochs=1, batch_size=4, distributed=True, distributed_port=free_port())
    options.update(training_set=str(builtin_file), validation_set=0.25, test_set=0.0)
    data = load_data(options, prepared=True)
    run_processes(train_worker, options, data, str(tmp_path))
    results = [torch.load(tmp_path / f"result_{rank}.pt", weights_only=True) for rank in range(2)]
    for name, value in results[0]["state"].items():
        assert torch.equal(value, results[1]["state"][name]), name
    assert results[0]["history"][0]["val_loss"] == results[1]["history"][0]["val_loss"]


def test_labels_from_another_file_are_prepared_in_the_same_ranges(builtin_file, tmp_path, monkeypatch):
    labelled = list(read_frames(builtin_file))[:20]
    bare = [atoms.copy() for atoms in labelled]  # positions and cell only
    ase.io.write(tmp_path / "systems.xyz", bare, format="extxyz")
    ase.io.write(tmp_path / "labels.xyz", labelled, format="extxyz")
    dataset = {"systems": "systems.xyz", "targets": {"energy": {"read_from": "labels.xyz"}}}
    memory = GraphDataset(read_structures(dataset, base_dir=tmp_path), PREPARED_CUTOFF)
    monkeypatch.setattr(prepare_module, "RANGE_FRAMES", 6)
    folder = prepare(dataset_specs(dataset, tmp_path), PREPARED_CUTOFF, jobs=2, progress=lambda line: None)
    prepared = PreparedDataset(open_store(folder))
    assert memory.has_forces and prepared.has_forces
    assert_same_batches(memory.batch(np.arange(20)), prepared.batch(np.arange(20)), "two files")
    ase.io.write(tmp_path / "labels.xyz", labelled[:19], format="extxyz")
    with pytest.raises(InputError, match="labels.xyz: has 19 frames but .*systems.xyz has 20"):
        prepare(dataset_specs(dataset, tmp_path), PREPARED_CUTOFF, progress=lambda line: None)
