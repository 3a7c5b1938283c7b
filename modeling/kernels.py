"""Which backend runs an op: one public function per op, the backend chosen at call time from the tensors' device.

The ops themselves (`modeling/ops/`: Triton kernels and their PyTorch references) decide nothing; this module does.
`FPMAMBA_KERNELS=triton|reference` forces a path (triton on CPU tensors only works under TRITON_INTERPRET=1);
unset, CUDA tensors take the Triton kernels when triton is installed (one warning and the PyTorch reference when it
is not) and everything else the PyTorch reference. Which mixer kinds a kernel implements is the mixer registry's
answer (`mixers.kernel_supports`); a kind no kernel implements runs the reference, never a kernel that raises.

Self-check (`kernel_selfcheck.py`): the first use of the fused iteration or the decode kernel in a configuration
(device, dtypes, mixer kind, dimensions and kernel switches) runs the kernel once on a small seeded random problem
against the PyTorch path. If they disagree beyond tolerance (1e-3 relative; 2e-2 with TF32 matmuls), or the kernel
raises, one `KernelSelfCheckWarning` names the op, device, dtype, mixer kind and the measured error, and that
configuration runs the PyTorch path from then on (`fused_iteration_supported` is False, `decode_step` runs
`decode_steps.ssd_decode_step`). The verdict is cached per configuration. `FPMAMBA_KERNEL_SELFCHECK=0` skips the
check (the kernels are trusted). The dispatch is decided here, the verdicts are kept in `kernel_selfcheck`.

`decode_step_kernel` and `fused_iteration` are the two kernels in the core's terms (a mixer's factors and kind, the
solver's result types and its non-finite check): the kernels take plain tensors and codes and return tuples."""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import cache
from typing import TYPE_CHECKING

import torch

from .decode_steps import ssd_decode_step
from .fixed_point import DecodeResult, MapOutput, SolverSettings, check_finite
from .kernel_selfcheck import KernelSelfCheckWarning, decode_step_ok, fused_iteration_ok
from .mixers import MixerFactors, RankOneFactors, kernel_supports, mixer_kind
from .ops._triton_utils import kernel_chunk_len
from .ops.diagonal_scan_reference import diag_scan_chunked
from .ops.selective_scan_reference import selective_scan_chunked
from .ops.ssd_scan_reference import ScanDecay, ssd_scan_chunked

if TYPE_CHECKING:
    from .ops.fused_iteration_triton import FusedIterationInputs

_BACKENDS = ("triton", "reference")


@cache
def triton_available() -> bool:
    """Whether triton is installed (checked once per process)."""
    return importlib.util.find_spec("triton") is not None


def backend_for(t: torch.Tensor) -> str:
    """The backend an op on tensor `t` runs with."""
    forced = os.environ.get("FPMAMBA_KERNELS", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"FPMAMBA_KERNELS must be one of {_BACKENDS}, got {forced!r}")
        if forced == "triton" and not triton_available():
            raise ValueError("FPMAMBA_KERNELS=triton, but triton is not installed (pip install fpmamba-hf[triton])")
        return forced
    if not t.is_cuda:
        return "reference"
    if not triton_available():
        _warn_no_triton()
        return "reference"
    return "triton"


@cache
def _warn_no_triton() -> None:
    warnings.warn("fpmamba-hf: CUDA tensors but triton is not installed: every op runs the PyTorch path (correct, "
                  "slower). Install it with `pip install fpmamba-hf[triton]`.", RuntimeWarning, stacklevel=3)


def diag_scan(
    lam: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order diagonal scan h_t = lam_t * h_{t-1} + u_t (the vector FP-RNN's). See `diagonal_scan_reference`
    for shapes;
    returns (h fp32, final_state fp32). The Triton backend runs `diagonal_scan_triton` (fp64 stays on the chunked
    PyTorch form); `chunk_size` is a block length only, which the kernel takes in 16, 32, 64 or 128 (another value
    is refused, as for `ssd_scan`)."""
    if backend_for(u) == "triton" and u.dtype != torch.float64 and lam.dtype != torch.float64:
        kernel_chunk_len(chunk_size)  # an unsupported chunk is refused, not replaced
        from .ops.diagonal_scan_triton import diag_scan_triton

        return diag_scan_triton(lam, u, initial_state, mask, chunk_size)
    return diag_scan_chunked(lam, u, initial_state, mask, chunk_size)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = 64,
    decay: ScanDecay | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan. See `ssd_scan_reference.ssd_scan_chunked` for shapes; returns (y fp32, final_state fp32).
    `decay`: the dt-only part precomputed by the caller (`ssd_scan_reference.ssd_scan_decay`); the kernel computes
    its own."""
    if backend_for(x) == "triton" and x.dtype != torch.float64:  # fp64 (gradient checks) stays exact
        kernel_chunk_len(chunk_size)  # an unsupported chunk is refused, not replaced
        from .ops.ssd_scan_triton import ssd_scan_triton

        return ssd_scan_triton(x, dt, A, B, C, D, initial_state, mask, chunk_size)
    return ssd_scan_chunked(x, dt, A, B, C, D, initial_state, mask, chunk_size, decay)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan. See `selective_scan_reference.selective_scan_chunked` for shapes; returns (y fp32,
    final_state fp32). `chunk_size` is a block length only (default: the reference's ceil(sqrt(T)), the kernel's
    64 tokens between the states it stores for the backward)."""
    if backend_for(x) == "triton" and x.dtype != torch.float64:  # fp64 (gradient checks) stays exact
        from .ops.selective_scan_triton import selective_scan_triton

        return selective_scan_triton(x, dt, A, B, C, D, initial_state, mask, chunk_size or 64)
    return selective_scan_chunked(x, dt, A, B, C, D, initial_state, mask, chunk_size)


def decode_step(
    x: torch.Tensor,
    z: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    state: torch.Tensor,
    factors: MixerFactors,
    norm_weight: torch.Tensor,
    norm_eps: float,
    norm_group_size: int,
    settings: SolverSettings,
    layer_idx: int | None = None,
) -> DecodeResult:
    """One Mamba-2 decode token of every row: inner fixed-point loop + state update. See
    `decode_steps.ssd_decode_step`.

    The Triton kernel covers the mixer kinds that list "decode" in their kernel_ops, in fp32, with the Picard
    solver; other kinds, fp64, fp_solver="anderson", fp_decode_solver="newton" and a configuration whose kernel
    failed its self-check run the reference."""
    args = (x, z, dt, A, B, C, D, state, factors, norm_weight, norm_eps, norm_group_size, settings, layer_idx)
    # The kernel's inner loop takes the damped Picard step only. Any other step runs the reference, whose
    # `fixed_point.solve` implements them all: Anderson mixing, and Newton's step, which needs the map's Jacobian
    # (autograd's forward mode through the PyTorch map), something a kernel that iterates in registers does not have.
    if (backend_for(x) == "triton" and kernel_supports(factors.kind, "decode") and x.dtype != torch.float64
            and settings.solver == "picard" and decode_step_ok(*args[:12])):
        return decode_step_kernel(*args)
    return ssd_decode_step(*args)


def decode_step_kernel(
    x: torch.Tensor,
    z: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    state: torch.Tensor,
    factors: MixerFactors,
    norm_weight: torch.Tensor,
    norm_eps: float,
    norm_group_size: int,
    settings: SolverSettings,
    layer_idx: int | None = None,
) -> DecodeResult:
    """`decode_step` on the Triton kernel (`decode_triton.decode_step_triton`), unconditionally: same arguments and
    result as `decode_steps.ssd_decode_step`, for a mixer kind whose kernel_ops list "decode" (else ValueError)."""
    from .ops.decode_triton import decode_step_triton

    if not kernel_supports(factors.kind, "decode"):
        raise ValueError(f"decode kernel: mixer kind {factors.kind!r} is not supported (use the reference)")
    u, coef = (factors.u, factors.coef) if isinstance(factors, RankOneFactors) else (None, None)
    out = DecodeResult(*decode_step_triton(x, z, dt, A, B, C, D, state, mixer_kind(factors.kind).kernel_code, u,
                                           coef, norm_weight, norm_eps, norm_group_size, settings))
    # No silent NaN (one host sync, unless the caller checks the outputs itself): a non-finite iterate shows up in
    # the residual or the output.
    if settings.raise_non_finite and not bool(torch.isfinite(out.residual).all() & torch.isfinite(out.y_out).all()):
        check_finite(torch.stack([out.residual.sum(), out.y_out.sum()]), layer_idx, int(out.iterations.max()))
    return out


def fused_iteration_supported(x: torch.Tensor, mixer_kind: str, inputs: FusedIterationInputs | None = None) -> bool:
    """Whether the no-autograd iterations of a layer call on tensor `x` run `fused_iteration`: the Triton
    backend, fp32 (fp64 gradient checks stay exact) and a mixer kind the kernels implement; given the call's
    `inputs`, also a chunk_size the kernels take (else ValueError) and that the kernels passed their self-check in
    this configuration (run on first use)."""
    if not (backend_for(x) == "triton" and x.dtype == torch.float32
            and kernel_supports(mixer_kind, "fused_iteration")):
        return False
    if inputs is None:
        return True
    kernel_chunk_len(inputs.chunk_size)
    return fused_iteration_ok(inputs)


def fused_iteration(inputs: FusedIterationInputs, y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
    """One fixed-point iteration of the rows `rows` (LongTensor (r,)) from their iterate y (r, T, d) on the fused
    Triton kernels (`fused_iteration_triton.fused_iteration`), for a mixer kind whose kernel_ops list
    "fused_iteration" (else ValueError): MapOutput(yhat (r, T, d), (final scan state (r, h, p, n),), residual (r,)),
    all fp32, the residual being `fixed_point.relative_residual(yhat, y)` (NaN for a row holding a non-finite
    value)."""
    from .ops.fused_iteration_triton import fused_iteration as run

    if not kernel_supports(inputs.mixer_kind, "fused_iteration"):
        raise ValueError(f"fused iteration: mixer kind {inputs.mixer_kind!r} is not supported")
    yhat, final_state, residual = run(inputs, y, rows, mixer_kind(inputs.mixer_kind).kernel_code)
    return MapOutput(yhat, (final_state,), residual)


__all__ = ["KernelSelfCheckWarning", "backend_for", "decode_step", "decode_step_kernel", "diag_scan",
           "fused_iteration", "fused_iteration_supported", "selective_scan", "ssd_scan", "triton_available"]
