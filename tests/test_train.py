"""The trainer's contract (spec section 3): every training hyperparameter changes what it should.

Tiny models (d_pet 8, one GNN and one attention layer, cutoff 4 A) on 20 EMT structures keep
each training run well under a second of compute.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import math

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc100
from ase.calculators.emt import EMT
from conftest import EMT_CUTOFF, emt_to_structure

from nanopet.checkpoints import load_checkpoint, model_from_checkpoint
from nanopet.composition import fit_composition_weights
from nanopet.data import Structure
from nanopet.data.batch import GraphDataset
from nanopet.data.splits import Data
from nanopet.errors import InputError, NanoPETError, NonFiniteLossError
from nanopet.model import NanoPET
from nanopet.loss import Accumulator, Loss, Terms, loss_terms
from nanopet.train import epoch_batches, evaluate, random_rotations, rotate, train

train_module = importlib.import_module("nanopet.train")  # `import nanopet.train` gives the function

TINY = {"cutoff": EMT_CUTOFF, "cutoff_width": 0.5, "d_pet": 8, "num_heads": 2, "num_gnn_layers": 1,
        "num_attention_layers": 1}


@pytest.fixture(scope="module")
def no_test_data(emt_data):
    """emt_data without a test set (the trainer then evaluates nothing after training)."""
    return Data(emt_data.train, emt_data.val, GraphDataset([], EMT_CUTOFF))


@pytest.fixture(scope="module")
def mixed_sizes(emt_structures):
    """Structures of 32, 8 and 4 atoms, so means over elements depend on how a set is batched."""
    rng = np.random.default_rng(1)
    small = []
    for symbols, repeat in (("Cu4", (1, 1, 2)), ("Cu2Au2", (1, 1, 1)), ("CuAu3", (1, 1, 2)), ("Au4", (1, 1, 1))):
        atoms = bulk("Cu", "fcc", a=3.8, cubic=True)
        atoms.symbols = symbols
        atoms = atoms.repeat(repeat)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        small.append(emt_to_structure(atoms))
    return GraphDataset(emt_structures[30:33] + small, EMT_CUTOFF)


def quiet_train(options, data, **kwargs):
    return train(options, data=data, log=lambda message: None, **kwargs)


def model_for(data: Data, hypers=TINY, dtype=torch.float64, seed=0):
    """A tiny NanoPET set up like train() does (composition fit, energy scale), with the offsets per split."""
    types = sorted({int(z) for s in data.train.structures + data.val.structures for z in s.numbers})
    torch.manual_seed(seed)
    model = NanoPET(hypers, types)
    weights = fit_composition_weights(data.train.structures, types)
    model.composition_weights.copy_(torch.from_numpy(weights))
    model.energy_scale.fill_(0.5)
    model.to(dtype)
    index = {z: k for k, z in enumerate(types)}

    def offsets(dataset):
        return np.array([weights[[index[int(z)] for z in s.numbers]].sum() for s in dataset.structures])

    return model, offsets


def loss_config(kind="mse", reduction="mean", weights=None, deltas=None):
    return {"type": kind, "reduction": reduction, "weights": dict(weights or {}), "deltas": dict(deltas or {})}


def parameter_gradients(model, batch, loss, per_structure=False):
    model.zero_grad(set_to_none=True)
    predictions = model(batch, forces=True, create_graph=True, with_composition=False)
    terms = loss_terms(predictions, batch, per_structure)
    terms.pairs = {name: pair for name, pair in terms.pairs.items() if name in loss.weights}
    value = loss(terms)
    value.backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])
    return float(value.detach()), grads


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# loss.type, loss.reduction, loss.deltas: Loss on hand-made terms

# energy errors (0.5, -3); force errors (0.1, -0.2, 0.3, 2, 0, -1)
E_PRED, E_TARGET = [1.0, -2.0], [0.5, 1.0]
F_PRED, F_TARGET = [[0.1, -0.2, 0.3], [3.0, 1.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


def hand_terms() -> Terms:
    t = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return Terms({"energy": (t(E_PRED), t(E_TARGET)), "forces": (t(F_PRED), t(F_TARGET))})


@pytest.mark.parametrize(
    "kind, reduction, weights, expected",
    [
        ("mse", "mean", {}, (0.25 + 9) / 2 + (0.01 + 0.04 + 0.09 + 4 + 0 + 1) / 6),
        ("mse", "sum", {}, (0.25 + 9) + (0.01 + 0.04 + 0.09 + 4 + 0 + 1)),
        ("mae", "mean", {}, (0.5 + 3) / 2 + (0.1 + 0.2 + 0.3 + 2 + 0 + 1) / 6),
        ("mae", "sum", {}, (0.5 + 3) + (0.1 + 0.2 + 0.3 + 2 + 0 + 1)),
        # huber, delta 1 (energy) and 0.5 (forces): 0.5 x^2 inside, delta (|x| - delta / 2) outside
        ("huber", "mean", {}, (0.125 + 2.5) / 2 + (0.005 + 0.02 + 0.045 + 0.875 + 0 + 0.375) / 6),
        ("huber", "sum", {}, (0.125 + 2.5) + (0.005 + 0.02 + 0.045 + 0.875 + 0 + 0.375)),
        ("mse", "mean", {"energy": 2.0, "forces": 0.5}, 2 * (0.25 + 9) / 2 + 0.5 * (0.01 + 0.04 + 0.09 + 4 + 0 + 1) / 6),
        ("mae", "sum", {"forces": 0.0}, 0.5 + 3),
    ],
)
def test_loss_matches_hand_computed_values(kind, reduction, weights, expected):
    deltas = {"energy": 1.0, "forces": 0.5} if kind == "huber" else {}
    loss = Loss(loss_config(kind, reduction, weights, deltas), ("energy", "forces"))
    assert float(loss(hand_terms())) == pytest.approx(expected, rel=1e-12)


def test_metatrain_style_huber_type_is_the_same_loss():
    flat = Loss(loss_config("huber", deltas={"energy": 1.0, "forces": 0.5}), ("energy", "forces"))
    nested = {"type": {"huber": {"deltas": {"energy": 1.0, "forces": 0.5}}}, "reduction": "mean", "weights": {}}
    assert float(Loss(nested, ("energy", "forces"))(hand_terms())) == pytest.approx(float(flat(hand_terms())), rel=1e-14)


def test_huber_without_a_delta_for_a_present_term_is_an_input_error():
    with pytest.raises(InputError, match=r"loss\.deltas.*forces"):
        Loss(loss_config("huber", deltas={"energy": 1.0}), ("energy", "forces"))
    # a delta for a term the data does not have is not needed
    Loss(loss_config("huber", deltas={"energy": 1.0, "forces": 0.5}), ("energy", "forces"))


def test_huber_without_deltas_stops_train_before_training(emt_options, no_test_data):
    options = emt_options(loss={"type": "huber", "deltas": {"energy": 0.1}})
    with pytest.raises(InputError, match="deltas"):
        quiet_train(options, no_test_data)


@pytest.mark.parametrize(
    "loss, fragment",
    [({"type": "l2"}, "loss.type"), ({"reduction": "none"}, "loss.reduction"), ({"weights": {"force": 1.0}}, "loss.weights.force"),
     ({"weights": {"forces": -1.0}}, "loss.weights.forces"), ({"type": "huber", "deltas": {"energy": 0}}, "loss.deltas.energy")],
)
def test_bad_loss_options_name_the_key(emt_options, no_test_data, loss, fragment):
    with pytest.raises(InputError, match=fragment.replace(".", r"\.")):
        quiet_train(emt_options(loss=loss), no_test_data)


def test_whole_set_loss_of_the_accumulator_is_the_loss_of_one_batch():
    for reduction in ("mean", "sum"):
        loss = Loss(loss_config("mse", reduction, {"forces": 3.0}), ("energy", "forces"))
        accumulator = Accumulator(loss)
        terms = hand_terms()
        for k in range(2):  # two "batches": one structure and its atoms each
            accumulator.add(Terms({name: (p[k:k + 1], t[k:k + 1]) for name, (p, t) in terms.pairs.items()}))
        assert accumulator.whole_set_loss() == pytest.approx(float(loss(terms)), rel=1e-12)


def test_rmse_gmean_is_the_geometric_mean_of_each_targets_rmse_over_its_spread():
    rng = np.random.default_rng(0)
    energy_t, forces_t, stress_t = rng.normal(size=6), rng.normal(scale=3.0, size=(20, 3)), rng.normal(scale=0.01, size=(6, 3, 3))
    errors = {"energy": 0.1, "forces": 0.5, "stress": 0.002}
    pairs = {"energy": (torch.tensor(energy_t + errors["energy"] * rng.normal(size=6)), torch.tensor(energy_t)),
             "forces": (torch.tensor(forces_t + errors["forces"] * rng.normal(size=(20, 3))), torch.tensor(forces_t))}
    stress = (torch.tensor(stress_t + errors["stress"] * rng.normal(size=(6, 3, 3))), torch.tensor(stress_t))
    accumulator = Accumulator(Loss(loss_config(), ("energy", "forces")))
    accumulator.add(Terms(dict(pairs), stress))
    metrics = accumulator.metrics("val")

    def relative(prediction, target):
        prediction, target = prediction.numpy(), target.numpy()
        return np.sqrt(np.mean((prediction - target) ** 2)) / np.std(target)

    expected = np.exp(np.mean(np.log([relative(*pairs["energy"]), relative(*pairs["forces"]), relative(*stress)])))
    assert metrics["val_rmse_gmean"] == pytest.approx(expected, rel=1e-10)
    # a unit change of one target (e.g. forces in meV/A) changes its RMSE, not the gmean
    scaled = Accumulator(Loss(loss_config(), ("energy", "forces")))
    scaled.add(Terms({"energy": pairs["energy"], "forces": tuple(1000 * x for x in pairs["forces"])}, stress))
    assert scaled.metrics("val")["val_rmse_gmean"] == pytest.approx(expected, rel=1e-10)
    assert scaled.metrics("val")["val_forces_rmse"] == pytest.approx(1000 * metrics["val_forces_rmse"], rel=1e-10)


# ---------------------------------------------------------------------------------------------
# loss.weights


def test_force_weight_zero_removes_and_two_doubles_the_force_gradient(emt_data):
    model, offsets = model_for(emt_data)
    batch = emt_data.train.batch([0, 1, 2], dtype=torch.float64, energy_offsets=offsets(emt_data.train))
    both = ("energy", "forces")
    value_e, energy_only = parameter_gradients(model, batch, Loss(loss_config(), ("energy",)))
    value_0, weight_0 = parameter_gradients(model, batch, Loss(loss_config(weights={"forces": 0.0}), both))
    value_1, weight_1 = parameter_gradients(model, batch, Loss(loss_config(), both))
    value_2, weight_2 = parameter_gradients(model, batch, Loss(loss_config(weights={"forces": 2.0}), both))

    force_part = weight_1 - energy_only
    assert force_part.norm() > 0.1 * energy_only.norm()  # the forces term does contribute
    assert value_0 == value_e and torch.equal(weight_0, energy_only)
    assert value_2 - value_e == pytest.approx(2 * (value_1 - value_e), rel=1e-10)
    torch.testing.assert_close(weight_2 - energy_only, 2 * force_part, rtol=1e-8, atol=1e-12)


def test_loss_weights_reach_the_trainer_validation_loss(emt_options, no_test_data):
    # mse + mean: the validation loss is sum_t w_t * RMSE_t^2 over the terms (energy, forces, virial)
    weights = {"energy": 1.0, "forces": 2.0, "virial": 0.0}
    result = quiet_train(emt_options(num_epochs=1, loss={"weights": weights}), no_test_data)
    row = result.history[0]
    expected = row["val_energy_rmse"] ** 2 + 2 * row["val_forces_rmse"] ** 2
    assert row["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert row["val_virial_rmse"] ** 2 > 0.01 * expected  # the virial error exists, it is just not in the loss


# ---------------------------------------------------------------------------------------------
# per_structure_targets


def test_per_structure_energy_is_not_divided_by_the_atom_count(emt_data):
    batch = emt_data.train.batch([0, 1, 2], dtype=torch.float64)
    predictions = {"energy": torch.tensor([-100.0, -90.0, -80.0], dtype=torch.float64),
                   "forces": torch.zeros_like(batch.forces), "stress": torch.zeros_like(batch.stress)}
    n = batch.n_atoms.double()
    per_atom = loss_terms(predictions, batch, per_structure=False)
    per_structure = loss_terms(predictions, batch, per_structure=True)
    torch.testing.assert_close(per_atom.pairs["energy"][0], predictions["energy"] / n)
    torch.testing.assert_close(per_atom.pairs["energy"][1], batch.energy / n)
    torch.testing.assert_close(per_structure.pairs["energy"][0], predictions["energy"])
    torch.testing.assert_close(per_structure.pairs["energy"][1], batch.energy)
    # virial = stress * volume, per atom unless per-structure; forces never normalised
    torch.testing.assert_close(per_atom.pairs["virial"][1], batch.stress * (batch.volume / n)[:, None, None])
    torch.testing.assert_close(per_structure.pairs["virial"][1], batch.stress * batch.volume[:, None, None])
    assert torch.equal(per_atom.pairs["forces"][1], per_structure.pairs["forces"][1])


def test_per_structure_targets_changes_the_trainer_energy_metric(emt_options, no_test_data):
    # a learning rate of 1e-12 leaves the initial model in place: the same errors, in other units
    runs = {}
    for targets in ([], ["energy"]):
        options = emt_options(num_epochs=1, learning_rate=1e-12, per_structure_targets=targets)
        runs[tuple(targets)] = quiet_train(options, no_test_data).history[0]
    per_atom, per_structure = runs[()], runs[("energy",)]
    assert per_structure["val_energy_rmse"] == pytest.approx(32 * per_atom["val_energy_rmse"], rel=1e-4)
    assert per_structure["val_forces_rmse"] == pytest.approx(per_atom["val_forces_rmse"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# batch_size


def test_epoch_batches_partition_the_set_into_batch_size_pieces(emt_data):
    dataset = emt_data.train  # 20 structures
    for batch_size in (1, 3, 6, 20, 50):
        batches = epoch_batches(dataset, batch_size, torch.Generator().manual_seed(0))
        assert len(batches) == math.ceil(20 / batch_size)
        assert sorted(np.concatenate(batches).tolist()) == list(range(20))
        assert sum(len(b) < batch_size for b in batches) <= 1
        assert max(len(b) for b in batches) == min(batch_size, 20)
    first = epoch_batches(dataset, 4, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    epoch_0, epoch_1 = epoch_batches(dataset, 4, generator), epoch_batches(dataset, 4, generator)
    assert [b.tolist() for b in epoch_0] == [b.tolist() for b in first]  # the generator decides the order
    assert [b.tolist() for b in epoch_0] != [b.tolist() for b in epoch_1]  # reshuffled every epoch
    fixed = epoch_batches(dataset, 4, None)  # validation: fixed order
    assert [b.tolist() for b in fixed] == [b.tolist() for b in epoch_batches(dataset, 4, None)]


@pytest.mark.parametrize("batch_size, steps_per_epoch", [(5, 4), (3, 7), (40, 1)])
def test_batch_size_sets_the_number_of_optimizer_steps(emt_options, no_test_data, monkeypatch, batch_size, steps_per_epoch):
    steps = []
    original = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    quiet_train(emt_options(num_epochs=2, batch_size=batch_size), no_test_data)
    assert len(steps) == 2 * steps_per_epoch


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_validation_loss_does_not_depend_on_batch_size(emt_data, mixed_sizes, reduction):
    model, offsets = model_for(emt_data)
    loss = Loss(loss_config("mse", reduction, {"forces": 0.5}), ("energy", "forces", "virial"))
    values = {}
    for batch_size in (1, 2, 3, 7):
        accumulator = evaluate(model, mixed_sizes, batch_size, loss, offsets(mixed_sizes), False, "cpu", torch.float64)
        values[batch_size] = accumulator.whole_set_loss()
    assert values[1] > 0
    for batch_size in (2, 3, 7):
        assert values[batch_size] == pytest.approx(values[1], rel=1e-10)
    # and it is the loss of the whole set as one batch
    batch = mixed_sizes.batch(range(len(mixed_sizes)), dtype=torch.float64, energy_offsets=offsets(mixed_sizes))
    predictions = model(batch, forces=True, stress=True, with_composition=False)
    assert values[1] == pytest.approx(float(loss(loss_terms(predictions, batch, False))), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# learning_rate, scheduler, warmup_fraction, scheduler_patience, scheduler_factor


def test_learning_rate_reaches_the_optimizer(emt_options, no_test_data, tmp_path):
    result = quiet_train(emt_options(num_epochs=2, learning_rate=0.0123, checkpoint_interval=1, scheduler="plateau"),
                         no_test_data, output_dir=tmp_path)
    assert [row["learning_rate"] for row in result.history] == [0.0123, 0.0123]
    state = load_checkpoint(tmp_path / "checkpoints" / "model_0.ckpt")
    assert state["optimizer_state_dict"]["param_groups"][0]["lr"] == 0.0123


def test_cosine_schedule_warms_up_then_ends_at_zero_where_training_ends(emt_options, no_test_data, monkeypatch):
    # 20 training structures in batches of 5: 4 optimizer steps an epoch, 12 in 3 epochs; warm-up 0.25 -> 3 steps
    rates = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    options = emt_options(num_epochs=3, learning_rate=1e-2, warmup_fraction=0.25)
    result = quiet_train(options, no_test_data)
    expected = [1e-2 * (k + 1) / 3 for k in range(3)] + [1e-2 * 0.5 * (1 + math.cos(math.pi * (k - 3) / 9)) for k in range(3, 12)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert result.stopped == "completed" and len(result.history) == 3
    # each epoch's learning_rate is that of its last optimizer step
    assert [row["learning_rate"] for row in result.history] == pytest.approx([rates[3], rates[7], rates[11]])


def test_cosine_schedule_length_follows_num_epochs(emt_options, no_test_data, monkeypatch):
    rates = {}
    for epochs in (2, 4):
        steps = []
        real_step = torch.optim.Adam.step
        monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, _s=steps, _r=real_step, **k: (_s.append(self.param_groups[0]["lr"]), _r(self, *a, **k))[1])
        quiet_train(emt_options(num_epochs=epochs, warmup_fraction=0.0), no_test_data)
        monkeypatch.undo()
        rates[epochs] = steps
    assert len(rates[2]) == 8 and len(rates[4]) == 16
    # the same cosine drawn over twice the steps: step 2k of the long run has step k's rate of the short one
    assert rates[4][::2] == pytest.approx(rates[2], rel=1e-12)
    assert rates[2][0] == 1e-2 and rates[2][-1] < 0.04 * 1e-2


def test_scheduler_epochs_makes_a_short_run_the_start_of_a_longer_one(emt_options, no_test_data, monkeypatch):
    def rates_of(**training):
        steps = []
        real_step = torch.optim.Adam.step
        monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, _s=steps, _r=real_step, **k: (_s.append(self.param_groups[0]["lr"]), _r(self, *a, **k))[1])
        quiet_train(emt_options(warmup_fraction=0.25, **training), no_test_data)
        monkeypatch.undo()
        return steps

    long, short = rates_of(num_epochs=4), rates_of(num_epochs=2, scheduler_epochs=4)
    # 4 steps an epoch: the short run follows the long one's first 6 steps (its warm-up spans the 4 epochs too), then
    # anneals over its last fifth (2 steps) towards zero
    assert len(long) == 16 and len(short) == 8 and short[:6] == pytest.approx(long[:6], rel=1e-12)
    assert short[6:] == pytest.approx([long[6] * 2 / 3, long[7] / 3], rel=1e-12)
    assert short[5] > 0.8 * 1e-2 and long[-1] < 0.02 * 1e-2
    # fewer scheduler_epochs than num_epochs: the run's own schedule, annealed where it ends
    assert rates_of(num_epochs=2, scheduler_epochs=1) == pytest.approx(rates_of(num_epochs=2), rel=1e-12)


def test_batches_per_epoch_counts_the_steps_of_an_epoch():
    class Sized:
        def __init__(self, n):
            self.max_neighbors = np.zeros(n, dtype=np.int64)

        def __len__(self):
            return len(self.max_neighbors)

    for n in (1, 5, 39, 40, 41, 200, 333):
        for batch_size in (1, 3, 5, 16):
            batches = epoch_batches(Sized(n), batch_size, torch.Generator().manual_seed(0))
            assert train_module.batches_per_epoch(n, batch_size) == len(batches), (n, batch_size)
            assert train_module.batches_per_epoch(n, batch_size, 2) == math.ceil(len(batches) / 2)


def test_a_plateau_checkpoint_resumed_under_cosine_names_the_setting(emt_options, no_test_data, tmp_path):
    quiet_train(emt_options(num_epochs=1, scheduler="plateau"), no_test_data, output_dir=tmp_path)
    with pytest.raises(InputError, match="scheduler: plateau"):
        quiet_train(emt_options(num_epochs=2), no_test_data, resume=tmp_path / "model.ckpt")


def scripted_validation_loss(monkeypatch, losses):
    """Make evaluate() report ``losses`` (one per epoch) as the whole-set validation loss."""
    real, script = train_module.evaluate, list(losses)

    def scripted(*args, **kwargs):
        accumulator = real(*args, **kwargs)
        if script:
            value = script.pop(0)
            accumulator.whole_set_loss = lambda: value
        return accumulator

    monkeypatch.setattr(train_module, "evaluate", scripted)


def test_plateau_halves_the_learning_rate_and_reloads_the_best_state(emt_options, no_test_data, monkeypatch, tmp_path):
    scripted_validation_loss(monkeypatch, [1.0, 2.0, 0.5, 0.6])
    options = emt_options(num_epochs=4, learning_rate=1e-2, scheduler_patience=0, scheduler_factor=0.5, checkpoint_interval=1, scheduler="plateau")
    result = quiet_train(options, no_test_data, output_dir=tmp_path)
    assert [row["learning_rate"] for row in result.history] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])
    assert (result.best_epoch, result.best_val_loss) == (2, 0.5)
    states = [load_checkpoint(tmp_path / "checkpoints" / f"model_{k}.ckpt") for k in range(4)]
    # epoch 1 did not improve: the LR halved and epoch 0's weights and Adam moments came back
    assert states[1]["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(5e-3)
    assert state_equal(states[1]["model_state_dict"], states[0]["model_state_dict"])
    moments = lambda s: s["optimizer_state_dict"]["state"]  # noqa: E731
    assert all(torch.equal(moments(states[1])[k]["exp_avg"], moments(states[0])[k]["exp_avg"]) for k in moments(states[0]))
    # epoch 2 improved (weights moved on); epoch 3 did not: back to epoch 2's weights at 2.5e-3
    assert not state_equal(states[2]["model_state_dict"], states[1]["model_state_dict"])
    assert state_equal(states[3]["model_state_dict"], states[2]["model_state_dict"])
    assert states[3]["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(2.5e-3)
    assert state_equal(result.model.state_dict(), states[2]["model_state_dict"])


def test_a_second_plateau_reloads_the_best_adam_moments_unchanged(emt_options, no_test_data, monkeypatch, tmp_path):
    # no epoch improves on epoch 0: epochs 1 and 3 drop the LR and reload epoch 0's state (the patience restarts
    # after a drop, so epoch 2 only sets the new scheduler's reference). Adam must not have updated the stored
    # best moments in place while training epochs 2 and 3 (Optimizer.load_state_dict keeps the given tensors).
    scripted_validation_loss(monkeypatch, [1.0, 2.0, 3.0, 4.0])
    options = emt_options(num_epochs=4, learning_rate=1e-2, scheduler_patience=0, scheduler_factor=0.5, checkpoint_interval=1, scheduler="plateau")
    result = quiet_train(options, no_test_data, output_dir=tmp_path)
    assert [row["learning_rate"] for row in result.history] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])
    states = [load_checkpoint(tmp_path / "checkpoints" / f"model_{k}.ckpt") for k in range(4)]
    assert states[3]["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(2.5e-3)
    moments = lambda s: s["optimizer_state_dict"]["state"]  # noqa: E731
    for key in moments(states[0]):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments(states[3])[key][name], moments(states[0])[key][name]), (key, name)
    assert state_equal(states[3]["model_state_dict"], states[0]["model_state_dict"])


def test_without_a_plateau_the_learning_rate_stays(emt_options, no_test_data, monkeypatch, tmp_path):
    scripted_validation_loss(monkeypatch, [1.0, 2.0, 3.0])
    options = emt_options(num_epochs=3, scheduler_patience=2, scheduler_factor=0.5, checkpoint_interval=1, scheduler="plateau")
    result = quiet_train(options, no_test_data, output_dir=tmp_path)
    assert [row["learning_rate"] for row in result.history] == [1e-2] * 3
    states = [load_checkpoint(tmp_path / "checkpoints" / f"model_{k}.ckpt") for k in range(2)]
    assert not state_equal(states[1]["model_state_dict"], states[0]["model_state_dict"])


def test_training_stops_when_the_learning_rate_falls_below_the_minimum(emt_options, no_test_data, monkeypatch):
    scripted_validation_loss(monkeypatch, [1.0, 2.0, 3.0, 4.0])
    options = emt_options(num_epochs=4, learning_rate=1.5e-7, scheduler_patience=0, scheduler_factor=0.5, scheduler="plateau")
    result = quiet_train(options, no_test_data)
    assert result.stopped == "learning_rate"
    assert len(result.history) == 2


# ---------------------------------------------------------------------------------------------
# log_interval, log_mae, checkpoint_interval, num_epochs


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("num_epochs, log_interval, logged", [(6, 4, [0, 4, 5]), (3, 1, [0, 1, 2])])
def test_log_interval_sets_progress_lines_and_csv_rows(emt_options, no_test_data, tmp_path, num_epochs, log_interval, logged):
    lines = []
    options = emt_options(num_epochs=num_epochs, log_interval=log_interval)
    train(options, data=no_test_data, output_dir=tmp_path, log=lines.append)
    progress = [line for line in lines if line.startswith("epoch")]
    assert [int(line.split()[1].split("/")[0]) for line in progress] == logged
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "metrics.csv")] == logged


@pytest.mark.parametrize("log_mae", [True, False])
def test_log_mae_adds_mae_to_lines_and_csv(emt_options, no_test_data, tmp_path, log_mae):
    lines, seen = [], []
    options = emt_options(num_epochs=1, log_mae=log_mae)
    train(options, data=no_test_data, output_dir=tmp_path, log=lines.append, on_epoch=lambda e, m: seen.append(m))
    progress = [line for line in lines if line.startswith("epoch")]
    columns = list(read_csv(tmp_path / "metrics.csv")[0])
    mae_columns = [c for c in columns if c.endswith("_mae")]
    assert "val_forces_rmse" in columns
    if log_mae:
        assert "MAE" in progress[0]
        assert {"val_energy_mae", "val_forces_mae", "train_energy_mae"} <= set(mae_columns)
    else:
        assert "MAE" not in progress[0] and mae_columns == []
    assert "val_energy_mae" in seen[0]  # callbacks always get both


def test_checkpoint_interval_decides_which_checkpoints_exist(emt_options, no_test_data, tmp_path):
    quiet_train(emt_options(num_epochs=5, checkpoint_interval=2), no_test_data, output_dir=tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["model_0.ckpt", "model_2.ckpt", "model_4.ckpt"]
    assert (tmp_path / "model.ckpt").is_file()
    for epoch in (0, 2, 4):
        state = torch.load(tmp_path / "checkpoints" / f"model_{epoch}.ckpt", weights_only=True)
        assert state["epoch"] == epoch and len(state["history"]) == epoch + 1


def test_num_epochs_is_the_length_of_the_history(emt_options, no_test_data):
    result = quiet_train(emt_options(num_epochs=3), no_test_data)
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.stopped == "completed"


# ---------------------------------------------------------------------------------------------
# fixed_composition_weights


def test_fixed_composition_weights_replace_the_fit(emt_options, no_test_data):
    fitted = quiet_train(emt_options(num_epochs=1, learning_rate=1e-12), no_test_data)
    expected_fit = fit_composition_weights(no_test_data.train.structures, [29, 79])
    np.testing.assert_allclose(fitted.model.composition_weights.double().numpy(), expected_fit, rtol=1e-6)

    shifted = {29: float(expected_fit[0]) + 1.0, "Au": float(expected_fit[1]) + 1.0}  # 1 eV/atom off the fit
    options = emt_options(num_epochs=1, learning_rate=1e-12, fixed_composition_weights={"energy": shifted})
    fixed = quiet_train(options, no_test_data)
    np.testing.assert_allclose(fixed.model.composition_weights.double().numpy(), expected_fit + 1.0, rtol=1e-6)
    # the fixed baseline is the one subtracted from the targets: every residual moves by 1 eV/atom
    assert fixed.history[0]["val_energy_rmse"] >= 1.0 - fitted.history[0]["val_energy_rmse"] - 1e-6


@pytest.mark.parametrize(
    "fixed, fragment",
    [
        ({"energy": {29: -3.0, 79: -3.0, "Fe": -4.0}}, "fixed_composition_weights.energy.Fe"),
        ({"energy": {29: -3.0, 79: -3.0, 13: -4.0}}, "fixed_composition_weights.energy.13"),
        ({"energy": {29: -3.0, "Xx": -4.0}}, "fixed_composition_weights.energy.Xx"),
        ({"energy": {29: -3.0}}, "fixed_composition_weights.energy: missing atomic number(s) [79]"),
        ({"forces": {29: -3.0, 79: -3.0}}, "fixed_composition_weights"),
        ({"energy": {29: -3.0, 79: "lots"}}, "fixed_composition_weights.energy.79"),
    ],
)
def test_bad_fixed_composition_weights_name_the_key(emt_options, no_test_data, fixed, fragment):
    with pytest.raises(InputError) as error:
        quiet_train(emt_options(num_epochs=1, fixed_composition_weights=fixed), no_test_data)
    assert fragment in str(error.value)


# ---------------------------------------------------------------------------------------------
# on_epoch, non-finite losses


def test_on_epoch_returning_true_stops_after_that_epoch(emt_options, no_test_data):
    calls = []

    def on_epoch(epoch, metrics):
        calls.append((epoch, metrics["val_loss"]))
        return epoch == 1

    result = quiet_train(emt_options(num_epochs=5), no_test_data, on_epoch=on_epoch)
    assert [epoch for epoch, _ in calls] == [0, 1]
    assert len(result.history) == 2 and result.stopped == "callback"
    assert [value for _, value in calls] == [row["val_loss"] for row in result.history]


def test_an_exception_in_on_epoch_propagates(emt_options, no_test_data):
    class Pruned(Exception):
        pass

    def on_epoch(epoch, metrics):
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        quiet_train(emt_options(num_epochs=3), no_test_data, on_epoch=on_epoch)


def test_a_nan_prediction_raises_non_finite_loss_error(emt_options, no_test_data, monkeypatch):
    forward = NanoPET.forward

    def nan_forward(self, *args, **kwargs):
        results = forward(self, *args, **kwargs)
        results["energy"] = results["energy"] * float("nan")
        return results

    monkeypatch.setattr(NanoPET, "forward", nan_forward)
    with pytest.raises(NonFiniteLossError, match="training") as error:
        quiet_train(emt_options(num_epochs=2), no_test_data)
    assert isinstance(error.value, NanoPETError) and error.value.epoch == 0


def test_nan_in_validation_raises_non_finite_loss_error(emt_options, no_test_data, monkeypatch):
    forward = NanoPET.forward

    def nan_validation(self, batch, *args, create_graph=False, **kwargs):
        results = forward(self, batch, *args, create_graph=create_graph, **kwargs)
        if not create_graph:
            results["forces"] = results["forces"] * float("inf")
        return results

    monkeypatch.setattr(NanoPET, "forward", nan_validation)
    with pytest.raises(NonFiniteLossError, match="validation"):
        quiet_train(emt_options(num_epochs=2), no_test_data)


def test_a_huge_learning_rate_raises_non_finite_loss_error(emt_options, no_test_data):
    with pytest.raises(NonFiniteLossError, match="learning_rate"):
        quiet_train(emt_options(num_epochs=20, learning_rate=1e12, batch_size=2), no_test_data)


# ---------------------------------------------------------------------------------------------
# checkpoints: round trip and exact resume


def test_checkpoint_gives_the_same_predictions_as_the_result(emt_options, no_test_data, tmp_path):
    result = quiet_train(emt_options(num_epochs=2), no_test_data, output_dir=tmp_path)
    loaded = model_from_checkpoint(tmp_path / "model.ckpt")
    batch = no_test_data.val.batch(range(len(no_test_data.val)))
    expected = result.model(batch, forces=True, stress=True)
    got = loaded(batch, forces=True, stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.equal(got[key], expected[key]), key
    assert torch.equal(loaded.composition_weights, result.model.composition_weights)
    assert torch.equal(loaded.energy_scale, result.model.energy_scale)


@pytest.mark.parametrize("scheduler", ["plateau", "cosine"])
def test_resume_from_a_checkpoint_is_exact(emt_options, no_test_data, tmp_path, scheduler):
    # augmentation (RNG), Adam moments and plateau drops (patience 0) or the cosine's step count must all carry
    # over. A plateau run of 2 epochs continues to 4 as if it had been a run of 4; a cosine run's schedule is drawn
    # over its num_epochs, so it resumes exactly from a checkpoint of a run of the same num_epochs (a kill).
    options = lambda n: emt_options(num_epochs=n, scheduler_patience=0, rotational_augmentation=True,  # noqa: E731
                                    checkpoint_interval=1, learning_rate=2e-2, scheduler=scheduler)
    straight = quiet_train(options(4), no_test_data, output_dir=tmp_path / "straight")
    if scheduler == "plateau":
        quiet_train(options(2), no_test_data, output_dir=tmp_path / "first")
        first = tmp_path / "first" / "checkpoints" / "model_1.ckpt"
    else:
        first = tmp_path / "straight" / "checkpoints" / "model_1.ckpt"
    resumed = quiet_train(options(4), no_test_data, output_dir=tmp_path / "second", resume=first)

    assert len(resumed.history) == 4
    for a, b in zip(straight.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "epoch_time"} == {k: v for k, v in b.items() if k != "epoch_time"}
    assert state_equal(straight.model.state_dict(), resumed.model.state_dict())
    last = [load_checkpoint(tmp_path / name / "model.ckpt") for name in ("straight", "second")]
    assert state_equal(last[0]["model_state_dict"], last[1]["model_state_dict"])
    assert (straight.best_epoch, straight.best_val_loss) == (resumed.best_epoch, resumed.best_val_loss)


def test_resume_from_an_older_checkpoint_lists_each_epoch_once(emt_options, no_test_data, tmp_path):
    # a kill after epoch 2 was logged but before its checkpoint replaced the one of epoch 0 a driver resumes from
    options = emt_options(num_epochs=3, checkpoint_interval=1)
    quiet_train(options, no_test_data, output_dir=tmp_path)
    resumed = quiet_train(options, no_test_data, output_dir=tmp_path, resume=tmp_path / "checkpoints" / "model_0.ckpt")
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "0", "1", "2"]
    assert float(rows[-1].split(",")[rows[0].split(",").index("val_loss")]) == resumed.history[-1]["val_loss"]


def test_resume_from_a_missing_checkpoint_is_an_input_error(emt_options, no_test_data, tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        quiet_train(emt_options(), no_test_data, resume=tmp_path / "nothing.ckpt")


# ---------------------------------------------------------------------------------------------
# rotational augmentation


def test_random_rotations_are_uniform_orthogonal_with_half_inversions():
    rotations = random_rotations(2000, torch.Generator().manual_seed(0), torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(2000, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), eye)
    determinants = torch.det(rotations)
    assert torch.allclose(determinants.abs(), torch.ones(2000, dtype=torch.float64))
    assert 0.45 < float((determinants < 0).double().mean()) < 0.55
    # uniform on O(3): every matrix element has mean 0 and variance 1/3
    assert rotations.mean(dim=0).abs().max() < 0.05
    assert (rotations.var(dim=0) - 1 / 3).abs().max() < 0.05


def test_rotate_transforms_positions_cells_and_targets_consistently(emt_data):
    indices = [0, 1]
    batch = emt_data.train.batch(indices, dtype=torch.float64)
    rotations = random_rotations(2, torch.Generator().manual_seed(3), torch.float64)
    rotations[1] = -rotations[1] if torch.det(rotations[1]) > 0 else rotations[1]  # one inversion
    rotated = rotate(batch, rotations)

    def edge_vectors(b):
        cells = b.cells[b.structure_index[b.centers]]
        return b.positions[b.neighbors] - b.positions[b.centers] + torch.einsum("ei,eij->ej", b.shifts, cells)

    # the neighbour list stays valid: same edges, rotated edge vectors
    per_edge = rotations[batch.structure_index[batch.centers]]
    torch.testing.assert_close(edge_vectors(rotated), torch.einsum("ej,eij->ei", edge_vectors(batch), per_edge))
    # the labels are EMT's labels of the rotated structures
    for k, index in enumerate(indices):
        atoms = emt_data.train.structures[index].to_atoms()
        matrix = rotations[k].numpy()
        atoms.set_cell(atoms.cell.array @ matrix.T)
        atoms.positions = atoms.positions @ matrix.T
        atoms.calc = EMT()
        atom_slice = batch.structure_index == k
        np.testing.assert_allclose(rotated.forces[atom_slice].numpy(), atoms.get_forces(), atol=1e-8)
        np.testing.assert_allclose(rotated.stress[k].numpy(), atoms.get_stress(voigt=False), atol=1e-8)
        assert atoms.get_potential_energy() == pytest.approx(float(batch.energy[k]), abs=1e-8)


def rotation_spread(model, dataset, n_rotations=20):
    """Energy per atom of every structure under ``n_rotations`` random rotations (with inversions):
    (RMS over structures of the std over rotations, RMS energy error unrotated), and the force RMSE
    unrotated and rotated, all in eV(/atom, /A)."""
    batch = dataset.batch(range(len(dataset)))
    atoms = batch.n_atoms.double()
    plain = model(batch, forces=True)
    energies, force_errors = [], []
    generator = torch.Generator().manual_seed(123)
    for _ in range(n_rotations):
        rotated = rotate(batch, random_rotations(batch.num_structures, generator, torch.float32))
        predictions = model(rotated, forces=True)
        energies.append(predictions["energy"].double() / atoms)
        force_errors.append(float((predictions["forces"] - rotated.forces).double().pow(2).mean()))
    spread = float(torch.stack(energies).std(dim=0).pow(2).mean().sqrt())
    error = float(((plain["energy"].double() - batch.energy.double()) / atoms).pow(2).mean().sqrt())
    force_error = float((plain["forces"] - batch.forces).double().pow(2).mean().sqrt())
    return spread, error, force_error, math.sqrt(np.mean(force_errors))


@pytest.fixture(scope="module")
def emt_slabs():
    """30 rattled Cu/Au fcc(100) slabs (16 atoms, periodic in x and y only), energies and forces.

    Bulk fcc environments are cubic: their low-order angular moments are isotropic, so a smooth
    model trained on axis-aligned bulk cells is nearly rotation invariant without augmentation
    (measured: the same energy spread with and without it). Surfaces are not: their neighbours sit
    on one side, along z, which a model trained without augmentation learns as a direction."""
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(30):
        atoms = fcc100("Cu", size=(2, 2, 4), a=3.75, vacuum=4.0)
        atoms.symbols = rng.choice(["Cu", "Au"], size=len(atoms))
        atoms.positions += rng.normal(scale=rng.uniform(0.03, 0.12), size=atoms.positions.shape)
        atoms.calc = EMT()
        structures.append(Structure.from_atoms(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()))
    return Data(GraphDataset(structures[:20], 3.5), GraphDataset(structures[20:], 3.5), GraphDataset([], 3.5))


def test_rotational_augmentation_makes_the_energy_rotation_invariant(emt_options, emt_slabs):
    measured = {}
    for augmentation in (True, False):
        options = emt_options(model={"cutoff": 3.5}, num_epochs=25, batch_size=2, learning_rate=3e-3,
                              rotational_augmentation=augmentation)
        measured[augmentation] = rotation_spread(quiet_train(options, emt_slabs).model, emt_slabs.val)
    (spread_on, error_on, forces_on, rotated_forces_on), (spread_off, error_off, forces_off, rotated_forces_off) = (
        measured[True], measured[False])
    # with augmentation: the energy barely depends on the orientation, compared with its error
    assert spread_on < 0.5 * error_on, measured
    assert rotated_forces_on < 1.25 * forces_on, measured
    # without it (same budget): the orientation changes the energy as much as the model's error
    assert spread_off > 5 * spread_on, measured
    assert spread_off > 0.5 * error_off, measured
    assert rotated_forces_off > 1.3 * forces_off, measured


# ---------------------------------------------------------------------------------------------
# a small model overfits 20 structures


@pytest.mark.slow
def test_a_small_model_overfits_twenty_structures(emt_options, emt_data):
    structures = [dataclasses.replace(s, stress=None) for s in emt_data.train.structures]
    train_set = GraphDataset(structures, EMT_CUTOFF)
    data = Data(train_set, train_set, GraphDataset([], EMT_CUTOFF))  # validate on the training structures
    settings = dict(model={"d_pet": 16, "cutoff": 3.5}, batch_size=1, learning_rate=3e-3, scheduler_patience=3,
                    scheduler_factor=0.5, rotational_augmentation=False, loss={"weights": {"energy": 3.0}})
    initial = quiet_train(emt_options(num_epochs=1, **{**settings, "learning_rate": 1e-12}), data).history[0]
    result = quiet_train(emt_options(num_epochs=60, **settings), data)
    final = result.history[result.best_epoch]

    assert final["val_energy_rmse"] < initial["val_energy_rmse"] / 5, (initial, final)
    assert final["val_forces_rmse"] < initial["val_forces_rmse"] / 5, (initial, final)
    # and well below the error of the composition baseline alone (the best constant per species)
    counts = np.array([[np.sum(s.numbers == 29), np.sum(s.numbers == 79)] for s in structures])
    energies = np.array([s.energy for s in structures])
    residual = (energies - counts @ np.linalg.lstsq(counts, energies, rcond=None)[0]) / 32
    assert final["val_energy_rmse"] < 0.5 * np.sqrt(np.mean(residual**2)), (final, residual)


# ---------------------------------------------------------------------------------------------
# atoms_per_pass: a batch split into passes is the same optimizer step as one pass


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_atoms_per_pass_splits_passes_but_not_the_step(emt_options, no_test_data, reduction):
    def run(atoms_per_pass):
        options = emt_options(base_precision=64, num_epochs=2, atoms_per_pass=atoms_per_pass, rotational_augmentation=True,
                              loss={"reduction": reduction})
        return quiet_train(options, no_test_data)

    whole, split = run(10_000), run(32)  # 32 atoms: one structure per pass
    for a, b in zip(whole.history, split.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)
    for (name, p), q in zip(whole.model.state_dict().items(), split.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10, msg=name)


def test_split_by_atoms_respects_the_limit(emt_data):
    from nanopet.train import split_by_atoms

    parts = split_by_atoms(list(range(10)), emt_data.train, 100)
    assert [len(p) for p in parts] == [3, 3, 3, 1]  # 32-atom structures, at most 96 atoms per pass
    assert sum(parts, []) == list(range(10))
    assert split_by_atoms([4], emt_data.train, 1) == [[4]]  # a structure larger than the limit still runs


def test_initialisation_balanced_scales_the_first_encoder_layer_and_zeroes_the_readout(emt_options, no_test_data):
    still = dict(num_epochs=1, learning_rate=1e-12)  # the weights stay (to float32 precision) where they started
    torch_init = quiet_train(emt_options(**still), no_test_data).model
    balanced = quiet_train(emt_options(initialisation="balanced", **still), no_test_data).model
    ratio = (balanced.encoder.vector_mlp[0].weight / torch_init.encoder.vector_mlp[0].weight).detach()
    assert float(ratio.min()) == pytest.approx(float(ratio.max()), rel=1e-4) and float(ratio.mean()) > 3
    assert torch.count_nonzero(torch_init.last_layer.weight) > 0 and float(balanced.last_layer.weight.abs().max()) < 1e-9
    for name, value in balanced.state_dict().items():  # nothing else changes
        if name not in ("encoder.vector_mlp.0.weight", "last_layer.weight"):
            assert torch.allclose(value, torch_init.state_dict()[name], atol=1e-9), name
    with pytest.raises(InputError, match="architecture.training.initialisation: must be torch or balanced, got 'fitted'"):
        quiet_train(emt_options(initialisation="fitted", **still), no_test_data)


def test_initialisation_balances_the_geometric_and_species_parts_of_the_tokens(emt_data):
    # torch's default initialisation leaves the edge-vector MLP's part of each token ~10x smaller than the species
    # part (forces start near zero: the force plateau); balance_geometry scales the first layer until they match
    from nanopet.train import balance_geometry

    types = sorted({int(z) for s in emt_data.train.structures for z in s.numbers})
    hypers = {"cutoff": 4.0, "cutoff_width": 0.5, "d_pet": 16, "num_heads": 2, "num_gnn_layers": 1, "num_attention_layers": 1}

    def ratio(model):
        batch = emt_data.train.batch(list(range(len(emt_data.train))))
        vectors = (batch.positions[batch.neighbors] - batch.positions[batch.centers]
                   + torch.einsum("ei,eij->ej", batch.shifts, batch.cells[batch.structure_index[batch.centers]]))
        species = model.species(batch.numbers)
        with torch.no_grad():
            geometry, by_species = model.encoder.token_parts(vectors, species[batch.centers], species[batch.neighbors])
        return float(geometry.square().mean().sqrt() / by_species.square().mean().sqrt())

    torch.manual_seed(0)
    model = NanoPET(hypers, types)
    before = ratio(model)
    first = model.encoder.vector_mlp[0].weight.detach().clone()
    factor = balance_geometry(model, emt_data.train)
    assert before < 0.2 and factor > 3
    assert ratio(model) == pytest.approx(1.0, rel=0.03)
    assert torch.allclose(model.encoder.vector_mlp[0].weight, first * factor, rtol=1e-5)  # only the first layer, scaled
