"""The exported model: NanoPET under TorchScript, as a metatomic AtomisticModel, through metatomic's own
ASE calculator (a client we did not write), against our NanoPETCalculator on the same weights."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, fcc111, molecule
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from metatomic_ase import MetatomicCalculator

from nanopet.calculator import NanoPETCalculator
from nanopet.checkpoints import model_from_checkpoint
from nanopet.cli import main
from nanopet.data import write_emt_alloy
from nanopet.data.batch import GraphDataset
from nanopet.data.read import read_structures
from nanopet.data.splits import Data
from nanopet.export import export_checkpoint, export_model
from nanopet.kernels import LayerNorm, SiLU, gelu, pick_rows, place_rows
from nanopet.train import train

CUTOFF = 4.0
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # metatomic is TorchScript


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, exported model.pt) of a tiny float64 Cu/Au model with ZBL, trained for 2 epochs on emt.xyz
    beside them (6 structures: 4 train, 2 validation); test.xyz beside them holds 3 other structures."""
    directory = tmp_path_factory.mktemp("exported")
    structures = read_structures(str(write_emt_alloy(directory / "emt.xyz", 6, seed=2)))
    write_emt_alloy(directory / "test.xyz", 3, seed=3)
    data = Data(GraphDataset(structures[:4], CUTOFF), GraphDataset(structures[4:], CUTOFF), GraphDataset([], CUTOFF))
    options = {
        "seed": 0, "device": "cpu", "base_precision": 64, "training_set": "unused.xyz",
        "architecture": {
            "model": {"cutoff": CUTOFF, "cutoff_width": 1.0, "d_pet": 16, "num_heads": 2, "zbl": True,
                      "num_attention_layers": 1, "num_gnn_layers": 2},
            "training": {"num_epochs": 2, "batch_size": 2, "learning_rate": 3e-3, "log_interval": 1,
                         "checkpoint_interval": 1000},
        },
    }
    train(options, output_dir=directory, data=data, log=None)
    checkpoint = directory / "model.ckpt"
    return checkpoint, export_checkpoint(checkpoint, directory / "model.pt")


def cu_au(atoms: Atoms, seed: int = 0) -> Atoms:
    """Every third atom gold, rattled."""
    atoms = atoms.copy()
    atoms.numbers[::3] = 79
    atoms.rattle(0.08, seed=seed)
    return atoms


GEOMETRIES = {
    "bulk": lambda: cu_au(bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 1))),
    "slab": lambda: cu_au(fcc111("Cu", (2, 2, 3), a=3.7, vacuum=5.0)),  # pbc T T F
    "molecule": lambda: cu_au(Atoms("Cu4Au2", positions=molecule("C6H6").positions[:6] * 1.8, pbc=False)),
    "one-atom cell": lambda: Atoms("Cu", cell=[[0, 1.9, 1.9], [1.9, 0, 1.9], [1.9, 1.9, 0]], pbc=True),
}


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(ours).max(), 1e-12))


def predictions(atoms: Atoms, calculator) -> dict:
    atoms = atoms.copy()
    atoms.calc = calculator
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "energies": atoms.get_potential_energies()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


# ----------------------------------------------------------------------------------------------
# The scriptable path: plain-torch counterparts of the training kernels


class Place(torch.nn.Module):
    """place_rows into 11 rows, as a module (torch.jit.script takes modules and functions, not closures)."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("rows", rows)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return place_rows(t, self.rows, 11)


class Pick(Place):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return pick_rows(t, self.rows)


def test_scripted_kernels_equal_the_training_kernels():
    """Under torch.jit.script each kernel is its plain-torch counterpart: same values and first derivatives
    (what an engine differentiates), for activations, LayerNorm and the row moves."""
    torch.manual_seed(0)
    rows = torch.tensor([5, 0, 3, 8, 1, 9, 2])
    norm = LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    cases = [(SiLU(), 7), (gelu, 7), (norm, 7), (Place(rows), 7), (Pick(rows), 11)]
    for eager, n_rows in cases:
        scripted = torch.jit.script(eager)
        inputs = torch.randn(n_rows, 6, dtype=torch.float64, requires_grad=True)
        weights = torch.randn_like(eager(inputs))
        (eager_grad,) = torch.autograd.grad((eager(inputs) * weights).sum(), inputs)
        (scripted_grad,) = torch.autograd.grad((scripted(inputs) * weights).sum(), inputs)
        torch.testing.assert_close(scripted(inputs), eager(inputs), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scripted_grad, eager_grad, rtol=1e-12, atol=1e-12)
        # eager keeps the hand-written kernels for training, the scripted path plain torch
        assert "Backward" in type(eager(inputs).grad_fn).__name__
        assert "Backward" in type(scripted(inputs).grad_fn).__name__
        assert type(eager(inputs).grad_fn).__name__ != type(scripted(inputs).grad_fn).__name__


def test_scripted_inplace_silu_keeps_atens_backward_and_leaves_eager_alone():
    """SiLU(inplace=True) (the model's, after a linear layer): scripted, the same values and first derivatives as
    eager, one aten SiLU backward rather than TorchScript's own sigmoid/multiply chain; eager leaves its input alone."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 16, bias=False).double()
    eager = torch.nn.Sequential(linear, SiLU(inplace=True))
    scripted = torch.jit.script(eager)
    inputs = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(9, 16, dtype=torch.float64)
    for _ in range(3):  # the profiling executor settles on its graph after a few runs
        (scripted_grad,) = torch.autograd.grad((scripted(inputs) * weights).sum(), inputs)
    (eager_grad,) = torch.autograd.grad((eager(inputs) * weights).sum(), inputs)
    torch.testing.assert_close(scripted(inputs), eager(inputs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scripted_grad, eager_grad, rtol=1e-12, atol=1e-12)
    with torch.profiler.profile() as profile:
        torch.autograd.grad((scripted(inputs) * weights).sum(), inputs)
    ran = {event.key for event in profile.key_averages()}
    assert "aten::silu_backward" in ran and "aten::sigmoid" not in ran
    hidden = linear(inputs)
    before = hidden.detach().clone()
    eager[1](hidden)
    assert torch.equal(hidden.detach(), before)



def test_paired_encoder_equals_the_encoder_on_both_directions():
    """The encoder on edges whose reverses carry the negated vectors (the trainer's and the export's edges, in any
    order) runs its first two layers on one edge of each pair, through SiLU(-a) = SiLU(a) - a: the same tokens and
    vector gradients as the encoder's function written out (``token_parts``: the MLP on every edge), eager and
    scripted, and the same force-training parameter gradients."""
    from nanopet.model import Encoder

    torch.manual_seed(0)
    encoder = Encoder(n_species=3, d=8).double()
    half = torch.randn(7, 3, dtype=torch.float64)
    center, neighbor = torch.randint(0, 3, (7,)), torch.randint(0, 3, (7,))
    order = torch.randperm(14)  # edges in any order, each with its reverse
    position = torch.empty_like(order)
    position[order] = torch.arange(14)
    centers, neighbors = torch.cat([center, neighbor])[order], torch.cat([neighbor, center])[order]
    reverse = position[torch.cat([torch.arange(7, 14), torch.arange(7)])[order]]
    weights = torch.randn(14, 8, dtype=torch.float64)

    def written_out(vectors, centers, neighbors, reverse):
        return sum(encoder.token_parts(vectors, centers, neighbors))

    mlp = [*encoder.vector_mlp.parameters(), encoder.compress.weight]  # (the species tables do not reach the forces)
    results = []
    for function in (written_out, encoder, torch.jit.script(encoder)):
        first = half.clone().requires_grad_(True)
        tokens = function(torch.cat([first, -first])[order], centers, neighbors, reverse)
        (gradient,) = torch.autograd.grad((tokens * weights).sum(), first, create_graph=True)
        # force training: the parameters' gradients of a loss on the vector gradients, through the double backward
        parameters = torch.autograd.grad(gradient.pow(2).sum(), mlp)
        results.append((tokens, gradient, parameters))
    for tokens, gradient, parameters in results[1:]:
        torch.testing.assert_close(tokens, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gradient, results[0][1], rtol=1e-12, atol=1e-12)
        for paired, plain in zip(parameters, results[0][2]):
            assert plain.abs().max() > 0
            torch.testing.assert_close(paired, plain, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# The exported model through metatomic's ASE calculator equals ours


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_metatomic_calculator_equals_ours_in_float64(trained, geometry):
    checkpoint, exported = trained
    atoms = GEOMETRIES[geometry]()
    ours = predictions(atoms, NanoPETCalculator(checkpoint))
    theirs = predictions(atoms, MetatomicCalculator(str(exported)))
    assert set(ours) == set(theirs)
    for key in ours:
        assert relative_error(ours[key], theirs[key]) < 1e-6, (geometry, key, ours[key], theirs[key])
    assert np.abs(ours["forces"]).max() > 1e-3 or geometry == "one-atom cell"  # forces really compared


def test_float32_export_agrees_to_the_measured_tolerance(trained):
    """float32: the exported model and ours agree to 1e-5 relative (measured: energy ~1e-7, forces and
    stress ~1e-6; the summation orders of the two attention layouts differ)."""
    model = model_from_checkpoint(trained[0]).float()
    atoms = GEOMETRIES["bulk"]()
    ours = predictions(atoms, NanoPETCalculator(model))
    theirs = predictions(atoms, MetatomicCalculator(export_model(model)))
    for key in ours:
        assert relative_error(ours[key], theirs[key]) < 1e-5, (key, relative_error(ours[key], theirs[key]))


def test_several_systems_in_any_atom_order(trained):
    """Two systems evaluated together, one with its atoms reversed: each system's energy equals our single
    evaluation, and the per-atom energies follow the atoms."""
    checkpoint, exported = trained
    first, second = GEOMETRIES["bulk"](), GEOMETRIES["slab"]()
    reversed_second = second[::-1]
    calculator = MetatomicCalculator(str(exported))
    energies = calculator.compute_energy([first, reversed_second])["energy"]
    ours = NanoPETCalculator(checkpoint)
    for atoms, energy in zip((first, second), energies):
        assert relative_error(predictions(atoms, ours)["energy"], energy) < 1e-6
    per_atom = predictions(reversed_second, calculator)["energies"]
    np.testing.assert_allclose(per_atom[::-1], predictions(second, ours)["energies"], rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Molecular dynamics through the metatomic calculator


def thermal(atoms: Atoms, temperature: float = 300.0, seed: int = 0) -> Atoms:
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(np.random.default_rng(seed).normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * temperature))
    Stationary(atoms)
    return atoms


def nve_drift(atoms: Atoms, calculator, steps: int) -> float:
    """Largest |E_total(t) - E_total(0)| over a velocity-Verlet run, eV."""
    atoms = atoms.copy()
    atoms.calc = calculator
    total0 = atoms.get_total_energy()
    totals = []
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.attach(lambda: totals.append(atoms.get_total_energy()), interval=5)
    dynamics.run(steps)
    return float(np.abs(np.array(totals) - total0).max())


def test_md_with_the_metatomic_calculator(trained):
    """100 steps of Langevin run; NVE conserves energy as well as with our calculator."""
    checkpoint, exported = trained
    atoms = thermal(GEOMETRIES["bulk"]())
    langevin = atoms.copy()
    langevin.calc = MetatomicCalculator(str(exported))
    Langevin(langevin, 2.0 * units.fs, temperature_K=300, friction=0.02, fixcm=False, rng=np.random.default_rng(0)).run(100)
    assert np.isfinite(langevin.positions).all()
    assert np.abs(langevin.positions - atoms.positions).max() > 0.05  # the atoms really moved

    ours = nve_drift(atoms, NanoPETCalculator(checkpoint), 100)
    theirs = nve_drift(atoms, MetatomicCalculator(str(exported)), 100)
    assert theirs <= 1.5 * ours + 1e-6, (theirs, ours)
    assert theirs / len(atoms) < 1e-4  # eV/atom


# ----------------------------------------------------------------------------------------------
# nanopet-tune export and eval


def test_eval_of_checkpoint_and_export_report_retrains_numbers(trained, tmp_path, capsys):
    """eval of the .ckpt and of its exported .pt (through metatomic) give the errors retrain computes for the
    same test set, and write the predictions our calculator makes."""
    from nanopet.evaluate import evaluate_model
    from nanopet.runs import evaluate_checkpoint

    checkpoint, _ = trained
    exported = tmp_path / "exported.pt"
    assert main(["export", str(checkpoint), "-o", str(exported)]) == 0
    assert exported.is_file()
    test = checkpoint.parent / "test.xyz"
    assert main(["eval", str(checkpoint), str(test), "-o", str(tmp_path / "predictions.xyz"), "--batch-size", "2"]) == 0
    table = capsys.readouterr().out
    assert "energy per atom (meV/atom)" in table and "forces (meV/A)" in table and "stress (GPa)" in table

    structures = read_structures(str(test))
    data = Data(GraphDataset(read_structures(str(checkpoint.parent / "emt.xyz"))[:4], CUTOFF), GraphDataset([], CUTOFF),
                GraphDataset(structures, CUTOFF))
    retrain = evaluate_checkpoint(checkpoint, data)
    ours = evaluate_model(checkpoint, [test], out=lambda line: None)[str(test)]
    theirs = evaluate_model(exported, [test], batch_size=2, out=lambda line: None)[str(test)]
    for key in ("test_energy_rmse", "test_energy_mae", "test_forces_rmse", "test_forces_mae", "test_stress_rmse"):
        assert ours[key] == pytest.approx(retrain[key], rel=1e-6), key
        assert theirs[key] == pytest.approx(retrain[key], rel=1e-6), key
        assert retrain[key] > 0

    calculator = NanoPETCalculator(checkpoint)
    for structure, written in zip(structures, ase.io.read(str(tmp_path / "predictions.xyz"), ":")):
        expected = predictions(structure.to_atoms(), calculator)
        # (extended XYZ holds 8 decimals)
        assert written.get_potential_energy() == pytest.approx(expected["energy"], rel=1e-9)
        np.testing.assert_allclose(written.get_forces(), expected["forces"], rtol=0, atol=1e-8)
        np.testing.assert_allclose(written.get_stress(), expected["stress"], rtol=0, atol=1e-8)


def test_eval_of_unlabelled_structures_writes_predictions(trained, tmp_path, capsys):
    checkpoint, exported = trained
    data = tmp_path / "unlabelled.xyz"
    ase.io.write(str(data), [GEOMETRIES["bulk"](), GEOMETRIES["molecule"]()])
    output = tmp_path / "predicted.xyz"
    assert main(["eval", str(exported), str(data), "-o", str(output)]) == 0
    assert "predictions only" in capsys.readouterr().out
    frames = ase.io.read(str(output), ":")
    reference = NanoPETCalculator(checkpoint)
    for atoms, written in zip((GEOMETRIES["bulk"](), GEOMETRIES["molecule"]()), frames):
        assert written.get_potential_energy() == pytest.approx(predictions(atoms, reference)["energy"], rel=1e-6)


def bad_files(directory, checkpoint):
    """name -> (argv, what the error line must name) for each bad input."""
    not_a_checkpoint = directory / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    foreign = directory / "silver.xyz"
    ase.io.write(str(foreign), [GEOMETRIES["bulk"](), bulk("Ag", "fcc", a=4.1)])
    nan = directory / "nan.xyz"
    broken = GEOMETRIES["bulk"]()
    broken.positions[2, 1] = np.nan
    ase.io.write(str(nan), [GEOMETRIES["bulk"](), broken])
    not_metatomic = directory / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(not_metatomic))
    return {
        "export: not a checkpoint": (["export", str(not_a_checkpoint), "-o", str(directory / "a.pt")], [str(not_a_checkpoint)]),
        "export: missing file": (["export", str(directory / "missing.ckpt"), "-o", str(directory / "b.pt")], ["missing.ckpt"]),
        "export: unwritable output": (["export", str(checkpoint), "-o", str(directory / "no" / "c.pt")], [str(directory / "no")]),
        "eval: unknown species": (["eval", str(checkpoint), str(foreign), "-o", str(directory / "d.xyz")],
                                  [f"{foreign}:1", "Ag"]),
        "eval: NaN positions": (["eval", str(checkpoint), str(nan), "-o", str(directory / "e.xyz")], [f"{nan}:1", "positions"]),
        "eval: not a metatomic model": (["eval", str(not_metatomic), str(nan), "-o", str(directory / "f.xyz")],
                                        [str(not_metatomic), "metatomic"]),
    }


def test_bad_input_is_one_line_exit_2_nothing_written(trained, tmp_path, capsys):
    checkpoint, _ = trained
    for name, (argv, named) in bad_files(tmp_path, checkpoint).items():
        before = set(tmp_path.rglob("*"))
        assert main(argv) == 2, name
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("nanopet-tune: error: "), (name, error)
        for text in named:
            assert text in error, (name, text, error)
        assert set(tmp_path.rglob("*")) == before, name  # nothing written
