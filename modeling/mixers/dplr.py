"""Diagonal-plus-low-rank mixer: Q = I - c g sum_i alpha_i u_i u_i^T (same factors as Householder, summed)."""

from __future__ import annotations

import torch

from .base import Activation, MixerKind
from .householder import Householder, RankOneFactors, rank_one_factors


class DPLR(MixerKind):
    name = "dplr"
    kernel_code = 2
    kernel_ops = frozenset({"fused_iteration", "decode"})
    split_sizes = Householder.split_sizes
    gate_chunks = Householder.gate_chunks

    @staticmethod
    def factors(pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int, rank: int) -> RankOneFactors:
        return rank_one_factors("dplr", pre, strength, act, d, rank)

    @staticmethod
    def apply(factors: RankOneFactors, v: torch.Tensor) -> torch.Tensor:
        proj = torch.einsum("...rd,...d->...r", factors.u, v) * factors.coef
        return v - torch.einsum("...r,...rd->...d", proj, factors.u)
