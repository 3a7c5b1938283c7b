"""The fused fixed-point iteration of a whole sequence (inference-mode iterations of `Mamba2Layer`).

One iteration y -> yhat (docs/method.md, "The iteration map") as four launches instead of some thirty:
  1. one GEMM (cuBLAS): every y-projection at once, G = y @ [W_mixer_y; W_bc_y; W_dt_y]^T, on the UNshifted
     iterate; token t reads row t-1 of G (row t = 0 reads G0 = y*_{t-1} of the previous call @ W^T), so the
     shifted copy of y is never built;
  2. `_mix_kernel` (one program per token): the mixer's factors (activation, l2norm, sigmoid gates), the
     Householder / DPLR application x~ = y + Q (x - y), B and C (x-part + y-part, l2norm per group) and dt
     (softplus, clamp);
  3. the chunked scan (`ssd_scan_triton`);
  4. `_norm_kernel` (one program per token): the gated RMSNorm, the padding mask, and the token's relative
     residual ||yhat - y||_inf / (||yhat||_inf + eps), NaN if the token holds a non-finite value.
The solver then takes the max over tokens (its per-row stopping rule) and does the damping step.

Rows: the solver evaluates only the rows still iterating. The per-call tensors (x, z, B/C/dt inputs, the
mixer's x-part, the mask) are indexed by the row list inside the kernels, so freezing rows copies nothing.

This is the no-autograd path: the differentiable application of the map (one_step / implicit backward,
checkpoint recompute) is the layer's composed PyTorch code, which is also the reference these kernels are
tested against. Mixers: by kernel code (MIXER_CODES: none, householder, dplr); `kernels.fused_iteration` calls
these kernels for the kinds that list "fused_iteration" in their kernel_ops (modeling/mixers), the others stay on
the composed path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

try:  # the kernels need triton (a CUDA build of torch on Linux brings it; else `pip install fpmamba-hf[triton]`)
    import triton
    import triton.language as tl
except ImportError as err:  # never reached through `kernels`, which imports a kernel only with triton installed
    raise ImportError(f"fpmamba-hf's Triton kernels need triton: {err}") from err

from ._triton_utils import MIXER_CODES, pow2_at_least
from .ssd_scan_triton import ssd_scan_triton

ACT_CODES = {"silu": 0, "identity": 1, "tanh": 2, "relu": 3}


@triton.jit
def _activation(v, ACT: tl.constexpr):
    if ACT == 0:
        v = v / (1.0 + tl.exp(-v))
    if ACT == 2:
        v = 2.0 / (1.0 + tl.exp(-2.0 * v)) - 1.0
    if ACT == 3:
        v = tl.maximum(v, 0.0)
    return v


@triton.jit
def _softplus(v):
    # softplus(v) = max(v, 0) + log1p(exp(-|v|)); log1p(e) = log(1 + e) * e / ((1 + e) - 1) keeps its relative
    # accuracy for small e (no libdevice under the interpreter rules); torch's threshold 20 returns v itself.
    e = tl.exp(-tl.abs(v))
    one_e = 1.0 + e
    lp = tl.where(one_e == 1.0, e, tl.log(one_e) * e / (one_e - 1.0))
    return tl.where(v > 20.0, v, tl.maximum(v, 0.0) + lp)


@triton.jit
def _mix_kernel(
    rows_ptr, y_ptr, g_ptr, g0_ptr, x_ptr, xp_ptr, bx_ptr, cx_ptr, dtr_ptr, dt_bias_ptr, strength_ptr,
    xt_ptr, b_ptr, c_ptr, dt_ptr,
    T, d, K, G, N, NH, OFF_BC, OFF_DT,
    s_xb, s_xt, s_pb, s_pt, s_bb, s_bt, s_cb, s_ct, s_db, s_dt,
    u_eps, bc_eps, dt_lo, dt_hi,
    MIX: tl.constexpr, R: tl.constexpr, ACT: tl.constexpr, HAS_MIX_Y: tl.constexpr, HAS_DT_Y: tl.constexpr,
    BC_NORM: tl.constexpr, CLAMP_DT: tl.constexpr,
    BD: tl.constexpr, BG: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # token of an active row: pid = i * T + t
    i = pid // T
    t = pid % T
    row = tl.load(rows_ptr + i)  # the row's index in the full batch
    first = t == 0
    # Row t-1 of G (the projections of y_{t-1}); G0 for t = 0. Both loads are masked, one is empty.
    g_prev = g_ptr + (pid - 1 + first.to(tl.int64)) * K
    g_first = g0_ptr + row * K
    cols = tl.arange(0, BD)
    cm = cols < d
    # Block masks for "t > 0" / "t == 0" are built from broadcast offsets (a scalar bool & a block of bools is
    # rejected by the interpreter).
    later_d = cm & ((cols * 0 + t) > 0)
    first_d = cm & ((cols * 0 + t) == 0)
    y = tl.load(y_ptr + pid * d + cols, mask=cm, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * s_xb + t * s_xt + cols, mask=cm, other=0.0).to(tl.float32)
    v = x - y
    if MIX != 0:
        strength = tl.load(strength_ptr).to(tl.float32)
        xp = xp_ptr + row * s_pb + t * s_pt
        corr = tl.zeros((BD,), dtype=tl.float32)
        for ii in tl.static_range(R):
            k = R - 1 - ii  # householder applies H_R first; dplr sums all terms, order irrelevant
            u = tl.load(xp + k * d + cols, mask=cm, other=0.0).to(tl.float32)
            a = tl.load(xp + R * d + k).to(tl.float32)
            if HAS_MIX_Y:
                u += tl.load(g_prev + k * d + cols, mask=later_d, other=0.0).to(tl.float32)
                u += tl.load(g_first + k * d + cols, mask=first_d, other=0.0).to(tl.float32)
                a += tl.load(g_prev + R * d + k, mask=t > 0, other=0.0).to(tl.float32)
                a += tl.load(g_first + R * d + k, mask=first, other=0.0).to(tl.float32)
            u = tl.where(cm, _activation(u, ACT), 0.0)
            u = u / tl.maximum(tl.sqrt(tl.sum(u * u, 0)), u_eps)
            coef = strength / (1.0 + tl.exp(-a))
            if MIX == 1:
                v = v - coef * tl.sum(u * v, 0) * u
            else:
                corr += coef * tl.sum(u * v, 0) * u
        if MIX == 2:
            v = v - corr
    tl.store(xt_ptr + pid * d + cols, y + v, mask=cm)

    # B_t, C_t: x-part + y-part per group, l2-normalised over the state dimension.
    gi = tl.arange(0, BG)
    ni = tl.arange(0, BN)
    gn = gi[:, None] * N + ni[None, :]
    gm = (gi < G)[:, None] & (ni < N)[None, :]
    later_g = gm & ((gn * 0 + t) > 0)
    first_g = gm & ((gn * 0 + t) == 0)
    Bv = tl.load(bx_ptr + row * s_bb + t * s_bt + gn, mask=gm, other=0.0).to(tl.float32)
    Cv = tl.load(cx_ptr + row * s_cb + t * s_ct + gn, mask=gm, other=0.0).to(tl.float32)
    Bv += tl.load(g_prev + OFF_BC + gn, mask=later_g, other=0.0).to(tl.float32)
    Bv += tl.load(g_first + OFF_BC + gn, mask=first_g, other=0.0).to(tl.float32)
    Cv += tl.load(g_prev + OFF_BC + G * N + gn, mask=later_g, other=0.0).to(tl.float32)
    Cv += tl.load(g_first + OFF_BC + G * N + gn, mask=first_g, other=0.0).to(tl.float32)
    if BC_NORM:
        Bv = Bv / tl.maximum(tl.sqrt(tl.sum(Bv * Bv, 1)), bc_eps)[:, None]
        Cv = Cv / tl.maximum(tl.sqrt(tl.sum(Cv * Cv, 1)), bc_eps)[:, None]
    tl.store(b_ptr + pid * G * N + gn, Bv, mask=gm)
    tl.store(c_ptr + pid * G * N + gn, Cv, mask=gm)

    # dt_t = softplus(dt_raw [+ W_dt y_{t-1}] + dt_bias), clamped to the time-step limit.
    hi = tl.arange(0, BH)
    hm = hi < NH
    later_h = hm & ((hi * 0 + t) > 0)
    first_h = hm & ((hi * 0 + t) == 0)
    pre = tl.load(dtr_ptr + row * s_db + t * s_dt + hi, mask=hm, other=0.0).to(tl.float32)
    if HAS_DT_Y:
        pre += tl.load(g_prev + OFF_DT + hi, mask=later_h, other=0.0).to(tl.float32)
        pre += tl.load(g_first + OFF_DT + hi, mask=first_h, other=0.0).to(tl.float32)
    dt = _softplus(pre + tl.load(dt_bias_ptr + hi, mask=hm, other=0.0).to(tl.float32))
    if CLAMP_DT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    tl.store(dt_ptr + pid * NH + hi, dt, mask=hm)


@triton.jit
def _norm_kernel(
    rows_ptr, s_ptr, z_ptr, y_ptr, w_ptr, mask_ptr, yhat_ptr, ratio_ptr,
    T, d, GS, NG, s_zb, s_zt, s_mb, norm_eps, res_eps,
    HAS_MASK: tl.constexpr, BG: tl.constexpr, BGS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i = pid // T
    t = pid % T
    row = tl.load(rows_ptr + i)
    gi = tl.arange(0, BG)
    ji = tl.arange(0, BGS)
    idx = gi[:, None] * GS + ji[None, :]  # channel; the tile is (norm groups, group size)
    valid = (gi < NG)[:, None] & (ji < GS)[None, :]
    s = tl.load(s_ptr + pid * d + idx, mask=valid, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * s_zb + t * s_zt + idx, mask=valid, other=0.0).to(tl.float32)
    v = s * (z / (1.0 + tl.exp(-z)))
    var = tl.sum(v * v, 1) / GS
    yhat = tl.load(w_ptr + idx, mask=valid, other=0.0).to(tl.float32) * v / tl.sqrt(var + norm_eps)[:, None]
    if HAS_MASK:
        yhat = yhat * tl.load(mask_ptr + row * s_mb + t).to(tl.float32)
    tl.store(yhat_ptr + pid * d + idx, yhat, mask=valid)
    y = tl.load(y_ptr + pid * d + idx, mask=valid, other=0.0)
    diff = tl.max(tl.max(tl.where(valid, tl.abs(yhat - y), 0.0), 1), 0)
    scale = tl.max(tl.max(tl.where(valid, tl.abs(yhat), 0.0), 1), 0) + res_eps
    # A NaN/inf anywhere in the token makes its ratio NaN, so the solver's finiteness check sees it
    # (comparisons with NaN are false, so |v| < inf fails exactly for non-finite v).
    finite = tl.abs(yhat) < float("inf")
    bad = tl.sum(tl.sum(tl.where(valid & (finite == 0), 1, 0), 1), 0)
    tl.store(ratio_ptr + pid, tl.where(bad > 0, float("nan"), diff / scale))


def _per_token_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t (b, T, ...) whose every token is one contiguous block (strides of b and T are passed to the kernels)."""
    return t if t.numel() == 0 or t[0, 0].is_contiguous() else t.contiguous()


@dataclass
class FusedIterationInputs:
    """What every iteration of one layer call shares. Full-batch tensors (b, T, ...) may be strided views
    with a unit last stride; the kernels index them with the row list.

    x (b, T, d) the conv'ed input; x_part (b, T, R*d + R) the mixer projection's x-part with its bias, or None
    (mixer none); Bx, Cx (b, T, g, n); dt_raw (b, T, h); z (b, T, d); y_prev0 (b, d) y*_{t-1} before t = 0;
    H0 (b, h, p, n) | None; mask (b, T) bool | None (kept as int8); weight_y (K, d): the y-projections [mixer
    (if the mixer reads y); B and C; dt (if dt depends on y)] stacked; strength: () tensor, c * the mixer's
    effective gain (ChannelMixer.strength()).
    """

    x: torch.Tensor
    x_part: torch.Tensor | None
    Bx: torch.Tensor
    Cx: torch.Tensor
    dt_raw: torch.Tensor
    z: torch.Tensor
    y_prev0: torch.Tensor
    H0: torch.Tensor | None
    mask: torch.Tensor | None
    weight_y: torch.Tensor
    A: torch.Tensor
    D: torch.Tensor
    dt_bias: torch.Tensor
    strength: torch.Tensor
    norm_weight: torch.Tensor
    norm_eps: float
    norm_group_size: int
    mixer_kind: str
    mixer_rank: int
    mixer_activation: str
    mixer_reads_y: bool
    dt_reads_y: bool
    bc_norm: bool
    dt_limit: tuple[float, float]
    chunk_size: int
    head_dim: int
    residual_eps: float
    g0: torch.Tensor = field(init=False)  # (b, K) the y-projections of y_prev0, row "t = -1" of the GEMM

    def __post_init__(self) -> None:
        # Everything fixed across iterations is laid out once per call, not once per iteration.
        self.x, self.Bx, self.Cx, self.dt_raw, self.z = (
            _per_token_contiguous(t) for t in (self.x, self.Bx, self.Cx, self.dt_raw, self.z))
        if self.x_part is not None:
            self.x_part = _per_token_contiguous(self.x_part)
        if self.mask is not None:
            self.mask = self.mask.to(torch.int8)
        with torch.no_grad():
            self.g0 = F.linear(self.y_prev0.to(self.weight_y.dtype), self.weight_y)


def fused_iteration(
    inp: FusedIterationInputs, y: torch.Tensor, rows: torch.Tensor, mixer_code: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One iteration of the rows `rows` (LongTensor (r,)) from their iterate y (r, T, d) fp32, the mixer being the
    one of kernel code `mixer_code` (MIXER_CODES; `inp.mixer_kind` names it).

    Returns (yhat (r, T, d), final scan state (r, h, p, n), residual (r,)), all fp32, the residual being
    `fixed_point.relative_residual(yhat, y)` (NaN for a row holding a non-finite value)."""
    if mixer_code not in MIXER_CODES:
        raise ValueError(f"fused iteration: mixer kernel code {mixer_code!r} is not one of {MIXER_CODES}")
    r, T, d = y.shape
    b = inp.x.shape[0]
    g, n = inp.Bx.shape[2], inp.Bx.shape[3]
    nh = inp.dt_raw.shape[-1]
    dev = y.device
    f32 = torch.float32
    y = y.to(f32).contiguous()
    rows = rows.to(device=dev, dtype=torch.int64).contiguous()
    all_rows = r == b
    if r == 0 or T == 0:
        e = y.new_empty(r, T, d)
        H = y.new_zeros(r, nh, inp.head_dim, n) if inp.H0 is None else inp.H0[rows].float()
        return e, H, y.new_zeros(r)
    # 1. All y-projections of every token in one GEMM (input in the weight's dtype, as the composed path).
    W = inp.weight_y
    G_all = F.linear(y.view(r * T, d).to(W.dtype), W)
    K = G_all.shape[-1]
    # 2. Mixer, B/C, dt.
    xt = torch.empty(r, T, d, device=dev, dtype=f32)
    Bn = torch.empty(r, T, g, n, device=dev, dtype=f32)
    Cn = torch.empty(r, T, g, n, device=dev, dtype=f32)
    dt = torch.empty(r, T, nh, device=dev, dtype=f32)
    mix = mixer_code
    x, Bx, Cx, dt_raw = inp.x, inp.Bx, inp.Cx, inp.dt_raw
    xp = inp.x_part if mix else x  # unused without a mixer
    # weight_y stacks the mixer's y-rows (its kind's projection layout) before those of B and C (and dt's after).
    off_bc = K - 2 * g * n - (nh if inp.dt_reads_y else 0)
    if off_bc < 0 or (off_bc > 0) != inp.mixer_reads_y:
        raise ValueError(f"fused iteration: weight_y has {K} rows, which is not the mixer's y-rows (mixer_reads_y "
                         f"{inp.mixer_reads_y}), then 2 * {g} * {n} of B and C and {nh if inp.dt_reads_y else 0} of dt")
    lo, hi = inp.dt_limit
    clamp = lo > 0.0 or hi != float("inf")
    BD = pow2_at_least(d, 1)
    _mix_kernel[(r * T,)](
        rows, y, G_all, inp.g0, x, xp, Bx, Cx, dt_raw, inp.dt_bias, inp.strength, xt, Bn, Cn, dt,
        T, d, K, g, n, nh, off_bc, off_bc + 2 * g * n,
        x.stride(0), x.stride(1), xp.stride(0), xp.stride(1), Bx.stride(0), Bx.stride(1),
        Cx.stride(0), Cx.stride(1), dt_raw.stride(0), dt_raw.stride(1),
        1e-6, 1e-6, float(lo), float(hi),
        MIX=mix, R=inp.mixer_rank, ACT=ACT_CODES[inp.mixer_activation], HAS_MIX_Y=inp.mixer_reads_y,
        HAS_DT_Y=inp.dt_reads_y, BC_NORM=inp.bc_norm, CLAMP_DT=clamp,
        BD=BD, BG=pow2_at_least(g, 1), BN=pow2_at_least(n, 1), BH=pow2_at_least(nh, 1),
        num_warps=8 if BD >= 2048 else 4,
    )
    # 3. The scan (fp32 state).
    H0 = inp.H0 if (inp.H0 is None or all_rows) else inp.H0[rows]
    mask = inp.mask if (inp.mask is None or all_rows) else inp.mask[rows]
    s, H = ssd_scan_triton(xt.view(r, T, nh, inp.head_dim), dt, inp.A, Bn, Cn, inp.D, H0, mask, inp.chunk_size)
    # 4. Gated RMSNorm, padding mask, per-token residual.
    yhat = torch.empty(r, T, d, device=dev, dtype=f32)
    ratio = torch.empty(r, T, device=dev, dtype=f32)
    z = inp.z
    gs = inp.norm_group_size
    m = inp.mask if inp.mask is not None else rows  # unused without a mask
    _norm_kernel[(r * T,)](
        rows, s.contiguous(), z, y, inp.norm_weight, m, yhat, ratio,
        T, d, gs, d // gs, z.stride(0), z.stride(1), m.stride(0) if inp.mask is not None else 0,
        float(inp.norm_eps), float(inp.residual_eps),
        HAS_MASK=inp.mask is not None, BG=pow2_at_least(d // gs, 1), BGS=pow2_at_least(gs, 1),
        num_warps=8 if BD >= 2048 else 4,
    )
    return yhat, H, ratio.amax(-1)
