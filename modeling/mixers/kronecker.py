"""Kronecker mixer: Q = I - c g (K1 (x) K2) with d = m1 * m2 and, per factor n,
K_n = diag(sigmoid(W_n p + b_n)) S_n / N(S_n),  S_n = P_n P_n^T,  P_n = upper_triangular(act(W'_n p)).
The normalisation N (the kind's option kron_norm, config field mixer_kron_norm; `Kronecker.configured`) bounds
the spectral norm, so ||K_n|| <= 1:
  "frobenius": N(S) = ||S||_F, so ||S / N|| = lambda_max / ||S||_F, between 1 / sqrt(m) and 1;
  "spectral":  N(S) = an upper bound of S's top eigenvalue by the power method on the matrix (the paper's spectral
               normalisation, made a guaranteed bound: see `top_eigenvalue_bound`), so ||S / N|| is near 1.
No Triton kernel implements it (PyTorch path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Activation, MixerFactors, MixerKind


def kronecker_dims(d: int) -> tuple[int, int]:
    """Factor d = m1 * m2 with m1 the largest divisor not above sqrt(d)."""
    m1 = max(k for k in range(1, math.isqrt(d) + 1) if d % k == 0)
    return m1, d // m1


KRONECKER_NORMS = ("frobenius", "spectral")  # config field mixer_kron_norm
SPECTRAL_SQUARINGS = 6  # bound / top eigenvalue <= m^(1/128) for an m x m factor; in practice much nearer 1


def top_eigenvalue_bound(S: torch.Tensor, squarings: int = SPECTRAL_SQUARINGS) -> torch.Tensor:
    """An upper bound (...,) of the top eigenvalue of the PSD matrices S (..., m, m): ||S^(2^k)||_F^(2^-k), k =
    `squarings`. The power method on the matrix rather than on one vector, whose Rayleigh quotient approaches the
    top eigenvalue from below and so can leave ||S / estimate|| above 1. Here sum_i lambda_i^(2^(k+1)) >=
    lambda_max^(2^(k+1)) makes it a bound, and the small eigenvalues' share vanishes with each squaring (at most a
    factor m^(2^-(k+1)) above lambda_max). Each square is renormalised, so nothing overflows; differentiable."""
    norm = S.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(S.dtype).tiny)
    A = S / norm[..., None, None]
    log_bound = torch.log(norm)
    for j in range(1, squarings + 1):
        A = A @ A
        # ||A^2||_F >= lambda_max(A)^2 >= 1 / m for a PSD A of unit norm: no underflow unless S = 0.
        n = A.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(S.dtype).tiny)
        A = A / n[..., None, None]
        log_bound = log_bound + torch.log(n) / 2**j
    return torch.exp(log_bound)


def _psd_factor(raw: torch.Tensor, gate: torch.Tensor, act: Activation, norm: str) -> torch.Tensor:
    P = torch.triu(act(raw))
    S = P @ P.transpose(-1, -2)
    scale = S.flatten(-2).norm(dim=-1) if norm == "frobenius" else top_eigenvalue_bound(S)
    S = S / (scale[..., None, None] + 1e-6)
    return torch.sigmoid(gate)[..., :, None] * S


@dataclass
class KroneckerFactors(MixerFactors):
    """k1 (..., m1, m1), k2 (..., m2, m2): the gated, normalised factors; coef (...,) = c * g."""

    k1: torch.Tensor
    k2: torch.Tensor
    coef: torch.Tensor


class Kronecker(MixerKind):
    name = "kronecker"
    options = ("kron_norm",)  # config field mixer_kron_norm
    norm: ClassVar[str] = "frobenius"  # the normalisation of S_n (KRONECKER_NORMS), set by `configured`

    @classmethod
    def configured(cls, kron_norm: str) -> type[MixerKind]:
        """Kronecker with the normalisation `kron_norm` (one of KRONECKER_NORMS)."""
        if kron_norm not in KRONECKER_NORMS:
            raise ValueError(f"unknown Kronecker normalisation {kron_norm!r}; choose one of {KRONECKER_NORMS}")
        return KroneckerSpectral if kron_norm == "spectral" else Kronecker

    @staticmethod
    def split_sizes(d: int, rank: int) -> list[int]:
        m1, m2 = kronecker_dims(d)
        return [m1 * m1, m2 * m2, m1, m2]  # P_1, P_2, then the gates of K_1 and K_2

    @staticmethod
    def gate_chunks(d: int, rank: int) -> int:
        return 2

    @classmethod
    def factors(cls, pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int,
                rank: int) -> KroneckerFactors:
        m1, m2 = kronecker_dims(d)
        lead = pre.shape[:-1]
        p1, p2, g1, g2 = pre.split(Kronecker.split_sizes(d, rank), dim=-1)
        k1 = _psd_factor(p1.reshape(*lead, m1, m1), g1, act, cls.norm)
        k2 = _psd_factor(p2.reshape(*lead, m2, m2), g2, act, cls.norm)
        return KroneckerFactors("kronecker", k1=k1, k2=k2, coef=strength.expand(lead))

    @staticmethod
    def apply(factors: KroneckerFactors, v: torch.Tensor) -> torch.Tensor:
        m1, m2 = factors.k1.shape[-1], factors.k2.shape[-1]
        V = v.reshape(*v.shape[:-1], m1, m2)
        # (K1 (x) K2) vec(V) = vec(K1 V K2^T) for row-major vec.
        KV = factors.k1 @ V @ factors.k2.transpose(-1, -2)
        return v - factors.coef[..., None] * KV.reshape(v.shape)


class KroneckerSpectral(Kronecker):
    """Kronecker with the spectral normalisation (mixer_kron_norm="spectral"); same name, layout and application,
    so its factors apply through the registry's "kronecker" entry."""

    norm = "spectral"
