"""Hand-written autograd kernels for force training: twice-differentiable activations and LayerNorm,
and row moves between the packed edge layout and the padded attention layout.

Force training differentiates the model twice; autograd's generic double backward of these few
operations dominates its cost, so each has a closed-form derivative here. Each is the same function,
with the same derivatives, as its plain-torch counterpart (tests/test_model.py checks both).

Under ``torch.jit.script`` (the exported model, nanopet/export.py) each public function here is its
plain-torch counterpart instead: custom ``autograd.Function``s cannot be scripted, and an engine
differentiates the energy once, which torch's own derivatives do.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------
# Activations with a cheap second derivative. Force training differentiates every activation
# twice; autograd's generic double backward of SiLU/GELU costs dozens of elementwise passes over
# (E, 4d) tensors, these closed forms a handful. Same functions, same derivatives.

_aten = torch.ops.aten


@contextlib.contextmanager
def _native_gelu():
    """aten's own GELU kernels: on CPU torch hands large GELUs to oneDNN, which caches a compiled
    primitive per tensor shape; packed edge tokens have a new shape every batch, and that cache grew
    resident memory by ~150 MB an epoch (measured at cutoff 4.5, batch 16)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def _derivative(kind, grad, x):
    """grad * f'(x)."""
    if kind == "silu":
        return _aten.silu_backward(grad, x)
    with _native_gelu():
        return _aten.gelu_backward(grad, x)


class _ActivationGrad(torch.autograd.Function):
    """g * f'(x), differentiable once more: d/dg = f'(x), d/dx = g * f''(x)."""

    @staticmethod
    def forward(ctx, grad, x, kind):
        ctx.save_for_backward(grad, x)
        ctx.kind = kind
        return _derivative(kind, grad, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, outer):
        grad, x = ctx.saved_tensors
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad = _derivative(ctx.kind, outer, x)
        if ctx.needs_input_grad[1]:
            # few passes over the (rows, 4d) tensors, and in place where the tensor is our own
            if ctx.kind == "silu":  # f'' = s(1-s)(2 + x(1-2s)), s = sigmoid(x)
                s = torch.sigmoid(x)
                second = (x * s).mul_(-2.0).add_(x).add_(2.0)  # 2 + x(1-2s)
                second.mul_(s).mul_(s.neg_().add_(1.0))
            else:  # f'' = phi(x)(2 - x^2), phi the standard normal density
                square = x * x
                second = square.mul(-((2 * math.pi) ** -0.5)).add_(2 * (2 * math.pi) ** -0.5)  # (2 - x^2) / sqrt(2 pi)
                second.mul_(square.mul_(-0.5).exp_())
            d_x = second.mul_(outer).mul_(grad)
        return d_grad, d_x, None


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind):
        ctx.save_for_backward(x)
        ctx.kind = kind
        if kind == "silu":
            return F.silu(x)
        with _native_gelu():
            return F.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _ActivationGrad.apply(grad, x, ctx.kind), None


@torch.jit.unused
def _activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    return _Activation.apply(x, kind)


class SiLU(nn.Module):
    """SiLU; ``inplace=True`` (for an input nothing else reads, e.g. a linear layer's output) overwrites the input
    under ``torch.jit.script``: TorchScript's autodiff then keeps aten's one-pass SiLU backward instead of its own
    five passes over the tensor (sigmoid, 1 - s, x(1 - s), 1 + ..., products), about 8% of an exported model's MD
    step. Eager (training) is out of place either way."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.silu(x, inplace=self.inplace)
        return _activation(x, "silu")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU."""
    if torch.jit.is_scripting():
        return F.gelu(x)
    return _activation(x, "gelu")


# ---------------------------------------------------------------------------------------------
# LayerNorm with a hand-written second derivative (force training differentiates it twice). Forward
# and first backward are torch's fused kernels. Same function, same derivatives.


class _LayerNormGrad(torch.autograd.Function):
    """(dx, dw, db) of y = w * xhat + b, xhat = (x - mean) * rstd row-wise, given dy = g."""

    @staticmethod
    def forward(ctx, g, x, weight, mean, rstd):
        ctx.save_for_backward(g, x, weight, mean, rstd)
        ctx.set_materialize_grads(False)
        # the kernel reads its bias argument only for db's shape and type: the weight stands in for it
        return _aten.native_layer_norm_backward(g, x, [x.shape[-1]], mean, rstd, weight, weight, [True, True, True])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v, v_w, v_b):
        # dx = rstd * P(g w), P(z) = z - mean(z) - xhat mean(z xhat) (symmetric); dw = sum_rows g xhat; db = sum_rows g.
        # v, v_w, v_b: the loss's gradients with respect to dx, dw, db (None where they do not reach it)
        g, x, weight, mean, rstd = ctx.saved_tensors
        xhat = (x - mean).mul_(rstd)

        def project(z):  # P(z), row-wise
            return torch.addcmul(z - z.mean(-1, keepdim=True), xhat, (z * xhat).mean(-1, keepdim=True), value=-1.0)

        d_g = d_x = d_w = None
        if v is not None:
            p_v = project(v)
            r_pv = p_v * rstd  # d loss / d(g w)
            d_g = r_pv * weight
            d_w = (g * r_pv).sum(0)
            if ctx.needs_input_grad[1]:
                # through rstd and xhat (d xhat / dx = rstd P, d rstd / dx = -rstd^2 xhat / D), collected into
                # dx = -rstd^2 (b gw + a P(v) + (s - a b) xhat - b mean(gw)) with per-row a, b, s:
                gw = g * weight
                mean_gw = gw.mean(-1, keepdim=True)
                a, b = (gw * xhat).mean(-1, keepdim=True), (v * xhat).mean(-1, keepdim=True)
                s = (v * gw).mean(-1, keepdim=True) - v.mean(-1, keepdim=True) * mean_gw - a * b
                d_x = torch.addcmul(gw.mul_(b), p_v, a).addcmul_(xhat, s - a * b).sub_(b * mean_gw).mul_(rstd.square().neg_())
        if v_w is not None:  # through dw = sum_rows g xhat
            d_g = xhat * v_w if d_g is None else d_g.add_(xhat * v_w)
            if ctx.needs_input_grad[1]:
                extra = project(g * v_w).mul_(rstd)
                d_x = extra if d_x is None else d_x.add_(extra)
        if v_b is not None:
            d_g = v_b.expand_as(g).clone() if d_g is None else d_g.add_(v_b)
        return d_g, d_x, d_w, None, None


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = _aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _LayerNormGrad.apply(grad, x, weight, mean, rstd)
        return dx, dw, db, None


@torch.jit.unused
def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return _LayerNorm.apply(x, weight, bias, eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """F.layer_norm over the last dimension, with the hand-written second derivative."""
    if torch.jit.is_scripting():
        return F.layer_norm(x, [x.shape[-1]], weight, bias, eps)
    return _layer_norm(x, weight, bias, eps)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension (same parameters and state_dict), twice differentiable by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


# ---------------------------------------------------------------------------------------------
# Moving rows between the packed (E, ...) layout and a zero-padded one. The rows are distinct, so
# placing and picking are each other's adjoints and stay plain copies at every order of
# differentiation; autograd's own backward of index_select is an accumulating index_add (2.5x slower
# than a copy here), and that of x[index] an accumulating index_put (3.5x).


class _Place(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rows, size, padding):
        ctx.save_for_backward(rows, padding)
        if padding is None:
            return x.new_zeros(size, *x.shape[1:]).index_copy_(0, rows, x)
        return x.new_empty(size, *x.shape[1:]).index_copy_(0, rows, x).index_fill_(0, padding, 0)

    @staticmethod
    def backward(ctx, grad):
        rows, padding = ctx.saved_tensors
        return pick_rows(grad, rows, padding), None, None, None


class _Pick(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rows, padding):
        ctx.save_for_backward(rows, padding)
        ctx.size = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        rows, padding = ctx.saved_tensors
        return place_rows(grad, rows, ctx.size, padding), None, None


@torch.jit.unused
def _place(x: torch.Tensor, rows: torch.Tensor, size: int, padding: Optional[torch.Tensor]) -> torch.Tensor:
    return _Place.apply(x, rows, size, padding)


@torch.jit.unused
def _pick(x: torch.Tensor, rows: torch.Tensor, padding: Optional[torch.Tensor]) -> torch.Tensor:
    return _Pick.apply(x, rows, padding)


def place_rows(x: torch.Tensor, rows: torch.Tensor, size: int, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out = zeros(size, ...) with out[rows] = x; ``rows`` must be distinct. ``padding``, where known, is every
    other row of out: then only those are zeroed, and the layout is written once, not twice."""
    if torch.jit.is_scripting():  # in place on a new tensor: out-of-place index_copy would copy it first
        return x.new_zeros([size] + x.shape[1:]).index_copy_(0, rows, x)
    return _place(x, rows, size, padding)


def pick_rows(x: torch.Tensor, rows: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x[rows] for distinct ``rows``; ``padding``: the rows of x not in ``rows``, where known (for the backward)."""
    if torch.jit.is_scripting():
        return x.index_select(0, rows)
    return _pick(x, rows, padding)


def unused_rows(rows: torch.Tensor, size: int) -> torch.Tensor:
    """The rows of range(size) not in ``rows``."""
    free = torch.ones(size, dtype=torch.bool, device=rows.device)
    free[rows] = False
    return free.nonzero().squeeze(1)
