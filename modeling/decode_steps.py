"""The PyTorch decode steps: one token of every row, the inner fixed-point solve on y_t, then one state update
(docs/method.md, "Token-by-token decoding"). The executable spec of the decode kernel (`ops/decode_triton.py`, for
Mamba-2) and the path of every other configuration. They run the solver (`fixed_point.solve`, any step: Picard,
Anderson, Newton) on a per-token map, so they live beside it, not among the ops.
"""

from __future__ import annotations

import torch

from .fixed_point import DecodeResult, MapOutput, SolverSettings, solve
from .mixers import MixerFactors, apply_mixer
from .ops.readout_reference import gated_rms_norm, mamba1_readout
from .precision import acc


def ssd_decode_step(
    x: torch.Tensor,
    z: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    state: torch.Tensor,
    factors: MixerFactors,
    norm_weight: torch.Tensor,
    norm_eps: float,
    norm_group_size: int,
    settings: SolverSettings,
    layer_idx: int | None = None,
) -> DecodeResult:
    """Mamba-2: one token of every row, the inner fixed-point loop on y_t, then one state update
    (docs/method.md, "Token-by-token decoding").

    x (b, h, p) conv'ed input; z (b, d) gate; dt (b, h); B, C (b, g, n) final (normalised) B_t, C_t;
    state (b, h, p, n) fp32 H_{t-1}; factors: Q_t of each row (fixed within the token).
    Everything that depends on y_{t-1} is fixed, so with a = C . (exp(dt A) H_{t-1}) and g = dt (C . B) + D
    each iteration is   x~ = y + Q (x - y);  yhat = RMSNorm((a + g x~) * SiLU(z)).
    Returns a DecodeResult (new state (b, h, p, n)).
    """

    b, h, p = x.shape
    groups, n = B.shape[1], B.shape[2]
    d, hg = h * p, h // groups
    x = acc(x).reshape(b, d)
    dt = acc(dt)
    Bg, Cg = acc(B)[:, :, None, :], acc(C)[:, :, None, :]  # (b, g, 1, n): a group's B_t, C_t serve its hg heads
    decayed = torch.exp(dt * acc(A))[:, :, None, None] * acc(state)  # (b, h, p, n)
    a = (decayed.view(b, groups, hg * p, n) @ Cg.transpose(-1, -2)).view(b, d)
    g = (dt.view(b, groups, hg) * (Cg * Bg).sum(-1) + acc(D).view(groups, hg)).view(b, h, 1).expand(b, h, p)
    g = g.reshape(b, d)

    def f(y: torch.Tensor, rows: torch.Tensor):
        pick = (lambda t: t) if rows.numel() == b else (lambda t: t[rows])  # every row: no gather
        xt = y + apply_mixer(factors.select(rows), pick(x) - y)
        return MapOutput(gated_rms_norm(pick(a) + pick(g) * xt, pick(z), norm_weight, norm_eps, norm_group_size), (xt,))

    res = solve(f, x.new_zeros(b, d), settings, training=False, layer_idx=layer_idx)
    (xt,) = res.aux
    inputs = (dt[:, :, None] * xt.view(b, h, p)).view(b, groups, hg, p, 1)
    new_state = decayed + (inputs * Bg[:, :, None]).view(b, h, p, n)
    return DecodeResult(res.y_out, res.y_star, new_state, res.iterations, res.residual)


def selective_decode_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    state: torch.Tensor,
    factors: MixerFactors,
    gate: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    norm_eps: float,
    settings: SolverSettings,
    layer_idx: int | None = None,
) -> DecodeResult:
    """One token of every row for the Mamba-1 backbone: the inner fixed-point loop on y_t, then one state update.

    x (b, d) conv'ed input; dt (b, d); B, C (b, n) final B_t, C_t; state (b, d, n) fp32 H_{t-1}; factors: Q_t of
    each row; gate (b, d) | None: SiLU(z_t) when the gate is inside the loop; norm_*: see `mamba1_readout`.
    Everything that depends on y_{t-1} is fixed, so with a = C . (exp(dt A) * H_{t-1}) and g = dt (C . B) + D
    each iteration is   x~ = y + Q (x - y);  yhat = readout(a + g x~).
    Returns a DecodeResult (new state (b, d, n)).
    """

    x, dt, B, C = acc(x), acc(dt), acc(B), acc(C)
    decayed = torch.exp(dt[..., None] * acc(A)) * acc(state)  # (b, d, n)
    a = torch.einsum("bdn,bn->bd", decayed, C)
    g = dt * (B * C).sum(-1, keepdim=True) + acc(D)

    def f(y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        xt = y + apply_mixer(factors.select(rows), x[rows] - y)
        gate_rows = None if gate is None else gate[rows]
        return MapOutput(mamba1_readout(a[rows] + g[rows] * xt, gate_rows, norm_weight, norm_bias, norm_eps), (xt,))

    res = solve(f, torch.zeros_like(x), settings, training=False, layer_idx=layer_idx)
    (xt,) = res.aux
    new_state = decayed + (dt * xt)[..., None] * B[:, None, :]
    return DecodeResult(res.y_out, res.y_star, new_state, res.iterations, res.residual)
