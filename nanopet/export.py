"""A trained NanoPET as a metatomic TorchScript model, for engines this package does not know.

``export_model(NanoPET) -> AtomisticModel`` wraps the same modules and weights in
``MetatomicNanoPET``, whose forward follows metatomic's model interface: systems in, an ``energy``
TensorMap out (per structure, or per atom where the engine asks for it). The engine supplies a half
neighbour list at the model's cutoff (``requested_neighbor_lists``) and differentiates the energy
for forces and stress; the edge vectors are recomputed here from positions, cell and the pairs'
cell shifts, so that gradient reaches positions and strain whether or not the engine also attaches
it to the list's distance vectors. Composition baseline, energy scale and ZBL are part of the energy.

The half list is completed into the full directed list the model reads the same way the trainer's
does (nanopet/data/neighbors.py, spec 2.2): pairs, then the same pairs reversed, so each edge's
reverse is known by construction, and its vector is exactly -r, which lets the encoder run its first two layers
on one edge of each pair (``Encoder``). All atoms of all systems form one attention layout, padded to the
most neighbours of any atom (the trainer's up to three groups by neighbour count are only faster).

Nothing below this module imports it. (No ``from __future__ import annotations`` here: metatomic
checks the forward's annotations as objects.)
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import AtomisticModel, ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System
from torch import nn

from nanopet.errors import InputError
from nanopet.model import NanoPET

REFERENCES = {
    "architecture": [
        "Pozdnyakov, S. N. and Ceriotti, M., Smooth, exact rotational symmetrization for deep learning on point "
        "clouds, NeurIPS 36 (2023), arXiv:2305.19302 (PET)",
        "NanoPET: the PET variant of metatrain, https://github.com/metatensor/metatrain (architecture 'nanopet')",
    ],
    "implementation": ["nanopet-tune: a from-scratch PyTorch re-implementation of metatrain's NanoPET"],
}


def full_edges(first: torch.Tensor, second: torch.Tensor, vectors: torch.Tensor, n_atoms: int
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
    """The full directed edge list of a half list (pairs ``first -> second`` with ``vectors``), sorted by
    centre: (centers, neighbors, vectors, edge_slot, edge_reverse, slot_groups) as ``Batch`` holds them,
    with a single attention layout of ``n_atoms`` rows."""
    p = first.shape[0]
    centers, neighbors = torch.cat([first, second]), torch.cat([second, first])
    vectors = torch.cat([vectors, -vectors])
    order = torch.argsort(centers, stable=True)
    position_of = torch.empty_like(order)
    position_of[order] = torch.arange(2 * p, device=order.device)
    reverse = torch.cat([torch.arange(p, 2 * p, device=order.device), torch.arange(0, p, device=order.device)])
    centers, neighbors, vectors, reverse = centers[order], neighbors[order], vectors[order], position_of[reverse[order]]
    counts = torch.bincount(centers, minlength=n_atoms)
    first_edge = torch.cumsum(counts, 0) - counts
    slot = torch.arange(2 * p, device=order.device) - first_edge[centers]
    groups: List[Tuple[int, int]] = []
    most = int(counts.max()) if p > 0 else 0
    if p > 0:
        groups.append((n_atoms, most))
    return centers, neighbors, vectors, centers * most + slot, reverse, groups


class MetatomicNanoPET(nn.Module):
    """metatomic's model interface around a NanoPET: the same modules, the same parameters."""

    def __init__(self, model: NanoPET):
        super().__init__()
        self.model = model
        self.neighbors = NeighborListOptions(cutoff=model.cutoff, full_list=False, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.neighbors]

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
        results: Dict[str, TensorMap] = {}
        if "energy" not in outputs or len(systems) == 0:
            return results
        dtype, device = systems[0].positions.dtype, systems[0].positions.device
        lookup = self.model.species_index
        firsts, seconds, vectors, species, system_of, atom_of = [], [], [], [], [], []
        offset = 0
        for k, system in enumerate(systems):
            types = system.types.to(torch.long)
            if len(types) > 0 and (bool((types < 0).any()) or bool((types >= len(lookup)).any())
                                   or bool((lookup[types.clamp(0, len(lookup) - 1)] < 0).any())):
                raise ValueError(f"system {k} has atomic types unknown to this model (trained on {self.model.atomic_types})")
            pairs = system.get_neighbor_list(self.neighbors)
            samples = pairs.samples.values.to(torch.long)  # first_atom, second_atom, cell_shift_a/b/c
            first, second = samples[:, 0], samples[:, 1]
            shifts = samples[:, 2:5].to(dtype) @ system.cell
            vectors.append(system.positions[second] - system.positions[first] + shifts)
            firsts.append(first + offset)
            seconds.append(second + offset)
            species.append(lookup[types])
            system_of.append(torch.full_like(types, k))
            atom_of.append(torch.arange(len(types), device=device))
            offset += len(types)
        species_all = torch.cat(species)
        centers, neighbors, edge_vectors, edge_slot, edge_reverse, groups = full_edges(
            torch.cat(firsts), torch.cat(seconds), torch.cat(vectors), offset)
        per_atom = self.model.edge_energies(edge_vectors, species_all, centers, neighbors, edge_slot, edge_reverse,
                                            groups, False)
        per_atom = per_atom + self.model.composition_weights.to(dtype)[species_all]
        system_index, atom_index = torch.cat(system_of), torch.cat(atom_of)

        if selected_atoms is not None:  # (system, atom) rows to keep
            starts = torch.cumsum(torch.tensor([0] + [len(s) for s in systems], device=device), 0)
            chosen = selected_atoms.values.to(torch.long).to(device)
            keep = torch.zeros(offset, dtype=torch.bool, device=device)
            keep[starts[chosen[:, 0]] + chosen[:, 1]] = True
            per_atom, system_index, atom_index = per_atom[keep], system_index[keep], atom_index[keep]

        properties = Labels(["energy"], torch.tensor([[0]], device=device))
        if outputs["energy"].sample_kind == "atom":
            samples = Labels(["system", "atom"], torch.stack([system_index, atom_index], dim=1).to(torch.int32))
            values = per_atom[:, None]
        else:
            samples = Labels(["system"], torch.arange(len(systems), device=device, dtype=torch.int32)[:, None])
            values = torch.zeros(len(systems), 1, dtype=dtype, device=device).index_add(0, system_index, per_atom[:, None])
        block = TensorBlock(values=values, samples=samples, components=[], properties=properties)
        results["energy"] = TensorMap(Labels(["_"], torch.tensor([[0]], device=device)), [block])
        return results


def export_model(model: NanoPET, name: str = "nanopet", description: str = "") -> AtomisticModel:
    """The metatomic AtomisticModel of a trained NanoPET (in its own dtype, on the CPU)."""
    model = model.to("cpu").eval()
    dtype = next(model.parameters()).dtype
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(unit="eV", sample_kind="atom",
                                       description="total energy, with composition baseline and ZBL")},
        atomic_types=list(model.atomic_types),
        interaction_range=float(model.interaction_range),
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype={torch.float32: "float32", torch.float64: "float64"}[dtype],
    )
    hypers = model.hypers
    metadata = ModelMetadata(
        name=name,
        description=description or (
            f"NanoPET (nanopet-tune) for {model.atomic_types}: cutoff {model.cutoff} A, d_pet {hypers['d_pet']}, "
            f"{hypers['num_gnn_layers']} GNN x {hypers['num_attention_layers']} attention layers"
            + (", with ZBL" if model.zbl is not None else "")),
        references=REFERENCES,
    )
    return AtomisticModel(MetatomicNanoPET(model).eval(), metadata, capabilities)


def export_checkpoint(checkpoint: Union[str, Path], output: Union[str, Path, None] = None) -> Path:
    """``nanopet-tune export``: write the metatomic model of a checkpoint's best weights; returns its path."""
    from nanopet.checkpoints import model_from_checkpoint

    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else checkpoint.with_suffix(".pt")
    model = model_from_checkpoint(checkpoint)
    if not output.parent.is_dir():
        raise InputError(f"{output}: cannot write the exported model (no folder {output.parent})")
    exported = export_model(model, name=checkpoint.parent.name or "nanopet")
    temporary = output.with_name(output.name + ".tmp")
    try:
        exported.save(str(temporary))
        temporary.replace(output)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise InputError(f"{output}: cannot write the exported model ({str(error).splitlines()[0]})") from None
    return output
