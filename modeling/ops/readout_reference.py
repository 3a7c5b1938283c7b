"""Pure-PyTorch reference of the in-loop readouts of a scan's output (yhat = readout(s)): Mamba-2's gated RMSNorm (its
normalisation `rms_normalize` is also the residual stream's RMSNorm) and Mamba-1's gate and LayerNorm. The spec of
the readout the fused and decode kernels compute inside, and the path of every other device. All accumulation is fp32
(fp64 stays fp64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import acc


def rms_normalize(v: torch.Tensor, eps: float) -> torch.Tensor:
    """v * rsqrt(mean(v^2) + eps) over the last dim, in v's dtype (fp32 or fp64), for every finite v: the mean of
    squares is taken in fp64, where the square of any finite fp32 value fits (in fp32, a row of magnitude 1e30 would
    square to inf and normalise to 0). Two casts more than the plain formula, no data-dependent branch: a norm runs
    at every layer of every decoded token."""
    ms = v.to(torch.float64).pow(2).mean(-1, keepdim=True)
    return v * torch.rsqrt(ms + eps).to(v.dtype)


def gated_rms_norm(
    s: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int
) -> torch.Tensor:
    """Mamba-2's gated RMSNorm: RMSNorm(s * SiLU(z)) over groups of `group_size` channels, fp32 result.

    s, z: (..., d) ; weight: (d,).
    """
    v = acc(s) * F.silu(acc(z))
    shape = v.shape
    v = v.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    return acc(weight) * rms_normalize(v, eps).reshape(shape)


def mamba1_readout(
    s: torch.Tensor,
    gate: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """FP-Mamba1's in-loop readout of the scan output s (..., d): s * gate (the in-loop gate SiLU(z), when given),
    then LayerNorm over d with norm_weight and norm_bias (d,) when norm_weight is given (else no norm). fp32."""
    v = acc(s) if gate is None else acc(s) * acc(gate)
    if norm_weight is None:
        return v
    bias = None if norm_bias is None else acc(norm_bias)
    return F.layer_norm(v, v.shape[-1:], acc(norm_weight), bias, eps)
