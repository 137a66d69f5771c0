"""NanoPET, top to bottom, in the order of ../shared/nanopet-spec.md section 2.

Shapes: B structures, N atoms, E directed edges, M edge slots per centre, d = d_pet, H = num_heads.
Tokens are packed, one row per real edge (E, d), so every linear layer, norm and activation runs on
real edges only; attention places them into the NEF layout (n, M): one sequence of neighbour tokens
per centre atom, padded to M, and attention runs within each centre's sequence. The centres come in
up to three groups by neighbour count, each padded to its own most neighbours (attention costs M^2
per centre). The reference keeps all tokens padded to the batch's most neighbours; same function.

Deliberate deviations from the reference code (each also noted where it happens):
- the cutoff enters attention as an additive log-weight on the keys, softmax(QK^T/sqrt(dh) + log f_k),
  which equals the reference "multiply by f after softmax and renormalise" without its +1e-6.
  Written that way, one function serves the fused kernel (inference) and the explicit
  double-differentiable one (force training), so both compute the same model;
- readout-head MLPs are bias-free (as upstream after #467): an isolated atom predicts exactly 0;
- per-atom energies are multiplied by a fixed ``energy_scale`` fitted on the training set
  (upstream's later Scaler), so the network's outputs are O(1);
- ZBL is part of the model's energy in both training and inference (it has no parameters, so
  adding it to predictions equals subtracting it from targets) and uses the model's own
  neighbour list, which must therefore reach every ZBL pair (cutoff >= the largest pair radius);
- stress is the symmetrised strain derivative divided by the volume.
"""

from __future__ import annotations

import contextlib
import math
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nanopet.data.batch import Batch
from nanopet.errors import InputError
from nanopet.kernels import LayerNorm, SiLU, gelu, pick_rows, place_rows, unused_rows

# ---------------------------------------------------------------------------------------------
# 2.5 Cutoff function: 1 below r_c - w, then a cosine switch to 0 at r_c.
# ½(1 + cos(pi x)) is written as cos²(pi x / 2): same function, no cancellation near r_c.


def cutoff_function(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    x = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    return torch.cos(0.5 * math.pi * x) ** 2


# ---------------------------------------------------------------------------------------------
# 2.6 Encoder: raw Cartesian edge vector + centre species + neighbour species -> edge token.


class Encoder(nn.Module):
    def __init__(self, n_species: int, d: int):
        super().__init__()
        self.vector_mlp = nn.Sequential(
            nn.Linear(3, 4 * d, bias=False), SiLU(inplace=True),
            nn.Linear(4 * d, 4 * d, bias=False), SiLU(inplace=True),
            nn.Linear(4 * d, d, bias=False),
        )
        self.center_embedding = nn.Embedding(n_species, d)
        self.neighbor_embedding = nn.Embedding(n_species, d)
        self.compress = nn.Linear(3 * d, d, bias=False)

    def forward(self, vectors: torch.Tensor, center_species: torch.Tensor, neighbor_species: torch.Tensor,
                edge_reverse: torch.Tensor) -> torch.Tensor:
        # vectors (E, 3); species indices of each edge's centre and neighbour (E,); edge_reverse (E,) -> tokens (E, d)
        # compress(cat[mlp(r), center, neighbour]) = mlp(r) W_r^T + center W_c^T + neighbour W_n^T: the first
        # term folds into the MLP's last linear, the species terms into per-species tables. Same function
        # and gradients, no (E, 3d) tensor (``token_parts`` computes the two terms as written).
        d = self.compress.weight.shape[0]
        w_vector, w_center, w_neighbor = self.compress.weight.split(d, dim=1)
        w_out = (w_vector @ self.vector_mlp[-1].weight).T  # (4d, d)
        species = ((self.center_embedding.weight @ w_center.T)[center_species]
                   + (self.neighbor_embedding.weight @ w_neighbor.T)[neighbor_species])  # (E, d)
        # The reverse edge's vector is -r (full lists are a half list and its reversal, the trainer's and the export's):
        # SiLU(-a) = SiLU(a) - a, so the reverse edge's second pre-activation is W2 SiLU(-W1 r) = W2 SiLU(W1 r) - (W2 W1) r,
        # and the first linear, its SiLU and the (4d, 4d) linear run on one edge of each pair only. Same function.
        edges = torch.arange(edge_reverse.shape[0], device=edge_reverse.device)
        one = (edges < edge_reverse).nonzero().squeeze(1)  # (E/2,) one edge of each pair
        other = edge_reverse[one]
        row = torch.empty_like(edge_reverse)  # each edge's row in [one; other]
        row[one] = torch.arange(one.shape[0], device=row.device)
        row[other] = torch.arange(one.shape[0], edge_reverse.shape[0], device=row.device)
        first = pick_rows(vectors, one)  # (E/2, 3)
        pre = self.vector_mlp[2](self.vector_mlp[1](self.vector_mlp[0](first)))  # (E/2, 4d)
        pre_reverse = torch.addmm(pre, first, (self.vector_mlp[2].weight @ self.vector_mlp[0].weight).T, alpha=-1.0)
        geometric = torch.cat([self.vector_mlp[3](pre) @ w_out, self.vector_mlp[3](pre_reverse) @ w_out])  # (E, d)
        return pick_rows(geometric, row).add_(species)

    @torch.jit.unused
    def token_parts(self, vectors: torch.Tensor, center_species: torch.Tensor, neighbor_species: torch.Tensor):
        """The two parts of the tokens ``forward`` sums: geometric mlp(r) W_r^T and species (E, d) each (the
        trainer's initialisation balances them)."""
        d = self.compress.weight.shape[0]
        w_vector, w_center, w_neighbor = self.compress.weight.split(d, dim=1)
        species = (self.center_embedding.weight @ w_center.T)[center_species] + (self.neighbor_embedding.weight @ w_neighbor.T)[neighbor_species]
        return self.vector_mlp(vectors) @ w_vector.T, species


# ---------------------------------------------------------------------------------------------
# 2.7 Transformer: pre-LayerNorm attention and feed-forward blocks with residuals scaled by 1/sqrt(2).


class Slots:
    """Where each packed edge token goes in the padded attention layouts.

    The centres come in groups by neighbour count (``Batch.slot_groups``: group g holds n_g centres
    of m_g slots each), each group its own padded layout, the groups one after the other.
    ``qkv_rows`` (E*3*H,): row of (edge, q|k|v, head) in the groups' (3, n_g, H, m_g) layouts of (dh,) rows;
    ``head_rows`` (E*H,): row of (edge, head) in the groups' (n_g, H, m_g) layouts of the attention output;
    ``qkv_padding``, ``head_padding``: the other rows of those layouts (padding slots).
    """

    def __init__(self, edge_slot: torch.Tensor, groups: List[Tuple[int, int]], num_heads: int):
        self.groups, self.num_heads = groups, num_heads
        self.starts: List[int] = [0]  # slot rows before each group; total
        for group_size in groups:
            self.starts.append(self.starts[-1] + group_size[0] * group_size[1])
        self.rows = self.starts[-1]  # slot rows in all groups
        device, h = edge_slot.device, num_heads
        starts = torch.tensor(self.starts[:-1], device=device)
        group = torch.bucketize(edge_slot, starts[1:], right=True)  # (E,)
        start = starts[group]
        n = torch.tensor([g[0] for g in groups], device=device)[group]  # the edge's group's centres, slots
        m = torch.tensor([g[1] for g in groups], device=device)[group]
        center, slot = (edge_slot - start) // m, (edge_slot - start) % m  # row within the group, slot within the row
        heads = torch.arange(h, device=device)
        within = center * h * m + slot  # (E,)
        self.head_rows = (h * start + within)[:, None] + heads * m[:, None]  # (E, H)
        parts = torch.arange(3, device=device)
        self.qkv_rows = ((3 * h * start + within)[:, None, None] + (parts * (n * h * m)[:, None])[:, :, None]
                         + (heads * m[:, None])[:, None, :])  # (E, 3, H)
        self.head_rows, self.qkv_rows = self.head_rows.reshape(-1), self.qkv_rows.reshape(-1)
        self.head_padding = unused_rows(self.head_rows, h * self.rows)  # the padding slots' rows
        self.qkv_padding = unused_rows(self.qkv_rows, 3 * h * self.rows)

    def blocks(self, padded: torch.Tensor, per_slot: int) -> List[torch.Tensor]:
        """Each group's part of a tensor with ``per_slot`` rows per slot, as views. (split, not slicing: the
        backward of a split concatenates the parts' gradients; that of each slice zero-fills the whole tensor.)"""
        if len(self.groups) == 1:  # (a split into one part would still copy its gradient back)
            return [padded]
        return list(padded.split([per_slot * (b - a) for a, b in zip(self.starts[:-1], self.starts[1:])]))


class Attention(nn.Module):
    def __init__(self, d: int, num_heads: int):
        super().__init__()
        if d % num_heads:
            raise InputError(f"d_pet ({d}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, slots: Slots, log_cutoff: torch.Tensor, double_backward: bool) -> torch.Tensor:
        # x (E, d) packed tokens; log_cutoff (slot rows,), added to the logits of every query over the keys
        e, d = x.shape
        h, dh = self.num_heads, d // self.num_heads
        qkv = self.qkv(self.norm(x)).view(e * 3 * h, dh)  # rows (edge, q|k|v, head)
        # into the padded layouts in one copy; padding slots hold zero queries, keys and values
        padded = place_rows(qkv, slots.qkv_rows, 3 * h * slots.rows, slots.qkv_padding)
        outputs = []
        for (n, m), block, mask in zip(slots.groups, slots.blocks(padded, 3 * h), slots.blocks(log_cutoff, 1)):
            q, k, v = block.view(3, n * h, m, dh).unbind(0)  # one group: n centres of m slots
            # force training differentiates through the attention twice; under TorchScript (the exported model) these
            # three ops also beat the fused kernel's math path (about 2% of an MD step)
            if double_backward or torch.jit.is_scripting():
                # logits = log_cutoff + scale * q k^T in one batched GEMM, (n*H, m, m)
                logits = torch.baddbmm(mask.view(n, 1, 1, m).expand(n, h, 1, m).reshape(n * h, 1, m), q,
                                       k.transpose(1, 2), alpha=dh**-0.5)
                # (aten's _softmax, which softmax calls: TorchScript's own softmax derivative keeps the logits alive
                # until the backward, the aten one only the probabilities; 4% of an 864-atom MD step)
                attended = torch.bmm(torch._softmax(logits, -1, False), v)  # (n*H, m, dh)
            else:  # the fused kernel has no second derivative, but is faster for eager inference
                attended = F.scaled_dot_product_attention(q.view(n, h, m, dh), k.view(n, h, m, dh),
                                                          v.view(n, h, m, dh), attn_mask=mask.view(n, 1, 1, m))
            outputs.append(attended.reshape(n * h * m, dh))
        attended = pick_rows(torch.cat(outputs) if len(outputs) > 1 else outputs[0], slots.head_rows, slots.head_padding).view(e, d)
        # (out(attended) + x) / sqrt(2), the residual and its scale fused into one GEMM
        return torch.addmm(x, attended, (self.out.weight * 0.5**0.5).T, beta=0.5**0.5)


class FeedForward(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = LayerNorm(d)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (down(gelu(up(LN(x)))) + x) / sqrt(2), the residual fused into the second GEMM
        # x (E, d); 1/sqrt(2) on the (d, 4d) weight, not as addmm's alpha: the backward then scales no (E, 4d) tensor
        hidden = gelu(self.up(self.norm(x)))  # (E, 4d)
        return torch.addmm(x, hidden, (self.down.weight * 0.5**0.5).T, beta=0.5**0.5)


class Transformer(nn.Module):
    def __init__(self, d: int, num_heads: int, num_layers: int):
        super().__init__()
        self.attention = nn.ModuleList(Attention(d, num_heads) for _ in range(num_layers))
        self.feed_forward = nn.ModuleList(FeedForward(d) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, slots: Slots, log_cutoff: torch.Tensor, double_backward: bool) -> torch.Tensor:
        for attention, feed_forward in zip(self.attention, self.feed_forward):
            x = feed_forward(attention(x, slots, log_cutoff, double_backward))
        return x


# ---------------------------------------------------------------------------------------------
# 2.10 Readout heads: bias-free MLP (or identity), then a bias-free linear to one number per atom.


def readout_head(kind: str, d: int) -> nn.Module:
    if kind == "linear":
        return nn.Identity()
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d, 4 * d, bias=False), SiLU(inplace=True), nn.Linear(4 * d, d, bias=False), SiLU(inplace=True))
    raise InputError(f"architecture.model.heads: unknown head type '{kind}' (use linear or mlp)")


# ---------------------------------------------------------------------------------------------
# 2.11 ZBL: universal screened nuclear repulsion, switched off smoothly (E, E', E'' -> 0) at
# r_c,ij = covalent radius(Z_i) + covalent radius(Z_j).


def _zbl_unswitched(r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
    a = 0.46850 / (zi**0.23 + zj**0.23)
    phi = (0.18175 * torch.exp(-3.19980 * r / a) + 0.50986 * torch.exp(-0.94229 * r / a)  # universal screening
           + 0.28022 * torch.exp(-0.40290 * r / a) + 0.02817 * torch.exp(-0.20162 * r / a))
    return 14.399645 * zi * zj / r * phi  # e^2 / (4 pi eps0) = 14.399645 eV A


class ZBL(nn.Module):
    """Pair repulsion; the switch polynomial S(r) = A r^3/3 + B r^4/4 + C cancels E, E', E'' at r_c."""

    def __init__(self, atomic_types: list[int]):
        super().__init__()
        from ase.data import covalent_radii

        z = torch.tensor(atomic_types, dtype=torch.float64)
        zi, zj = z[:, None].expand(-1, len(z)), z[None, :].expand(len(z), -1)
        radii = torch.tensor([covalent_radii[t] for t in atomic_types], dtype=torch.float64)
        rc = (radii[:, None] + radii[None, :]).clone().requires_grad_(True)
        energy = _zbl_unswitched(rc, zi, zj)
        (d1,) = torch.autograd.grad(energy.sum(), rc, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), rc)
        e0, d1, rc = energy.detach(), d1.detach(), rc.detach()
        self.register_buffer("pair_cutoff", rc)
        self.register_buffer("z_i", zi.clone())
        self.register_buffer("z_j", zj.clone())
        self.register_buffer("switch_a", (-3 * d1 + rc * d2) / rc**2)
        self.register_buffer("switch_b", (2 * d1 - rc * d2) / rc**3)
        self.register_buffer("switch_c", -e0 + rc * d1 / 2 - rc**2 * d2 / 12)

    @property
    def max_cutoff(self) -> float:
        return float(self.pair_cutoff.max())

    def forward(self, distances: torch.Tensor, center_species: torch.Tensor, neighbor_species: torch.Tensor) -> torch.Tensor:
        # distances (E,), species indices (E,) -> energy per directed edge (E,), halved (full list)
        rc = self.pair_cutoff[center_species, neighbor_species]
        inside = distances < rc
        r = torch.where(inside, distances, rc)  # keeps the unused branch finite
        zi, zj = self.z_i[center_species, neighbor_species], self.z_j[center_species, neighbor_species]
        a, b = self.switch_a[center_species, neighbor_species], self.switch_b[center_species, neighbor_species]
        c = self.switch_c[center_species, neighbor_species]
        pair = _zbl_unswitched(r, zi, zj) + a * r**3 / 3 + b * r**4 / 4 + c
        return 0.5 * torch.where(inside, pair, torch.zeros_like(pair))


# ---------------------------------------------------------------------------------------------
# The model.


class NanoPET(nn.Module):
    """Energy = sum over atoms of (energy_scale * head(h_i) + ZBL_i) [+ composition baseline]."""

    def __init__(self, hypers: dict, atomic_types: list[int]):
        super().__init__()
        self.hypers = dict(hypers)
        self.atomic_types = sorted(int(t) for t in atomic_types)
        d = int(hypers["d_pet"])
        self.cutoff = float(hypers["cutoff"])
        self.cutoff_width = float(hypers["cutoff_width"])
        if not 0 < self.cutoff_width <= self.cutoff:
            raise InputError(f"architecture.model.cutoff_width must be in (0, cutoff]; got {self.cutoff_width}")
        if int(hypers["num_gnn_layers"]) < 1 or int(hypers["num_attention_layers"]) < 1:
            raise InputError("architecture.model: num_gnn_layers and num_attention_layers must be >= 1")

        # 2.1 species lookup: atomic number -> 0..S-1 (-1 for unknown)
        lookup = torch.full((max(self.atomic_types) + 1,), -1, dtype=torch.long)
        lookup[self.atomic_types] = torch.arange(len(self.atomic_types))
        self.register_buffer("species_index", lookup)

        self.num_heads = int(hypers["num_heads"])
        self.encoder = Encoder(len(self.atomic_types), d)
        self.gnn = nn.ModuleList(
            Transformer(d, self.num_heads, int(hypers["num_attention_layers"]))
            for _ in range(int(hypers["num_gnn_layers"]))
        )
        self.messages = nn.ModuleList(nn.Linear(2 * d, d, bias=False) for _ in range(int(hypers["num_gnn_layers"]) - 1))

        heads = dict(hypers.get("heads") or {})
        unknown = set(heads) - {"energy"}
        if unknown:
            raise InputError(f"architecture.model.heads: unknown target(s) {sorted(unknown)}; only 'energy' is trained")
        self.head = readout_head(heads.get("energy", "mlp"), d)
        self.last_layer = nn.Linear(d, 1, bias=False)

        self.register_buffer("energy_scale", torch.tensor(1.0))
        self.register_buffer("composition_weights", torch.zeros(len(self.atomic_types)))
        self.zbl = ZBL(self.atomic_types) if hypers.get("zbl") else None
        if self.zbl is not None and self.zbl.max_cutoff > self.cutoff:
            raise InputError(
                f"architecture.model.zbl needs cutoff >= {self.zbl.max_cutoff:.2f} A (the largest covalent-radius "
                f"pair of {self.atomic_types}); got cutoff {self.cutoff}"
            )

    @property
    def interaction_range(self) -> float:
        return len(self.gnn) * self.cutoff

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        if int(numbers.max()) >= len(self.species_index) or bool((self.species_index[numbers] < 0).any()):
            unknown = sorted(set(numbers.tolist()) - set(self.atomic_types))
            raise InputError(f"atomic number(s) {unknown} unknown to this model (trained on {self.atomic_types})")
        return self.species_index[numbers]

    # 2.3-2.10: per-atom energies of the network (and ZBL) from positions and cells
    def atomic_energies(self, positions, cells, batch: Batch, double_backward: bool = False):
        species = self.species(batch.numbers)  # (N,)
        # 2.3 edge vectors recomputed from positions (keeps the force/stress gradient path)
        edge_cells = cells[batch.structure_index[batch.centers]]  # (E, 3, 3)
        vectors = positions[batch.neighbors] - positions[batch.centers] + torch.einsum("ei,eij->ej", batch.shifts, edge_cells)
        return self.edge_energies(vectors, species, batch.centers, batch.neighbors, batch.edge_slot, batch.edge_reverse,
                                  batch.slot_groups, double_backward)

    @torch.jit.export
    def edge_energies(self, vectors: torch.Tensor, species: torch.Tensor, centers: torch.Tensor, neighbors: torch.Tensor,
                      edge_slot: torch.Tensor, edge_reverse: torch.Tensor, slot_groups: List[Tuple[int, int]],
                      double_backward: bool = False) -> torch.Tensor:
        """Per-atom energies (N,) from the full directed edge list: ``vectors`` (E, 3), ``species`` (N,) indices
        0..S-1, edge ``centers``/``neighbors`` (E,), ``edge_slot``/``edge_reverse`` and ``slot_groups`` as in
        ``Batch``. The one path of both the trainer's batches and the exported model (nanopet/export.py).
        Each edge's reverse carries the negated vector (a full list is a half list and its reversal, in both),
        which lets the encoder run its first two layers on one edge of each pair (``Encoder``)."""
        n_atoms = species.shape[0]
        distances = torch.linalg.vector_norm(vectors, dim=-1)  # (E,)
        center_species, neighbor_species = species[centers], species[neighbors]  # (E,)

        energies = torch.zeros(n_atoms, dtype=vectors.dtype, device=vectors.device)
        if self.zbl is not None and len(distances) > 0:
            zbl = self.zbl(distances, center_species, neighbor_species)
            energies = energies.index_add(0, centers, zbl)
        if len(slot_groups) == 0:  # no edges anywhere: every atom is isolated, network energy 0
            return energies + 0.0 * self.last_layer.weight.sum()  # (kept on the autograd graph)

        # 2.5 cutoff weights per edge; 2.4 NEF layouts for attention: log-weights, -69 in padding slots
        slots = Slots(edge_slot, slot_groups, self.num_heads)
        cutoff_weights = cutoff_function(distances, self.cutoff, self.cutoff_width)  # (E,)
        log_cutoff = torch.log(place_rows(cutoff_weights, edge_slot, slots.rows).clamp_min(1e-30))  # (rows,)

        # 2.6 encoder; 2.7-2.8 transformer blocks with reverse-edge messages in between:
        # F_0 = gnn[0](tokens), F_k = (F_{k-1} + gnn[k](message_k(F_{k-1}))) / sqrt(2)
        features = self.encoder(vectors, center_species, neighbor_species, edge_reverse)  # (E, d) tokens
        d, no_padding = features.shape[-1], edge_reverse.new_empty(0)
        message_weights = [message.weight for message in self.messages]
        for k, transformer in enumerate(self.gnn):
            if k == 0:
                features = transformer(features, slots, log_cutoff, double_backward)
            else:
                # message(cat[F_ij, F_ji]) = F_ij W_1^T + F_ji W_2^T, F_ji gathered through the reverse-edge index
                w_self, w_reverse = message_weights[k - 1].split(d, dim=1)
                reverse = pick_rows(features @ w_reverse.T, edge_reverse, no_padding)  # every edge has a reverse
                messages = torch.addmm(reverse, features, w_self.T)  # (E, d)
                features = transformer(messages, slots, log_cutoff, double_backward).add_(features).mul_(0.5**0.5)

        # 2.9 per-atom features: cutoff-weighted sum over the centre's edges; 2.10 readout
        weighted = features * cutoff_weights[:, None]  # (E, d)
        atom_features = weighted.new_zeros(n_atoms, d).index_add(0, centers, weighted)  # (N, d)
        network = self.last_layer(self.head(atom_features)).squeeze(-1) * self.energy_scale  # (N,)
        return energies + network

    def composition_energy(self, batch: Batch) -> torch.Tensor:
        """Per-structure composition baseline sum_i w[species_i], (B,)."""
        per_atom = self.composition_weights[self.species(batch.numbers)]
        return torch.zeros(batch.num_structures, dtype=per_atom.dtype, device=per_atom.device).index_add(
            0, batch.structure_index, per_atom
        )

    # 2.12 energies, forces and stress by automatic differentiation
    @torch.jit.unused
    def forward(self, batch: Batch, forces: bool = True, stress: bool = False, create_graph: bool = False,
                with_composition: bool = True) -> dict:
        """Returns {"energy": (B,), "forces": (N, 3), "stress": (B, 3, 3)} as requested.

        ``create_graph=True`` keeps the graph of the forces for training on them (double backward).
        ``with_composition=False`` leaves out the composition baseline (the trainer subtracts it
        from the targets instead, in float64).
        """
        positions, cells = batch.positions, batch.cells
        inputs = []
        if forces:
            positions = positions.detach().requires_grad_(True)
            inputs.append(positions)
        if stress:
            strain = torch.eye(3, dtype=cells.dtype, device=cells.device).repeat(batch.num_structures, 1, 1)
            strain.requires_grad_(True)
            inputs.append(strain)
            positions = torch.einsum("ni,nij->nj", positions, strain[batch.structure_index])
            cells = cells @ strain

        with torch.enable_grad() if inputs else contextlib.nullcontext():
            per_atom = self.atomic_energies(positions, cells, batch, double_backward=create_graph and bool(inputs))
            energy = torch.zeros(batch.num_structures, dtype=per_atom.dtype, device=per_atom.device)
            energy = energy.index_add(0, batch.structure_index, per_atom)
            results = {"energy": energy}
            if inputs:
                # materialize_grads: a structure without edges has an energy independent of positions
                grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True,
                                            materialize_grads=True)
                if forces:
                    results["forces"] = -grads[0]
                if stress:
                    strain_gradient = grads[-1]  # dE/d(strain), (B, 3, 3)
                    volume = torch.det(batch.cells).abs().clamp_min(1e-12)
                    results["stress"] = 0.5 * (strain_gradient + strain_gradient.transpose(1, 2)) / volume[:, None, None]
        if with_composition:
            results["energy"] = results["energy"] + self.composition_energy(batch).to(energy.dtype)
        if not create_graph:
            results = {key: value.detach() for key, value in results.items()}
        return results

    # Checkpoints hold plain data and tensors only, so torch.load(weights_only=True) reads them.
    def init_kwargs(self) -> dict:
        return {"hypers": self.hypers, "atomic_types": self.atomic_types}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def composition_features(numbers_per_structure, atomic_types) -> np.ndarray:
    """Species counts per structure, (n_structures, S): the design matrix of the composition fit."""
    index = {t: k for k, t in enumerate(atomic_types)}
    counts = np.zeros((len(numbers_per_structure), len(atomic_types)))
    for row, numbers in enumerate(numbers_per_structure):
        for z, c in zip(*np.unique(numbers, return_counts=True)):
            counts[row, index[int(z)]] = c
    return counts
