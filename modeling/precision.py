"""The accumulation precision shared by every op: fp32 state and sums, fp64 kept for exact gradient checks."""

from __future__ import annotations

import torch


def acc(t: torch.Tensor) -> torch.Tensor:
    """Accumulation precision: fp32, except that fp64 stays fp64 (exact gradient checks)."""
    return t if t.dtype == torch.float64 else t.float()


def largest_magnitude(t: torch.Tensor) -> torch.Tensor:
    """max |t| as a 0-dim tensor in the accumulation precision (no host sync; 0 for an empty t). It is NaN when any
    value is NaN and inf when any is infinite, so its finiteness is t's: one reduction (a single aten op), about 10x
    cheaper on the CPU than `torch.isfinite(t).all()`, which builds a bool tensor the size of t."""
    if t.numel() == 0:
        return torch.zeros((), dtype=acc(t).dtype, device=t.device)
    return torch.linalg.vector_norm(t.detach(), float("inf"), dtype=acc(t).dtype)


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """Whether every value of t is finite, as a 0-dim bool tensor (no host sync)."""
    return torch.isfinite(largest_magnitude(t))
