"""Pure-PyTorch reference of the in-loop readouts of a scan's output (yhat = readout(s)): Mamba-2's gated RMSNorm (its
normalisation `rms_normalize` is also the residual stream's RMSNorm) and Mamba-1's gate and LayerNorm. The spec of
the readout the fused and decode kernels compute inside, and the path of every other device. All accumulation is fp32
(fp64 stays fp64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import acc


def rms_normalize(v: torch.Tensor, eps: float) -> torch.Tensor:
    """v * rsqrt(mean(v^2) + eps) over the last dim, in v's dtype (fp32 or fp64), for every finite v: a row whose
    squares could overflow (largest magnitude above max^(1/4) of the dtype, e.g. 1e30 in fp32, whose square is inf
    and would normalise the row to 0) is first scaled by a power of two that brings it below 1, and eps with it by
    its square. The scaling is exact, so every other row gets the plain formula's bits."""
    big = v.abs().amax(-1, keepdim=True)
    _, exponent = torch.frexp(big)  # big = m * 2^exponent, m in [0.5, 1)
    exponent = torch.where(big > torch.finfo(v.dtype).max ** 0.25, exponent, torch.zeros_like(exponent))
    scale = torch.ldexp(torch.ones_like(big), -exponent)
    v = v * scale
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps * scale.square())


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
