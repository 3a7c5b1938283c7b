"""Kronecker mixer: Q = I - c g (K1 (x) K2) with d = m1 * m2 and, per factor n,
K_n = diag(sigmoid(W_n p + b_n)) S_n / ||S_n||_F,  S_n = P_n P_n^T,  P_n = upper_triangular(act(W'_n p)).
||K_n|| <= 1 since the Frobenius norm bounds the spectral one. No Triton kernel implements it (PyTorch path).
"""

from __future__ import annotations

import math

import torch

from .base import Activation, MixerFactors, MixerKind


def kronecker_dims(d: int) -> tuple[int, int]:
    """Factor d = m1 * m2 with m1 the largest divisor not above sqrt(d)."""
    m1 = max(k for k in range(1, math.isqrt(d) + 1) if d % k == 0)
    return m1, d // m1


def _psd_factor(raw: torch.Tensor, gate: torch.Tensor, act: Activation) -> torch.Tensor:
    P = torch.triu(act(raw))
    S = P @ P.transpose(-1, -2)
    S = S / (S.flatten(-2).norm(dim=-1)[..., None, None] + 1e-6)
    return torch.sigmoid(gate)[..., :, None] * S


class Kronecker(MixerKind):
    name = "kronecker"

    @staticmethod
    def split_sizes(d: int, rank: int) -> list[int]:
        m1, m2 = kronecker_dims(d)
        return [m1 * m1, m2 * m2, m1, m2]  # P_1, P_2, then the gates of K_1 and K_2

    @staticmethod
    def gate_chunks(d: int, rank: int) -> int:
        return 2

    @staticmethod
    def factors(pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int, rank: int) -> MixerFactors:
        m1, m2 = kronecker_dims(d)
        lead = pre.shape[:-1]
        p1, p2, g1, g2 = pre.split(Kronecker.split_sizes(d, rank), dim=-1)
        k1 = _psd_factor(p1.reshape(*lead, m1, m1), g1, act)
        k2 = _psd_factor(p2.reshape(*lead, m2, m2), g2, act)
        return MixerFactors("kronecker", k1=k1, k2=k2, coef=strength.expand(lead))

    @staticmethod
    def apply(factors: MixerFactors, v: torch.Tensor) -> torch.Tensor:
        m1, m2 = factors.k1.shape[-1], factors.k2.shape[-1]
        V = v.reshape(*v.shape[:-1], m1, m2)
        # (K1 (x) K2) vec(V) = vec(K1 V K2^T) for row-major vec.
        KV = factors.k1 @ V @ factors.k2.transpose(-1, -2)
        return v - factors.coef[..., None] * KV.reshape(v.shape)
