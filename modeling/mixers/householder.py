"""Householder mixer: Q = prod_i (I - c g alpha_i u_i u_i^T), u_i = l2norm(act(W_u p)), alpha_i = sigmoid(w_i p + b_i).

With c = 2 and alpha = g = 1 each factor is a reflection (eigenvalue -1), which is what lets FP-Mamba track
non-abelian state; c = 1 (the paper's parametrisation) keeps every factor's eigenvalues in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Activation, MixerFactors, MixerKind


@dataclass
class RankOneFactors(MixerFactors):
    """Rank-one terms: u (..., r, d) unit directions, coef (..., r) = c * g * alpha (householder and dplr)."""

    u: torch.Tensor
    coef: torch.Tensor


def rank_one_factors(kind: str, pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int,
                     rank: int) -> RankOneFactors:
    """The rank-one terms of `kind` from proj(p_t) (..., r d + r): directions l2norm(act(.)), gates sigmoid(.)."""
    u_raw, a_raw = pre.split([rank * d, rank], dim=-1)
    u = F.normalize(act(u_raw.reshape(*pre.shape[:-1], rank, d)), dim=-1, eps=1e-6)
    return RankOneFactors(kind, u=u, coef=strength * torch.sigmoid(a_raw))


class Householder(MixerKind):
    name = "householder"
    kernel_code = 1
    kernel_ops = frozenset({"fused_iteration", "decode"})

    @staticmethod
    def split_sizes(d: int, rank: int) -> list[int]:
        return [rank * d, rank]  # directions u_1..u_r, then the gates alpha_1..alpha_r

    @staticmethod
    def gate_chunks(d: int, rank: int) -> int:
        return 1

    @staticmethod
    def factors(pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int, rank: int) -> RankOneFactors:
        return rank_one_factors("householder", pre, strength, act, d, rank)

    @staticmethod
    def apply(factors: RankOneFactors, v: torch.Tensor) -> torch.Tensor:
        # Q = H_1 ... H_r: apply H_r first.
        for i in reversed(range(factors.u.shape[-2])):
            u = factors.u[..., i, :]
            v = v - (factors.coef[..., i] * (u * v).sum(-1))[..., None] * u
        return v
