"""The accumulation precision shared by every op: fp32 state and sums, fp64 kept for exact gradient checks."""

from __future__ import annotations

import torch


def acc(t: torch.Tensor) -> torch.Tensor:
    """Accumulation precision: fp32, except that fp64 stays fp64 (exact gradient checks)."""
    return t if t.dtype == torch.float64 else t.float()
