"""The "none" mixer: Q = I, no parameters. The diagonal ablation; with zero y-projections the layer is Mamba-2's."""

from __future__ import annotations

import torch

from .base import Activation, MixerFactors, MixerKind


class Identity(MixerKind):
    name = "none"
    kernel_code = 0
    kernel_ops = frozenset({"fused_iteration", "decode"})

    @staticmethod
    def split_sizes(d: int, rank: int) -> list[int]:
        return []

    @staticmethod
    def gate_chunks(d: int, rank: int) -> int:
        return 0

    @staticmethod
    def factors(pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int, rank: int) -> MixerFactors:
        return MixerFactors("none")

    @staticmethod
    def apply(factors: MixerFactors, v: torch.Tensor) -> torch.Tensor:
        return v
