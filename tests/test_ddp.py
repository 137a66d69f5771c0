"""Distributed data parallel training on CPU: two processes, gloo backend (spec 3.1, 3.3, pitfall 28).

Each test spawns two fresh Python processes with ``torch.multiprocessing``; they find each other
through RANK / WORLD_SIZE / MASTER_ADDR in the environment and ``distributed_port`` (a free port),
exactly as ``nanopet.runtime.start_distributed`` reads them under torchrun.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import EMT_CUTOFF

from nanopet.composition import fit_composition_weights
from nanopet.data.batch import GraphDataset
from nanopet.data.splits import Data
from nanopet.model import NanoPET, composition_features
from nanopet.runtime import start_distributed
from nanopet.loss import Loss, loss_terms
from nanopet.train import evaluate, shard, train

WORLD_SIZE = 2
TIMEOUT_S = 120
HYPERS = {"cutoff": EMT_CUTOFF, "cutoff_width": 0.5, "d_pet": 8, "num_heads": 2, "num_gnn_layers": 2,
          "num_attention_layers": 1}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_environment(rank: int) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE),
                       "MASTER_ADDR": "127.0.0.1"})
    torch.set_num_threads(1)


def run_processes(function, *args) -> None:
    """Spawn WORLD_SIZE processes running ``function(rank, *args)``; fail (not hang) after TIMEOUT_S."""
    context = mp.start_processes(function, args=args, nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"distributed processes did not finish within {TIMEOUT_S} s")


def tiny_model(atomic_types, composition) -> NanoPET:
    torch.manual_seed(0)
    model = NanoPET(HYPERS, atomic_types).double()
    model.composition_weights.copy_(torch.from_numpy(composition))
    model.energy_scale.fill_(0.5)
    return model


def parameter_gradients(network, model, batch, loss, world_size=1):
    model.zero_grad(set_to_none=True)
    predictions = network(batch, forces=True, stress=True, create_graph=True, with_composition=False)
    value = loss(loss_terms(predictions, batch, False))
    if loss.reduction == "sum" and world_size > 1:
        value = value * world_size  # what the trainer does: DDP averages gradients, a sum must stay a sum
    value.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# DDP gradients of a batch split over two ranks = one process's gradients of the whole batch


def gradient_worker(rank, structures, port, out_dir):
    join_environment(rank)
    distribution = start_distributed({"distributed_port": port}, torch.device("cpu"))
    assert (distribution.rank, distribution.world_size) == (rank, WORLD_SIZE)
    try:
        dataset = GraphDataset(structures, EMT_CUTOFF)
        atomic_types = [29, 79]
        composition = fit_composition_weights(structures, atomic_types)
        offsets = composition_features([s.numbers for s in structures], atomic_types) @ composition
        model = tiny_model(atomic_types, composition)
        network = torch.nn.parallel.DistributedDataParallel(model)
        halves = shard([np.array([0, 1]), np.array([2, 3])], distribution.rank, distribution.world_size)
        assert len(halves) == 1
        batch = dataset.batch(halves[0], dtype=torch.float64, energy_offsets=offsets)
        results = {}
        for reduction in ("mean", "sum"):
            loss = Loss({"type": "mse", "reduction": reduction, "weights": {"forces": 2.0}, "deltas": {}},
                        ("energy", "forces", "virial"))
            results[reduction] = parameter_gradients(network, model, batch, loss, distribution.world_size)
        torch.save(results, Path(out_dir) / f"gradients_{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_gradients_equal_whole_batch_gradients(emt_structures, tmp_path):
    structures = emt_structures[:4]
    assert len({len(s) for s in structures}) == 1  # equal sizes: the mean of the two halves' means is the mean
    run_processes(gradient_worker, structures, free_port(), str(tmp_path))

    dataset = GraphDataset(structures, EMT_CUTOFF)
    composition = fit_composition_weights(structures, [29, 79])
    offsets = composition_features([s.numbers for s in structures], [29, 79]) @ composition
    model = tiny_model([29, 79], composition)
    batch = dataset.batch([0, 1, 2, 3], dtype=torch.float64, energy_offsets=offsets)
    ranks = [torch.load(tmp_path / f"gradients_{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for reduction in ("mean", "sum"):
        loss = Loss({"type": "mse", "reduction": reduction, "weights": {"forces": 2.0}, "deltas": {}},
                    ("energy", "forces", "virial"))
        whole = parameter_gradients(model, model, batch, loss)
        half = parameter_gradients(model, model, dataset.batch([0, 1], dtype=torch.float64, energy_offsets=offsets[:2]), loss)
        assert any(not torch.allclose(half[k], whole[k]) for k in whole)  # the halves alone differ
        for rank_gradients in ranks:
            assert rank_gradients[reduction].keys() == whole.keys()
            for name in whole:
                torch.testing.assert_close(rank_gradients[reduction][name], whole[name], rtol=1e-9, atol=1e-12,
                                           msg=f"{reduction}: {name}")


# ---------------------------------------------------------------------------------------------
# train(distributed: true) under two processes


def train_worker(rank, options, data, out_dir):
    join_environment(rank)
    result = train(options, data=data, log=lambda message: None, output_dir=Path(out_dir) / "run")
    torch.save({"state": result.model.state_dict(), "history": result.history}, Path(out_dir) / f"result_{rank}.pt")


def test_distributed_training_keeps_ranks_identical(emt_data, emt_options, tmp_path):
    data = Data(emt_data.train, emt_data.val, GraphDataset([], EMT_CUTOFF))  # 20 train, 5 validation
    options = emt_options(model={"num_gnn_layers": 2}, num_epochs=1, batch_size=2, distributed=True,
                          distributed_port=free_port())
    run_processes(train_worker, options, data, str(tmp_path))

    results = [torch.load(tmp_path / f"result_{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert all(len(r["history"]) == 1 for r in results)
    states = [r["state"] for r in results]
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    assert (tmp_path / "run" / "model.ckpt").is_file()

    # the validation loss of the distributed run is the loss of the whole validation set, as one
    # process computes it (no structure counted twice when the batches do not split evenly)
    model = NanoPET(options["architecture"]["model"], [29, 79])
    model.load_state_dict(states[0])
    weights = model.composition_weights.double().numpy()
    offsets = composition_features([s.numbers for s in data.val.structures], [29, 79]) @ weights
    loss = Loss({"type": "mse", "reduction": "mean", "weights": {}, "deltas": {}}, ("energy", "forces", "virial"))
    single = evaluate(model, data.val, 2, loss, offsets, False, "cpu", torch.float32)
    assert results[0]["history"][0]["val_loss"] == pytest.approx(single.whole_set_loss(), rel=1e-5)
    assert results[0]["history"][0]["val_energy_rmse"] == pytest.approx(single.metrics("val")["val_energy_rmse"], rel=1e-5)
