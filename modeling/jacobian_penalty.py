"""The Jacobian penalty of training: a Hutchinson estimate of ||J_f(y*)||_F^2, with J_f = df/dy at the fixed point.

The implicit-model literature's Jacobian regularisation (Bai, Koltun and Kolter 2021: "Stabilizing Equilibrium Models
by Jacobian Regularization"): the fixed-point iteration contracts at the rate of J_f's spectrum, which the Frobenius
norm bounds from above, so a training loss that keeps ||J_f||_F small keeps the map contractive and the iteration
counts low. With v ~ N(0, I), E ||v^T J||^2 = ||J||_F^2, so one vector-Jacobian product (taken with create_graph,
so the penalty itself is differentiated) gives an unbiased estimate. y* is treated as a constant (the penalty
shapes the map around the point the solver found, as in the paper above), so the penalty's gradient flows into the
parameters through the map alone.
"""

from __future__ import annotations

from typing import Callable

import torch

from .precision import acc


def jacobian_penalty(f: Callable[[torch.Tensor], torch.Tensor], y_star: torch.Tensor,
                     v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One application of f at y* and the penalty there.

    f: y (b, ...) -> f(y) (b, ...), differentiable in y and in the parameters; y_star (b, ...) the fixed point
    (detached here); v (b, ...) the probe, drawn from N(0, I) when None. Returns (f(y*) (b, ...), penalty (b,) in
    fp32, fp64 in an fp64 model): per row ||v^T J_f(y*)||^2 / n with n the elements of one row, an unbiased
    estimate of ||J_f||_F^2 / n, the mean squared singular value (f is row-wise: row b's sees only its own block).
    The returned f(y*) is the ordinary differentiable application (its gradient in the parameters is the one-step
    gradient), so a caller needs no second evaluation."""
    y = y_star.detach().requires_grad_(True)
    with torch.enable_grad():
        out = f(y)
        probe = torch.randn_like(out) if v is None else v
        (vjp,) = torch.autograd.grad(out, y, probe, create_graph=True)
    per_row = acc(vjp).pow(2).flatten(1).sum(1) / vjp[0].numel()
    return out, per_row
