"""Norms used inside the fixed-point map; `rms_normalize` is every RMSNorm's normalisation (large finite inputs
included)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .ops.readout_reference import gated_rms_norm, rms_normalize

__all__ = ["GatedRMSNorm", "rms_normalize"]


class GatedRMSNorm(nn.Module):
    """RMSNorm(s * SiLU(z)) per group of channels; parameter `weight` as in Mamba-2."""

    def __init__(self, d: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size = group_size
        self.variance_epsilon = eps

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(s, z, self.weight, self.variance_epsilon, self.group_size)
