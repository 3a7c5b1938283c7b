"""Small helpers shared by the Triton kernels (interpreter detection, block sizes, dot precision, mixer codes)."""

from __future__ import annotations

import os

import torch

# The mixers the kernels implement, by their MIX constexpr (a mixer kind's `kernel_code`): none, householder
# (Q = H_1 ... H_R, H_R applied first), dplr (Q = I - sum_i coef_i u_i u_i^T).
MIXER_CODES = (0, 1, 2)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pow2_at_least(n: int, floor: int = 16) -> int:
    """The smallest power of two >= max(n, floor): tl.dot needs every dimension >= 16."""
    v = floor
    while v < n:
        v *= 2
    return v


def dot_precision(t: torch.Tensor) -> str:
    """tl.dot precision (operands are fp32 values inside the kernels): tf32 for half-precision inputs, whose own
    rounding dominates; for fp32 inputs it follows torch's switch for fp32 matmuls,
    `torch.set_float32_matmul_precision`: "highest" (torch's default) -> exact fp32 ("ieee"), else tf32."""
    if t.dtype != torch.float32:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


KERNEL_CHUNK_SIZES = (16, 32, 64, 128)


def kernel_chunk_len(chunk_size: int) -> int:
    """The scan kernels' chunk (a block size): the config's chunk_size, which must be a power of two in [16, 128].
    Another value is refused rather than replaced, so the config's chunk_size is the one that runs."""
    if chunk_size not in KERNEL_CHUNK_SIZES:
        raise ValueError(f"chunk_size={chunk_size!r} is not supported by the Triton scan kernels (one of "
                         f"{KERNEL_CHUNK_SIZES}); set config.chunk_size to one of them (the PyTorch path takes any)")
    return chunk_size
