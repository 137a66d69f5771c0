"""Physics and architecture tests of the NanoPET model (spec section 2) and its neighbour lists.

Every test uses a small random float64 model (d_pet 16, cutoff 4 A) so that finite differences
and exact invariances can be checked to ~1e-10 without training anything.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nanopet.data.batch import GraphDataset
from nanopet.data.neighbors import edge_graph, neighbor_list
from nanopet.data.structure import Structure
from nanopet.errors import InputError
from nanopet.kernels import LayerNorm, SiLU, gelu, layer_norm, pick_rows, place_rows, unused_rows
from nanopet.model import Attention, FeedForward, NanoPET, Transformer, count_parameters
from nanopet.options import default_hypers

F64 = torch.float64
CU, AU = 29, 79
CUTOFF = 4.0
WIDTH = 1.0


# ----------------------------------------------------------------------------------------------
# Helpers


def hypers(**changes) -> dict:
    base = dict(cutoff=CUTOFF, cutoff_width=WIDTH, d_pet=16, num_heads=2, num_attention_layers=1, num_gnn_layers=2,
                heads={}, zbl=False)
    base.update(changes)
    return base


def make_model(seed: int = 0, types=(CU, AU), composition=None, **changes) -> NanoPET:
    torch.manual_seed(seed)
    model = NanoPET(hypers(**changes), list(types)).to(F64)
    if composition is not None:
        model.composition_weights.copy_(torch.tensor(composition, dtype=F64))
    return model


def batch_of(atoms_list, cutoff):
    dataset = GraphDataset([Structure.from_atoms(a) for a in atoms_list], cutoff)
    return dataset.batch(list(range(len(atoms_list))), dtype=F64)


def predict(model, atoms_list, **kwargs) -> dict:
    return model(batch_of(atoms_list, model.cutoff), **kwargs)


def energy_of(model, atoms) -> float:
    return float(predict(model, [atoms], forces=False)["energy"][0])


def forces_of(model, atoms) -> np.ndarray:
    return predict(model, [atoms])["forces"].numpy()


def atomic_energies(model, atoms) -> np.ndarray:
    batch = batch_of([atoms], model.cutoff)
    with torch.no_grad():
        return model.atomic_energies(batch.positions, batch.cells, batch).numpy()


def cuau_cell(seed: int = 0, rattle: float = 0.1) -> Atoms:
    """4-atom cubic CuAu cell (a = 3.7 A, so every atom sees its own periodic images within 4 A)."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[[1, 2]] = "Au"
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, 0.05], [0.02, 0.0, 1.0]]), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def cluster(seed: int = 1) -> Atoms:
    """Open 5-atom CuAu cluster with distances spread over 2-4.5 A (some in the switching region)."""
    positions = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.3, 2.6, 0.0], [1.2, 1.0, 2.4], [-1.9, 1.5, 1.3]])
    positions += np.random.default_rng(seed).normal(scale=0.1, size=positions.shape)
    return Atoms("CuAuCuAuCu", positions=positions)


def finite_difference_forces(model, atoms, h=1e-4) -> np.ndarray:
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            moved = atoms.copy()
            moved.positions[a, k] += h
            plus = energy_of(model, moved)
            moved.positions[a, k] -= 2 * h
            minus = energy_of(model, moved)
            forces[a, k] = -(plus - minus) / (2 * h)
    return forces


def strained(atoms, strain: np.ndarray) -> Atoms:
    deformed = atoms.copy()
    deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return deformed


def pairs(centers, neighbors, shifts) -> set:
    return {(int(i), int(j), *map(int, s)) for i, j, s in zip(centers, neighbors, shifts)}


def zbl_reference(r, z1, z2):
    """Universal ZBL screened Coulomb (Ziegler, Biersack, Littmark), unswitched, in eV."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x)
           + 0.28022 * np.exp(-0.40290 * x) + 0.02817 * np.exp(-0.20162 * x))
    return 14.399645 * z1 * z2 / r * phi


# ----------------------------------------------------------------------------------------------
# Neighbour lists


@pytest.mark.parametrize(
    "name, atoms, cutoff",
    [
        ("small periodic cell with self-images", bulk("Cu", "fcc", a=3.6), 4.0),
        ("sheared 4-atom cell", cuau_cell(seed=3), 5.0),
        ("2x1x1 supercell", cuau_cell(seed=4).repeat((2, 1, 1)), 4.5),
        ("open molecule", cluster(), 3.0),
        ("mixed pbc slab", None, 4.0),
    ],
)
def test_neighbor_list_matches_ase(name, atoms, cutoff):
    if atoms is None:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
        atoms.pbc = [True, True, False]
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=7)  # no distance exactly at the cutoff
    half = neighbor_list(Structure.from_atoms(atoms), cutoff)
    graph = edge_graph(half, len(atoms))
    i, j, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    expected = pairs(i, j, shifts)
    got = pairs(graph.centers, graph.neighbors, graph.shifts)
    assert graph.num_edges == len(i) == len(got), name  # no duplicated edge
    assert got == expected, name
    if name.startswith("small"):
        assert any(a == b for a, b, *_ in got), "self-image pairs must be present"
    assert not any(p[0] == p[1] and p[2:] == (0, 0, 0) for p in got)  # no self-interaction
    # half list: every unordered pair once, with the right distance
    assert 2 * len(half.i) == len(i)
    vectors = atoms.positions[half.j] - atoms.positions[half.i] + half.shifts @ atoms.cell.array
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), half.distances, atol=1e-12)
    assert np.all(half.distances < cutoff)


def test_edge_graph_reverse_slots_and_ordering():
    atoms = cuau_cell(seed=5)
    graph = edge_graph(neighbor_list(Structure.from_atoms(atoms), 4.5), len(atoms))
    reverse = graph.reverse
    assert np.array_equal(graph.centers[reverse], graph.neighbors)
    assert np.array_equal(graph.neighbors[reverse], graph.centers)
    assert np.array_equal(graph.shifts[reverse], -graph.shifts)
    assert np.array_equal(reverse[reverse], np.arange(graph.num_edges))
    assert np.all(np.diff(graph.centers) >= 0)  # sorted by centre
    counts = np.bincount(graph.centers, minlength=len(atoms))
    assert graph.max_neighbors == counts.max()
    for center in range(len(atoms)):
        assert sorted(graph.slot[graph.centers == center]) == list(range(counts[center]))


def unordered_pairs(half) -> set:
    """Half-list pairs up to orientation: (i, j, S) and (j, i, -S) are the same pair."""
    out = set()
    for i, j, s, d in zip(half.i, half.j, half.shifts, half.distances):
        forward, backward = (int(i), int(j), *map(int, s)), (int(j), int(i), *map(int, -s))
        out.add((*min(forward, backward), round(float(d), 10)))
    return out


def test_restrict_equals_fresh_list():
    atoms = cuau_cell(seed=6).repeat((1, 2, 1))
    structure = Structure.from_atoms(atoms)
    large = neighbor_list(structure, 5.0)
    model = make_model(seed=2, cutoff=3.1, cutoff_width=0.5)
    for cutoff in (4.2, 3.1, 2.0):
        restricted, fresh = large.restrict(cutoff), neighbor_list(structure, cutoff)
        assert unordered_pairs(restricted) == unordered_pairs(fresh)
        assert len(restricted.i) == len(fresh.i) < len(large.i)
        # canonical order: identical element by element, so a search trial trains exactly like a plain run
        for key in ("i", "j", "shifts", "distances"):
            assert np.array_equal(getattr(restricted, key), getattr(fresh, key)), key
        assert restricted.cutoff == cutoff
        full_restricted, full_fresh = edge_graph(restricted, len(atoms)), edge_graph(fresh, len(atoms))
        assert pairs(full_restricted.centers, full_restricted.neighbors, full_restricted.shifts) == pairs(
            full_fresh.centers, full_fresh.neighbors, full_fresh.shifts)
        if cutoff == model.cutoff:  # the model sees the same graph either way
            by_restriction = GraphDataset([structure], 5.0).restrict(cutoff).batch([0], dtype=F64)
            by_fresh_list = GraphDataset([structure], cutoff).batch([0], dtype=F64)
            a, b = model(by_restriction), model(by_fresh_list)
            torch.testing.assert_close(a["energy"], b["energy"], rtol=0, atol=0)
            torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=0)
    with pytest.raises(ValueError):
        large.restrict(6.0)


def test_batch_nef_layout_is_consistent():
    structures = [cuau_cell(seed=1), cluster(), Atoms("Cu", positions=[[0, 0, 0]])]
    batch = batch_of(structures, CUTOFF)
    n, m = len(batch.numbers), max(slots for _, slots in batch.slot_groups)
    counts = np.bincount(batch.centers.numpy(), minlength=n)
    assert n == sum(len(a) for a in structures) and m == int(counts.max())
    # centres with neighbours in at most 3 groups of increasing neighbour counts, each as wide as its widest
    groups = batch.slot_groups
    assert 2 <= len(groups) <= 3 and sum(c for c, _ in groups) == int((counts > 0).sum())
    starts = np.cumsum([0] + [c * s for c, s in groups])
    slot = batch.edge_slot.numpy()
    group = np.searchsorted(starts, slot, side="right") - 1
    width = np.array([s for _, s in groups])[group]
    row, position = (slot - starts[group]) // width, (slot - starts[group]) % width
    # every edge in its own slot, at a position below its centre's edge count, one row per centre
    assert len(set(slot.tolist())) == len(slot) and slot.max() < starts[-1]
    assert (position < counts[batch.centers.numpy()]).all()
    rows = {(int(g), int(r)): set() for g, r in zip(group, row)}
    for g, r, center in zip(group, row, batch.centers.numpy()):
        rows[(int(g), int(r))].add(int(center))
    assert all(len(centres) == 1 for centres in rows.values()) and len(rows) == int((counts > 0).sum())
    for g, (_, slots) in enumerate(groups):
        in_group = counts[batch.centers.numpy()[group == g]]
        assert in_group.max() == slots and (g == 0 or in_group.min() > groups[g - 1][1])
    assert counts[-1] == 0  # the isolated atom has no row
    # the reverse of (i, j, S) is (j, i, -S)
    reverse = batch.edge_reverse
    assert torch.equal(batch.centers[reverse], batch.neighbors)
    assert torch.equal(batch.neighbors[reverse], batch.centers)
    assert torch.equal(batch.shifts[reverse], -batch.shifts)
    assert torch.equal(reverse[reverse], torch.arange(len(reverse)))


# ----------------------------------------------------------------------------------------------
# Forces and stress are derivatives of the energy


@pytest.mark.parametrize("zbl", [False, True])
def test_forces_are_minus_energy_gradient(zbl):
    model = make_model(seed=1, zbl=zbl)
    for atoms in (cuau_cell(seed=2), cluster()):
        if zbl:  # one close pair inside the ZBL range
            atoms = atoms.copy()
            atoms.positions[1] = atoms.positions[0] + [1.6, 0.3, -0.2]
        forces = forces_of(model, atoms)
        numeric = finite_difference_forces(model, atoms)
        assert np.abs(forces).max() > 1e-4  # not trivially zero
        scale = np.abs(forces).max()  # ~70 eV/A with the ZBL pair, ~1e-3 eV/A without
        np.testing.assert_allclose(forces, numeric, rtol=1e-6, atol=1e-9 + 1e-8 * scale)
        np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-12 * max(scale, 1.0))  # translation invariance


def test_stress_is_strain_derivative():
    model = make_model(seed=2)
    atoms = cuau_cell(seed=3)
    stress = predict(model, [atoms], stress=True)["stress"][0].numpy()
    volume = atoms.get_volume()
    numeric = np.zeros((3, 3))
    h = 1e-5
    for a in range(3):
        for b in range(a, 3):
            strain = np.zeros((3, 3))
            strain[a, b] += h / 2
            strain[b, a] += h / 2
            plus, minus = energy_of(model, strained(atoms, strain)), energy_of(model, strained(atoms, -strain))
            numeric[a, b] = numeric[b, a] = (plus - minus) / (2 * h) / volume
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    np.testing.assert_allclose(stress, numeric, rtol=1e-6, atol=1e-9)


def test_fused_and_double_backward_attention_agree():
    model = make_model(seed=3, num_attention_layers=2, num_heads=4)
    structures = [cuau_cell(seed=1), cluster(), cuau_cell(seed=2).repeat((2, 1, 1))]
    batch = batch_of(structures, model.cutoff)
    fused = model(batch, forces=True, stress=True, create_graph=False)
    explicit = model(batch, forces=True, stress=True, create_graph=True)
    assert explicit["forces"].requires_grad  # the graph of the forces is kept for training
    for key in ("energy", "forces"):
        torch.testing.assert_close(fused[key], explicit[key].detach(), rtol=1e-10, atol=1e-12)
    periodic = [0, 2]
    torch.testing.assert_close(fused["stress"][periodic], explicit["stress"].detach()[periodic], rtol=1e-10, atol=1e-12)
    # the kept graph really is differentiable with respect to the parameters (force training)
    (grad,) = torch.autograd.grad(explicit["forces"].pow(2).sum(), model.encoder.compress.weight)
    assert grad.abs().max() > 0


# ----------------------------------------------------------------------------------------------
# Exact invariances and extensivity


def test_translation_invariance():
    model = make_model(seed=4)
    for atoms in (cuau_cell(seed=1), cluster()):
        moved = atoms.copy()
        moved.positions += np.array([1.37, -2.21, 0.53])
        assert abs(energy_of(model, moved) - energy_of(model, atoms)) < 1e-10
        np.testing.assert_allclose(forces_of(model, moved), forces_of(model, atoms), atol=1e-10)


def test_permutation_invariance():
    model = make_model(seed=5)
    for atoms in (cuau_cell(seed=1).repeat((2, 1, 1)), cluster()):
        order = np.random.default_rng(0).permutation(len(atoms))
        permuted = atoms[order]
        assert abs(energy_of(model, permuted) - energy_of(model, atoms)) < 1e-10
        np.testing.assert_allclose(forces_of(model, permuted), forces_of(model, atoms)[order], atol=1e-10)


def test_periodic_image_invariance():
    model = make_model(seed=6)
    atoms = cuau_cell(seed=2)
    reference, reference_forces = energy_of(model, atoms), forces_of(model, atoms)
    moved = atoms.copy()
    lattice_shifts = np.array([[1, 0, -1], [0, 2, 0], [-1, -1, 1], [0, 0, 3]])
    moved.positions += lattice_shifts @ atoms.cell.array  # each atom replaced by a periodic image
    assert abs(energy_of(model, moved) - reference) < 1e-10
    np.testing.assert_allclose(forces_of(model, moved), reference_forces, atol=1e-10)
    wrapped = moved.copy()
    wrapped.wrap()
    assert abs(energy_of(model, wrapped) - reference) < 1e-10
    np.testing.assert_allclose(forces_of(model, wrapped), reference_forces, atol=1e-10)


def test_supercell_is_extensive():
    model = make_model(seed=7, composition=[-0.5, -1.5])
    atoms = cuau_cell(seed=3)
    base = predict(model, [atoms], stress=True)
    supercell = predict(model, [atoms.repeat((2, 1, 1))], stress=True)
    assert abs(float(supercell["energy"][0]) - 2 * float(base["energy"][0])) < 1e-10
    np.testing.assert_allclose(supercell["forces"].numpy(), np.tile(base["forces"].numpy(), (2, 1)), atol=1e-10)
    np.testing.assert_allclose(supercell["stress"].numpy(), base["stress"].numpy(), atol=1e-10)  # intensive


def test_not_rotation_invariant_by_construction():
    """Raw Cartesian edge vectors: invariance is only learned (rotation augmentation), spec 2.6."""
    model = make_model(seed=8)
    atoms = cluster()
    rotated = atoms.copy()
    rotated.rotate(73.0, v=[0.3, -0.5, 0.8], center="COP")
    distances = lambda a: np.sort(a.get_all_distances().ravel())  # noqa: E731
    np.testing.assert_allclose(distances(rotated), distances(atoms), atol=1e-12)
    assert abs(energy_of(model, rotated) - energy_of(model, atoms)) > 1e-6


# ----------------------------------------------------------------------------------------------
# Batching


def test_batch_equals_individual_predictions():
    model = make_model(seed=9, composition=[-0.3, -1.1])
    dimer = Atoms("CuAu", positions=[[0, 0, 0], [2.4, 0.3, 0.1]])
    structures = [cluster(), cuau_cell(seed=1).repeat((2, 1, 1)), dimer, cuau_cell(seed=4), cluster(seed=3)]
    periodic = [k for k, a in enumerate(structures) if a.pbc.all()]
    together = predict(model, structures, stress=True)
    offsets = np.cumsum([0] + [len(a) for a in structures])
    for k, atoms in enumerate(structures):
        alone = predict(model, [atoms], stress=atoms.pbc.all())
        assert abs(float(together["energy"][k]) - float(alone["energy"][0])) < 1e-10, k
        np.testing.assert_allclose(together["forces"][offsets[k]:offsets[k + 1]].numpy(), alone["forces"].numpy(), atol=1e-10)
        if k in periodic:
            np.testing.assert_allclose(together["stress"][k].numpy(), alone["stress"][0].numpy(), atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Smoothness at the cutoff and isolated atoms


def scan(model, make, radii):
    """Energies at every radius; forces where the structure has at least one edge (else None)."""
    energies, forces = [], []
    for r in radii:
        atoms = make(r)
        has_edges = len(batch_of([atoms], model.cutoff).centers) > 0
        result = predict(model, [atoms], forces=has_edges)  # see test_forces_of_a_batch_without_edges_are_zero
        energies.append(float(result["energy"][0]))
        forces.append(result["forces"].numpy() if has_edges else None)
    return np.array(energies), forces


@pytest.mark.parametrize("shape", ["dimer", "trimer"])
def test_energy_and_forces_continuous_across_cutoff(shape):
    model = make_model(seed=10, composition=[-0.7, -2.1], num_gnn_layers=2)
    direction = np.array([0.6, 0.0, 0.8])

    def make(r):
        if shape == "dimer":
            return Atoms("CuAu", positions=[[0, 0, 0], r * direction])
        # Cu at the origin keeps a close Au neighbour; a second Cu crosses the Cu cutoff, far from Au
        return Atoms("CuAuCu", positions=[[0, 0, 0], [-2.6, 0.2, 0.0], r * direction])

    far_atom = 1 if shape == "dimer" else 2
    # scan r over [rc - 0.03, rc + 0.03) with ever smaller steps: consecutive differences -> 0 linearly
    steps = []
    for h in (3e-3, 3e-4):
        radii = CUTOFF - 0.03 + h * np.arange(int(round(0.06 / h)))
        assert radii.min() < CUTOFF <= radii.max()
        energies, forces = scan(model, make, radii)
        inside = np.array([f is not None for f in forces])
        assert inside.sum() == (radii < CUTOFF).sum() if shape == "dimer" else inside.all()
        force_steps = np.diff(np.array([f for f in forces if f is not None]), axis=0)
        steps.append((np.abs(np.diff(energies)).max(), np.abs(force_steps).max()))
        outside = energies[radii >= CUTOFF]
        assert np.ptp(outside) < 1e-12  # beyond the cutoff the far atom no longer matters at all
        if shape == "trimer":  # the force on the far atom is exactly zero beyond the cutoff
            assert all(np.abs(f[far_atom]).max() < 1e-14 for f, r in zip(forces, radii) if r >= CUTOFF)
    (e1, f1), (e2, f2) = steps
    assert e1 > 1e-9 and f1 > 1e-9
    assert e2 < 0.2 * e1 and f2 < 0.2 * f1  # 10x smaller step, ~10x smaller jumps: no discontinuity

    # just inside the cutoff the structure has the energy of its parts (far atom isolated)
    near = make(CUTOFF - 1e-6)
    result = predict(model, [near])
    if shape == "dimer":
        parts = [Atoms("Cu"), Atoms("Au")]
    else:
        parts = [near[[0, 1]], Atoms("Cu")]
    separated = predict(model, parts, forces=False)["energy"].sum()  # batch [part, isolated atom]
    assert abs(float(result["energy"][0]) - float(separated)) < 1e-10
    assert abs(float(predict(model, [make(CUTOFF + 1e-6)], forces=False)["energy"][0]) - float(separated)) < 1e-12
    assert abs(float(result["energy"][0]) - float(predict(model, [make(CUTOFF - 0.3)])["energy"][0])) > 1e-6
    # the force on the crossing atom vanishes linearly with the distance to the cutoff
    largest = max(np.abs(f[far_atom]).max() for f in forces if f is not None)
    assert np.abs(result["forces"][far_atom].numpy()).max() < 1e-3 * largest


def test_cutoff_function_values():
    from nanopet.model import cutoff_function

    r = torch.tensor([0.0, 2.9, 3.0, 3.25, 3.5, 3.75, 3.999999, 4.0], dtype=F64)
    f = cutoff_function(r, 4.0, 1.0).numpy()
    expected = [1, 1, 1, 0.5 * (1 + math.cos(math.pi * 0.25)), 0.5, 0.5 * (1 + math.cos(math.pi * 0.75)), 0, 0]
    np.testing.assert_allclose(f, expected, atol=1e-10)


def test_isolated_atoms_have_only_the_composition_energy():
    weights = [-0.7, -2.1]
    model = make_model(seed=11, composition=weights)
    single = Atoms("Au", positions=[[0.0, 0.0, 0.0]])
    boxed = Atoms("Cu", positions=[[1.0, 2.0, 3.0]], cell=np.eye(3) * 9.0, pbc=True)  # no periodic image within 4 A
    far_pair = Atoms("CuAu", positions=[[0, 0, 0], [0, 0, CUTOFF + 1e-6]])

    # batches without any edge
    energies = predict(model, [single, boxed, far_pair], forces=False)["energy"].tolist()
    assert energies == [weights[1], weights[0], weights[0] + weights[1]]
    assert float(predict(model, [single], forces=False)["energy"][0]) == weights[1]

    # an isolated atom batched with structures that do have edges (padded NEF rows): still exactly 0
    result = predict(model, [single, cluster(), boxed], stress=False)
    assert float(result["energy"][0]) == weights[1]
    assert float(result["energy"][2]) == weights[0]
    assert torch.equal(result["forces"][0], torch.zeros(3, dtype=F64))
    assert torch.equal(result["forces"][-1], torch.zeros(3, dtype=F64))
    assert abs(float(result["energy"][1]) - (3 * weights[0] + 2 * weights[1])) > 1e-6  # the cluster is not isolated
    network = atomic_energies(model, single)
    assert network.tolist() == [0.0]


def test_forces_of_a_batch_without_edges_are_zero():
    model = make_model(seed=11, composition=[-0.7, -2.1])
    single = Atoms("Au", positions=[[0.0, 0.0, 0.0]])
    far_pair = Atoms("CuAu", positions=[[0, 0, 0], [0, 0, CUTOFF + 0.5]])
    result = predict(model, [single, far_pair])
    assert torch.equal(result["forces"], torch.zeros(3, 3, dtype=F64))
    boxed = Atoms("Cu", positions=[[1.0, 2.0, 3.0]], cell=np.eye(3) * 9.0, pbc=True)
    result = predict(model, [boxed], stress=True)
    assert torch.equal(result["stress"], torch.zeros(1, 3, 3, dtype=F64))


# ----------------------------------------------------------------------------------------------
# Hyperparameters do what they say


def expected_parameters(d, species=2, gnn=2, attention=1, head="mlp"):
    encoder = 3 * 4 * d + 4 * d * 4 * d + 4 * d * d + 2 * species * d + 3 * d * d
    layer = (2 * d + 3 * d * d + d * d) + (2 * d + 4 * d * d + 4 * d * d)  # attention + feed-forward, LN affine
    messages = (gnn - 1) * 2 * d * d
    readout = (8 * d * d if head == "mlp" else 0) + d
    return encoder + gnn * attention * layer + messages + readout


def count_modules(model, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_default_model_size():
    model = NanoPET(default_hypers()["model"], [CU, AU])
    n = count_parameters(model)
    assert n == expected_parameters(128, species=2, gnn=2, attention=2)
    assert 1.32e6 < n < 1.34e6  # spec 2.13: ~1.33 M
    assert model.interaction_range == 10.0
    assert count_modules(model, Attention) == 4 and count_modules(model, FeedForward) == 4


@pytest.mark.parametrize(
    "changes",
    [{}, {"d_pet": 32}, {"d_pet": 8, "num_heads": 4}, {"num_attention_layers": 3}, {"num_gnn_layers": 1},
     {"num_gnn_layers": 3, "num_attention_layers": 2}, {"heads": {"energy": "linear"}}, {"heads": {"energy": "mlp"}}],
)
def test_parameter_counts_follow_hypers(changes):
    model = make_model(**changes)
    h = hypers(**changes)
    head = h["heads"].get("energy", "mlp")
    assert count_parameters(model) == expected_parameters(h["d_pet"], 2, h["num_gnn_layers"], h["num_attention_layers"], head)
    assert count_modules(model, Transformer) == h["num_gnn_layers"]
    assert count_modules(model, Attention) == h["num_gnn_layers"] * h["num_attention_layers"]
    assert len(model.messages) == h["num_gnn_layers"] - 1
    assert model.encoder.compress.out_features == h["d_pet"]


def test_heads_mlp_vs_linear():
    d = 16
    linear = make_model(heads={"energy": "linear"})
    mlp = make_model(heads={"energy": "mlp"})
    assert count_parameters(mlp) - count_parameters(linear) == 8 * d * d
    assert count_parameters(make_model(heads={})) == count_parameters(mlp)  # missing key means mlp
    assert isinstance(linear.head, torch.nn.Identity)
    with pytest.raises(InputError):
        make_model(heads={"energy": "transformer"})
    with pytest.raises(InputError):
        make_model(heads={"dipole": "linear"})


def test_num_heads_changes_the_function_not_the_parameters():
    atoms = cuau_cell(seed=1)
    two = make_model(seed=12, num_heads=2)
    four = make_model(seed=0, num_heads=4)
    assert count_parameters(two) == count_parameters(four)
    four.load_state_dict(two.state_dict())
    assert abs(energy_of(two, atoms) - energy_of(four, atoms)) > 1e-8
    with pytest.raises(InputError):
        make_model(d_pet=16, num_heads=3)


def test_larger_cutoff_gives_more_edges_and_another_energy():
    atoms = cuau_cell(seed=1).repeat((2, 1, 1))
    edges = [len(batch_of([atoms], c).centers) for c in (3.0, 4.0, 5.0)]
    assert edges[0] < edges[1] < edges[2]
    small, large = make_model(seed=13, cutoff=4.0), make_model(seed=0, cutoff=5.0)
    large.load_state_dict(small.state_dict())
    assert abs(energy_of(small, atoms) - energy_of(large, atoms)) > 1e-6


def test_cutoff_width_only_acts_in_the_switching_region():
    narrow = make_model(seed=14, cutoff_width=0.5)
    wide = make_model(seed=0, cutoff_width=1.0)
    wide.load_state_dict(narrow.state_dict())
    # all distances below 4 - 1 = 3 A: both widths give cutoff weight 1 everywhere
    inner = Atoms("CuAuCu", positions=[[0, 0, 0], [2.4, 0, 0], [0.5, 2.2, 0.3]])
    assert inner.get_all_distances().max() < CUTOFF - 1.0
    assert abs(energy_of(narrow, inner) - energy_of(wide, inner)) < 1e-12
    # one distance at 3.4 A: inside the wide switching region only
    outer = Atoms("CuAuCu", positions=[[0, 0, 0], [2.4, 0, 0], [0.0, 3.4, 0.0]])
    assert abs(energy_of(narrow, outer) - energy_of(wide, outer)) > 1e-6
    with pytest.raises(InputError):
        make_model(cutoff_width=5.0)


def test_num_gnn_layers_sets_the_interaction_range():
    """A (0) - B (2.5 A) - C (5 A): C is outside A's cutoff, so it reaches A only through a message."""

    def chain(c_offset):
        return Atoms("CuAuCu", positions=[[0, 0, 0], [2.5, 0, 0], [5.0, c_offset, 0.0]])

    for layers, should_change in ((1, False), (2, True)):
        model = make_model(seed=15, num_gnn_layers=layers)
        assert model.interaction_range == layers * CUTOFF
        before, after = atomic_energies(model, chain(0.0)), atomic_energies(model, chain(0.3))
        assert abs(after[1] - before[1]) > 1e-6  # B sees C directly
        changed = abs(after[0] - before[0])
        assert (changed > 1e-8) if should_change else (changed < 1e-14), (layers, changed)


def test_num_attention_layers_changes_the_energy():
    atoms = cluster()
    one, two = make_model(seed=16, num_attention_layers=1), make_model(seed=0, num_attention_layers=2)
    # same weights everywhere except the extra transformer layer of each GNN block
    state = two.state_dict()
    assert set(one.state_dict()) < set(state)
    state.update(one.state_dict())
    two.load_state_dict(state)
    assert abs(energy_of(one, atoms) - energy_of(two, atoms)) > 1e-6


def test_invalid_layer_counts():
    for key in ("num_gnn_layers", "num_attention_layers"):
        with pytest.raises(InputError):
            make_model(**{key: 0})


# ----------------------------------------------------------------------------------------------
# ZBL


def zbl_pair_energy(zbl_model, plain_model, numbers, r):
    atoms = Atoms(numbers=numbers, positions=[[0, 0, 0], [0.0, r * 0.6, r * 0.8]])
    return energy_of(zbl_model, atoms) - energy_of(plain_model, atoms)


def test_zbl_repulsion_switches_off_smoothly():
    plain = make_model(seed=17)
    zbl = make_model(seed=0, zbl=True)
    zbl.load_state_dict(plain.state_dict(), strict=False)  # same network; ZBL has buffers only
    assert count_parameters(zbl) == count_parameters(plain)
    for numbers in ([CU, AU], [AU, AU], [CU, CU]):
        z1, z2 = numbers
        rc = covalent_radii[z1] + covalent_radii[z2]
        energy = lambda r: zbl_pair_energy(zbl, plain, numbers, r)  # noqa: E731
        radii = np.linspace(0.4, rc - 0.05, 25)
        values = np.array([energy(r) for r in radii])
        assert np.all(values > 0) and np.all(np.diff(values) < 0)  # positive, repulsive
        # the switched potential differs from the universal ZBL by A r^3 + B r^4 + C (spec 2.11)
        difference = values - zbl_reference(radii, z1, z2)
        design = np.stack([np.ones_like(radii), radii**3, radii**4], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, difference, rcond=None)
        np.testing.assert_allclose(design @ coefficients, difference, atol=1e-8 * values.max())
        assert abs(values[0] / zbl_reference(radii[0], z1, z2) - 1) < 0.05  # switch is a small correction
        # E, E' and E'' vanish at r_c: E(rc - d) ~ d^3
        h = 1e-4
        for delta in (0.02, 0.01):
            r = rc - delta
            e0, ep, em = energy(r), energy(r + h), energy(r - h)
            first, second = (ep - em) / (2 * h), (ep - 2 * e0 + em) / h**2
            scale = values[0]
            assert abs(e0) < 1e-4 * scale * (delta / 0.02) ** 3
            assert abs(first) < 1e-3 * scale * (delta / 0.02) ** 2
            assert abs(second) < 1e-1 * scale * (delta / 0.02)
        assert abs(energy(rc + 1e-6)) < 1e-12 and abs(energy(rc + 0.3)) < 1e-12


def test_zbl_needs_a_cutoff_covering_the_pair_radii():
    largest = 2 * covalent_radii[AU]
    with pytest.raises(InputError, match="cutoff"):
        make_model(zbl=True, cutoff=largest - 0.1, cutoff_width=0.5)
    make_model(zbl=True, cutoff=largest + 0.1, cutoff_width=0.5)
    make_model(zbl=True, types=(CU,), cutoff=2 * covalent_radii[CU] + 0.01, cutoff_width=0.5)


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_activations_first_and_second_derivatives(name):
    """The hand-written first and second derivatives (force training differentiates the activations twice)
    agree with finite differences and with torch's own activation through autograd."""
    ours = SiLU() if name == "silu" else gelu
    reference = torch.nn.functional.silu if name == "silu" else torch.nn.functional.gelu
    x = torch.linspace(-6, 6, 61, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))
    weights = torch.randn(61, dtype=torch.float64)

    def second(f):  # f'(x) w, and the gradient of a loss on it (what force training takes)
        (first,) = torch.autograd.grad((f(x) * weights).sum(), x, create_graph=True)
        (again,) = torch.autograd.grad((first**2).sum(), x)
        return first.detach(), again

    for a, b in zip(second(ours), second(reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # GELU runs aten's kernels with oneDNN off for the call only (oneDNN caches a primitive per shape)
    assert torch.backends.mkldnn.enabled


def test_layer_norm_first_and_second_derivatives():
    """The LayerNorm's hand-written second derivative (force training differentiates it twice) passes
    gradgradcheck for input, weight and bias, and equals torch's own layer_norm through autograd."""
    generator = torch.Generator().manual_seed(0)
    norm = LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
        norm.bias.normal_(generator=generator)
    x = (3 * torch.randn(5, 6, dtype=torch.float64, generator=generator) + 1).requires_grad_()
    ours = lambda x, w, b: layer_norm(x, w, b, norm.eps).sin()  # noqa: E731
    reference = lambda x, w, b: torch.nn.functional.layer_norm(x, (6,), w, b, norm.eps).sin()  # noqa: E731
    assert torch.autograd.gradcheck(ours, (x, norm.weight, norm.bias))
    assert torch.autograd.gradgradcheck(ours, (x, norm.weight, norm.bias))
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (6,), norm.weight, norm.bias, norm.eps))

    def second(f, wrt):  # first derivatives (forces-like), then the gradient of a loss on them
        firsts = torch.autograd.grad(f(x, norm.weight, norm.bias).pow(2).sum(), wrt, create_graph=True)
        loss = sum((first**2).sum() for first in firsts)
        return (*(first.detach() for first in firsts), *torch.autograd.grad(loss, (x, norm.weight, norm.bias)))

    # gradcheck sends one output's gradient at a time; a loss on several first derivatives sends them together
    for wrt in [(x,), (x, norm.weight, norm.bias)]:
        for a, b in zip(second(ours, wrt), second(reference, wrt)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_placing_and_picking_rows_are_adjoint_copies_at_every_order():
    """place_rows / pick_rows move packed edge tokens into the padded attention layout and back; their
    hand-written backwards (each other) match autograd's index_copy / index_select to second order."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(13, generator=generator)[:7]
    packed = torch.randn(7, 3, dtype=torch.float64, generator=generator).requires_grad_()
    padded = torch.randn(13, 3, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: place_rows(x, rows, 13).sin(), (packed,))
    assert torch.autograd.gradgradcheck(lambda x: pick_rows(x, rows).sin(), (padded,))

    def second(f, x):  # a force-training-like loss: the square of a first derivative, differentiated again
        (first,) = torch.autograd.grad(f(x).cos().sum(), x, create_graph=True)
        return torch.autograd.grad((first**2 * x).sum(), x)[0]

    torch.testing.assert_close(second(lambda x: place_rows(x, rows, 13), packed),
                               second(lambda x: x.new_zeros(13, 3).index_copy(0, rows, x), packed), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second(lambda y: pick_rows(y, rows), padded), second(lambda y: y[rows], padded),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(place_rows(packed, rows, 13)[rows], packed)
    assert not place_rows(packed, rows, 13)[~torch.isin(torch.arange(13), rows)].any()
    # with the padding rows given (the attention layouts): only those are zeroed, the same at every order
    padding = unused_rows(rows, 13)
    assert sorted(padding.tolist() + rows.tolist()) == list(range(13))
    torch.testing.assert_close(place_rows(packed, rows, 13, padding), place_rows(packed, rows, 13), rtol=0, atol=0)
    torch.testing.assert_close(second(lambda x: place_rows(x, rows, 13, padding), packed),
                               second(lambda x: place_rows(x, rows, 13), packed), rtol=0, atol=0)
    torch.testing.assert_close(second(lambda y: pick_rows(y, rows, padding), padded),
                               second(lambda y: pick_rows(y, rows), padded), rtol=0, atol=0)
    assert torch.autograd.gradgradcheck(lambda x: pick_rows(x, rows, padding).sin(), (padded,))


def test_grouping_centres_by_neighbour_count_changes_no_number(monkeypatch):
    """Attention in up to three layouts by neighbour count (a slab, a cluster, bulk and an isolated atom in one
    batch) gives the energies, forces, stress and force-training gradients of the single padded layout."""
    import nanopet.data.batch as batch_module

    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    slab.center(vacuum=4.0, axis=2)
    structures = [cuau_cell(seed=3), cluster(), slab, Atoms("Cu", positions=[[0, 0, 0]])]
    model = make_model()

    def run(max_groups):
        monkeypatch.setattr(batch_module, "MAX_SLOT_GROUPS", max_groups)
        batch = batch_of(structures, CUTOFF)
        model.zero_grad()
        out = model(batch, forces=True, stress=True, create_graph=True)
        (out["energy"].sum() + (out["forces"] ** 2).sum() + out["stress"][[0, 2]].sum()).backward()  # periodic ones
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return len(batch.slot_groups), {k: v.detach() for k, v in out.items()}, grads

    one, single, single_grads = run(1)
    several, grouped, grouped_grads = run(3)
    assert one == 1 and several >= 2
    for key in single:
        torch.testing.assert_close(grouped[key], single[key], rtol=1e-12, atol=1e-12)
    for a, b in zip(grouped_grads, single_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    model.eval()  # the fused (inference) attention takes the same layouts
    monkeypatch.setattr(batch_module, "MAX_SLOT_GROUPS", 3)
    fused = model(batch_of(structures, CUTOFF), forces=True)
    torch.testing.assert_close(fused["energy"], single["energy"], rtol=1e-12, atol=1e-12)
