"""Diagonal-plus-low-rank mixer: Q = I - c g sum_i alpha_i u_i u_i^T (same factors as Householder, summed)."""

from __future__ import annotations

import torch

from .base import Activation, MixerFactors, MixerKind
from .householder import Householder


class DPLR(MixerKind):
    name = "dplr"
    kernel_code = 2
    kernel_ops = frozenset({"fused_iteration", "decode"})
    split_sizes = Householder.split_sizes
    gate_chunks = Householder.gate_chunks

    @staticmethod
    def factors(pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int, rank: int) -> MixerFactors:
        f = Householder.factors(pre, strength, act, d, rank)
        return MixerFactors("dplr", u=f.u, coef=f.coef)

    @staticmethod
    def apply(factors: MixerFactors, v: torch.Tensor) -> torch.Tensor:
        proj = torch.einsum("...rd,...d->...r", factors.u, v) * factors.coef
        return v - torch.einsum("...r,...rd->...d", proj, factors.u)
