"""Kernels that check themselves: the first use of a Triton kernel configuration is compared with the PyTorch path.

The fused fixed-point iteration and the decode kernel are chosen by default on CUDA. Before the first call of a
configuration (a *key*) the kernel runs once on a small seeded random problem built here (not the caller's tensors;
same device, same dtypes and dimensions, so the same compiled kernel variants: b = 3 rows, a few tokens) next to
the PyTorch path it replaces:
  * `fused_iteration`: one iteration on all rows and on a strict subset, against `composed_fused_iteration` (the
    layer's composed map written from the same `FusedIterationInputs`); compared: yhat, the scan's final state and
    the per-row residual;
  * `decode_step`: one token to the cap (tol 0, damping 0.9 with patience 2), against
    `decode_steps.ssd_decode_step`;
    compared: y_out, y*, the new state and the residual, and the per-row iteration counts exactly.
Error = max over the compared tensors of max|kernel - reference| / max(max|reference|, 1e-6) (the residuals, already
relative, on the scale max(max|reference|, 1)). The check passes when the
kernel returns finite values within TOLERANCE (1e-3; TOLERANCE_TF32 = 2e-2 where fp32 dots run in TF32, i.e.
`torch.get_float32_matmul_precision() != "highest"`). A larger error or an exception from the kernel fails it: one
`KernelSelfCheckWarning` names the op, device, dtypes, mixer kind and the measured error, and from then on that key
takes the PyTorch path (`kernels.fused_iteration_supported(...)` is False: the layer iterates its composed map;
`kernels.decode_step` runs `decode_steps.ssd_decode_step`). Verdicts are cached per key for the process
(thread-safe: one check per key, other threads wait for it); `verdicts()` lists them.

Keys: the op, the device, the dtypes of every tensor the kernel reads, the mixer kind and rank, the dimensions
(width, heads, head size, groups, state size, norm group size, chunk) and the kernel switches (activation, whether
the mixer and dt read the iterate, B/C norm, dt clamp, padding mask, initial state, the fp32 matmul precision).
A model whose layers share a configuration checks each op once per call variant (with or without mask / state).

`FPMAMBA_KERNEL_SELFCHECK=0` (or false/no/off) skips the check: the kernels are trusted and nothing is cached.
While a CUDA graph is being captured or torch.compile traces, an unchecked key is not checked (a check synchronises
with the host) and takes the kernel: warm up once before capturing.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .decode_steps import ssd_decode_step
from .fixed_point import MapOutput, SolverSettings, relative_residual
from .mixers import ACTIVATIONS, MixerFactors, RankOneFactors, apply_mixer, mixer_kind
from .ops._triton_utils import kernel_chunk_len
from .ops.readout_reference import gated_rms_norm
from .ops.ssd_scan_reference import ssd_scan_chunked
from .precision import acc

if TYPE_CHECKING:
    from .ops.fused_iteration_triton import FusedIterationInputs

ENV = "FPMAMBA_KERNEL_SELFCHECK"
TOLERANCE = 1e-3
TOLERANCE_TF32 = 2e-2
CHECK_ROWS = 3
SEED = 20250314


class KernelSelfCheckWarning(RuntimeWarning):
    """A Triton kernel disagreed with the PyTorch path on its first-use check (or raised): that configuration now
    runs the PyTorch path."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one key's check: ok, the measured error (inf when the kernel raised or returned a
    non-finite value), the tolerance it was held to, and what decided it (the worst quantity, or the exception)."""

    ok: bool
    error: float
    tolerance: float
    detail: str


_lock = threading.RLock()
_verdicts: dict[tuple, Verdict] = {}


def enabled() -> bool:
    """Whether first-use checks run (`FPMAMBA_KERNEL_SELFCHECK`, default on)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def verdicts() -> dict[tuple, Verdict]:
    """A copy of the cached verdicts by key."""
    with _lock:
        return dict(_verdicts)


def reset() -> None:
    """Forgets every verdict (tests; a process that changed its kernels)."""
    with _lock:
        _verdicts.clear()


def tolerance() -> float:
    return TOLERANCE if torch.get_float32_matmul_precision() == "highest" else TOLERANCE_TF32


def _unattended(device: torch.device) -> bool:
    """A check cannot run here: torch.compile is tracing, or a CUDA graph is being captured on this device."""
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _judge(key: tuple, describe: Callable[[], str], check: Callable[[], Verdict]) -> bool:
    """The verdict of `key`, running `check` once on first use (see the module docstring)."""
    if not enabled():
        return True
    verdict = _verdicts.get(key)
    if verdict is not None:
        return verdict.ok
    device = key[1]
    if _unattended(device):
        return True
    with _lock:
        verdict = _verdicts.get(key)
        if verdict is None:
            try:
                with torch.no_grad(), torch.autocast(device.type, enabled=False):
                    verdict = check()
            except Exception as e:  # noqa: BLE001 -- the kernel raised (or failed to compile): not trusted
                verdict = Verdict(False, math.inf, tolerance(), f"the kernel raised {type(e).__name__}: {e}")
            _verdicts[key] = verdict
            if not verdict.ok:
                warnings.warn(
                    f"fpmamba kernel self-check failed: {describe()}: max relative error {verdict.error:.3g} "
                    f"(tolerance {verdict.tolerance:g}; {verdict.detail}). This configuration now runs the "
                    f"PyTorch path (correct, slower). Set {ENV}=0 to skip the check.",
                    KernelSelfCheckWarning, stacklevel=4,
                )
    return verdict.ok


def _error(got: torch.Tensor, ref: torch.Tensor, floor: float = 1e-6) -> float:
    """max|got - ref| / max(max|ref|, floor); inf for a shape mismatch or a non-finite value."""
    if got.shape != ref.shape:
        return math.inf
    if got.numel() == 0:
        return 0.0
    got, ref = got.double(), ref.double()
    if not bool(torch.isfinite(got).all()):
        return math.inf
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(floor))


def _compare(pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> Verdict:
    """Residuals are relative quantities already: they are compared on the scale max(max|ref|, 1), so one at the
    rounding floor (a row run to the cap) is not held to a relative bound on its own rounding noise."""
    tol = tolerance()
    errors = [(_error(got, ref, 1.0 if name.startswith("residual") else 1e-6), name) for name, got, ref in pairs]
    err, worst = max(errors, key=lambda e: e[0])
    return Verdict(err <= tol, err, tol, f"worst: {worst}")


class _Random:
    """Seeded values on the CPU (the same problem on every device), then moved to the problem's device."""

    def __init__(self, device: torch.device) -> None:
        self.gen = torch.Generator().manual_seed(SEED)
        self.device = device

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0, shift: float = 0.0):
        return (torch.randn(*shape, generator=self.gen) * scale + shift).to(self.device, dtype)

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float32, lo: float = 0.0, hi: float = 1.0):
        return (torch.rand(*shape, generator=self.gen) * (hi - lo) + lo).to(self.device, dtype)


# --------------------------------------------------------------------------------------------- fused iteration
def composed_fused_iteration(inp: FusedIterationInputs, y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
    """One iteration of the rows `rows` from `inp` in plain PyTorch: the Mamba-2 backbone's composed map
    (`Mamba2Map`) written from the fused inputs, with the y-projections as one GEMM like the kernels. Same returns as
    `kernels.fused_iteration`: MapOutput(yhat (r, T, d), (final state (r, h, p, n),), residual (r,))."""
    r, T, d = y.shape
    y = acc(y)
    g, n = inp.Bx.shape[2], inp.Bx.shape[3]
    nh, p, R = inp.dt_raw.shape[-1], inp.head_dim, inp.mixer_rank
    W = inp.weight_y
    G = acc(F.linear(y.reshape(r * T, d).to(W.dtype), W)).view(r, T, -1)
    Gs = torch.cat([acc(inp.g0[rows])[:, None], G[:, :-1]], dim=1)  # projections of y_{t-1}
    spec = mixer_kind(inp.mixer_kind)
    width = sum(spec.split_sizes(d, R))  # the mixer's rows of weight_y come first when it reads y
    off = width if inp.mixer_reads_y else 0
    pre = Gs.new_zeros(r, T, 0) if inp.x_part is None else acc(inp.x_part[rows])
    if width and inp.mixer_reads_y:
        pre = pre + Gs[..., :width]
    factors = spec.factors(pre, acc(inp.strength), ACTIVATIONS[inp.mixer_activation], d, R)
    xt = y + apply_mixer(factors, acc(inp.x[rows]) - y)
    gn = g * n
    B = acc(inp.Bx[rows]) + Gs[..., off: off + gn].reshape(r, T, g, n)
    C = acc(inp.Cx[rows]) + Gs[..., off + gn: off + 2 * gn].reshape(r, T, g, n)
    if inp.bc_norm:
        B, C = F.normalize(B, dim=-1, eps=1e-6), F.normalize(C, dim=-1, eps=1e-6)
    pre_dt = acc(inp.dt_raw[rows])
    if inp.dt_reads_y:
        pre_dt = pre_dt + Gs[..., off + 2 * gn: off + 2 * gn + nh]
    dt = F.softplus(pre_dt + acc(inp.dt_bias))
    lo, hi = inp.dt_limit
    if lo > 0.0 or hi != float("inf"):
        dt = dt.clamp(lo, hi)
    mask = None if inp.mask is None else inp.mask[rows]
    s, H = ssd_scan_chunked(xt.view(r, T, nh, p), dt, inp.A, B, C, inp.D,
                                      None if inp.H0 is None else inp.H0[rows], mask, inp.chunk_size)
    yhat = gated_rms_norm(s.reshape(r, T, d), inp.z[rows], inp.norm_weight, inp.norm_eps,
                                    inp.norm_group_size)
    if mask is not None:
        yhat = yhat * mask.to(yhat.dtype)[:, :, None]
    return MapOutput(yhat, (H,), relative_residual(yhat, y, inp.residual_eps))


def _fused_key(inp: FusedIterationInputs) -> tuple:
    lo, hi = inp.dt_limit
    tensors = (inp.x, inp.x_part, inp.Bx, inp.Cx, inp.dt_raw, inp.z, inp.y_prev0, inp.H0, inp.weight_y, inp.A,
               inp.D, inp.dt_bias, inp.strength, inp.norm_weight)
    return (
        "fused_iteration", inp.x.device, inp.mixer_kind, tuple(None if t is None else t.dtype for t in tensors),
        inp.mixer_rank, inp.mixer_activation, inp.mixer_reads_y, inp.dt_reads_y, inp.bc_norm,
        lo > 0.0 or hi != float("inf"), inp.mask is not None, inp.H0 is not None,
        inp.x.shape[-1], inp.Bx.shape[2], inp.Bx.shape[3], inp.dt_raw.shape[-1], inp.head_dim, inp.norm_group_size,
        inp.chunk_size, torch.get_float32_matmul_precision(),
    )


def fused_problem(inp: FusedIterationInputs) -> tuple[FusedIterationInputs, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The check's problem for `inp`'s key: seeded inputs of the same device, dtypes, dimensions and switches (b = 3,
    T = one kernel chunk + 5; x, B, C and z, dt_raw strided views of wider tensors as in the layer; left padding in
    row 1 when masked), and the calls [(y, rows)]: all rows, then rows 0 and 2."""
    from .ops.fused_iteration_triton import FusedIterationInputs

    rnd = _Random(inp.x.device)
    b, T = CHECK_ROWS, kernel_chunk_len(inp.chunk_size) + 5
    d, g, n, nh, R = inp.x.shape[-1], inp.Bx.shape[2], inp.Bx.shape[3], inp.dt_raw.shape[-1], inp.mixer_rank
    gn = g * n
    xBC = rnd.normal(b, T, d + 2 * gn, dtype=inp.x.dtype)
    x, Bx, Cx = xBC.split([d, gn, gn], dim=-1)
    Bx, Cx = Bx.to(inp.Bx.dtype).view(b, T, g, n), Cx.to(inp.Cx.dtype).view(b, T, g, n)
    zdt = rnd.normal(b, T, d + nh, dtype=inp.z.dtype)
    zdt[..., d:] *= 0.5
    z, dt_raw = zdt.split([d, nh], dim=-1)
    dt_raw = dt_raw.to(inp.dt_raw.dtype)
    x_part = None if inp.x_part is None else rnd.normal(b, T, R * d + R, dtype=inp.x_part.dtype)
    k = inp.weight_y.shape[0]
    mask = None
    if inp.mask is not None:
        mask = torch.ones(b, T, dtype=torch.bool, device=inp.x.device)
        mask[1, : T // 3] = False
    prob = FusedIterationInputs(
        x=x, x_part=x_part, Bx=Bx, Cx=Cx, dt_raw=dt_raw, z=z,
        y_prev0=rnd.normal(b, d, dtype=inp.y_prev0.dtype),
        H0=None if inp.H0 is None else rnd.normal(b, nh, inp.head_dim, n, dtype=inp.H0.dtype, scale=0.3),
        mask=mask, weight_y=rnd.normal(k, d, dtype=inp.weight_y.dtype, scale=0.5 / math.sqrt(d)),
        A=-torch.exp(rnd.uniform(nh, dtype=inp.A.dtype, hi=1.5)), D=rnd.normal(nh, dtype=inp.D.dtype),
        dt_bias=rnd.normal(nh, dtype=inp.dt_bias.dtype, scale=0.5, shift=-1.5),
        strength=torch.tensor(1.5, device=inp.x.device, dtype=inp.strength.dtype),
        norm_weight=rnd.uniform(d, dtype=inp.norm_weight.dtype, lo=0.5, hi=1.5), norm_eps=inp.norm_eps,
        norm_group_size=inp.norm_group_size, mixer_kind=inp.mixer_kind, mixer_rank=R,
        mixer_activation=inp.mixer_activation, mixer_reads_y=inp.mixer_reads_y, dt_reads_y=inp.dt_reads_y,
        bc_norm=inp.bc_norm, dt_limit=inp.dt_limit, chunk_size=inp.chunk_size, head_dim=inp.head_dim,
        residual_eps=inp.residual_eps,
    )
    dev = inp.x.device
    calls = [(rnd.normal(b, T, d), torch.arange(b, device=dev)),
             (rnd.normal(2, T, d), torch.tensor([0, b - 1], device=dev))]
    return prob, calls


def _check_fused(inp: FusedIterationInputs) -> Verdict:
    from .kernels import fused_iteration  # looked up per check: the kernels' entry point, as the layers call it

    prob, calls = fused_problem(inp)
    pairs = []
    for y, rows in calls:
        got, ref = fused_iteration(prob, y, rows), composed_fused_iteration(prob, y, rows)
        where = f"rows {rows.tolist()}"
        pairs += [(f"yhat ({where})", got.yhat, ref.yhat), (f"final state ({where})", got.aux[0], ref.aux[0]),
                  (f"residual ({where})", got.residual, ref.residual)]
    return _compare(pairs)


def fused_iteration_ok(inp: FusedIterationInputs) -> bool:
    """Whether `fused_iteration` may serve the layer call `inp` (its key's check passed, or checks are off)."""
    key = _fused_key(inp)

    def describe() -> str:
        return (f"op fused_iteration on {inp.x.device}, dtype {inp.x.dtype} (parameters {inp.weight_y.dtype}), "
                f"mixer {inp.mixer_kind} (rank {inp.mixer_rank}, d {inp.x.shape[-1]}, mask {inp.mask is not None}, "
                f"initial state {inp.H0 is not None})")

    return _judge(key, describe, lambda: _check_fused(inp))


# ------------------------------------------------------------------------------------------------------ decode
def _decode_key(x, z, dt, A, B, C, D, state, factors: MixerFactors, norm_weight, norm_group_size) -> tuple:
    factor_tensors = [t for f in fields(factors) if isinstance(t := getattr(factors, f.name), torch.Tensor)]
    tensors = (x, z, dt, A, B, C, D, state, *factor_tensors, norm_weight)
    return (
        "decode_step", x.device, factors.kind, tuple(t.dtype for t in tensors),
        tuple(tuple(t.shape[1:]) for t in factor_tensors), tuple(x.shape[1:]), tuple(B.shape[1:]), norm_group_size,
    )


def decode_problem(x, z, dt, A, B, C, D, state, factors: MixerFactors, norm_weight, norm_eps: float,
                   norm_group_size: int) -> tuple:
    """The check's arguments of `decode_step` for this key: seeded values of the same device, dtypes and dimensions
    (b = 3, row 0 without mixing), solver settings with tol 0 (every row to the cap of 8 evaluations), damping 0.9
    and patience 2."""
    rnd = _Random(x.device)
    b = CHECK_ROWS
    _, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    d = h * p
    if isinstance(factors, RankOneFactors):  # the kernels' kinds with factors: rank-one terms
        r = factors.u.shape[-2]
        u = F.normalize(rnd.normal(b, r, d), dim=-1).to(factors.u.dtype)
        coef = rnd.uniform(b, r, dtype=factors.coef.dtype)
        coef[0] = 0
        fac = RankOneFactors(factors.kind, u=u, coef=coef)
    else:
        fac = MixerFactors(factors.kind)
    settings = SolverSettings(max_iter=8, tol=0.0, damping=0.9, damping_decay=0.9, damping_patience=2,
                              train_quantile=1.0, solver="picard", anderson_m=1, decode_solver="picard")
    return (
        rnd.normal(b, h, p, dtype=x.dtype), rnd.normal(b, d, dtype=z.dtype),
        F.softplus(rnd.normal(b, h, shift=-1.0)).to(dt.dtype), -rnd.uniform(h, dtype=A.dtype, lo=0.2, hi=2.2),
        F.normalize(rnd.normal(b, g, n), dim=-1).to(B.dtype), F.normalize(rnd.normal(b, g, n), dim=-1).to(C.dtype),
        rnd.normal(h, dtype=D.dtype), rnd.normal(b, h, p, n, dtype=state.dtype, scale=0.5), fac,
        rnd.uniform(d, dtype=norm_weight.dtype, lo=0.5, hi=1.5), norm_eps, norm_group_size, settings,
    )


def _check_decode(args: tuple) -> Verdict:
    from .kernels import decode_step_kernel  # looked up per check: the kernels' entry point, as the layers call it

    out = decode_step_kernel(*args)
    ref = ssd_decode_step(*args)
    if not torch.equal(out.iterations.to(ref.iterations.dtype), ref.iterations):
        return Verdict(False, math.inf, tolerance(),
                       f"iteration counts {out.iterations.tolist()} != reference {ref.iterations.tolist()}")
    return _compare([("y_out", out.y_out, ref.y_out), ("y*", out.y_star, ref.y_star),
                     ("new state", out.state, ref.state), ("residual", out.residual, ref.residual)])


def decode_step_ok(x, z, dt, A, B, C, D, state, factors: MixerFactors, norm_weight, norm_eps: float,
                   norm_group_size: int) -> bool:
    """Whether `kernels.decode_step_kernel` may serve this call (its key's check passed, or checks are off)."""
    key = _decode_key(x, z, dt, A, B, C, D, state, factors, norm_weight, norm_group_size)

    def describe() -> str:
        return (f"op decode_step on {x.device}, dtype {x.dtype} (norm weight {norm_weight.dtype}), "
                f"mixer {factors.kind} (heads {x.shape[1]} x {x.shape[2]}, state {B.shape[-1]})")

    def check() -> Verdict:
        return _check_decode(decode_problem(x, z, dt, A, B, C, D, state, factors, norm_weight, norm_eps,
                                            norm_group_size))

    return _judge(key, describe, check)
