"""Triton decode step: the per-token fixed-point solve of every row, then the single state update.

Same semantics as the PyTorch decode step (`decode_steps.ssd_decode_step`) for the mixer kernel codes 0 (none),
1 (householder) and 2 (dplr); `kernels.decode_step_kernel` calls it in the core's terms, `kernels.decode_step`
decides when. Three launches:
  1. `_prep_kernel`   (b*h programs): a = C . (exp(dt A) H_{t-1}) per channel, g = dt (C . B) + D per head;
  2. `_solve_kernel`  (b programs): the inner loop of one row, entirely in registers, stopping on its own
     with the rule of `fixed_point.solve` (training=False): relative residual, damping with patience, cap;
  3. `_update_kernel` (b*h programs): H_t = exp(dt A) H_{t-1} + dt x~* B^T (fp32).
Vectors of one row (d = heads * head_dim) are held as a 2-D tile (norm groups, group size), so the gated
RMSNorm reduces along axis 1 and the mixer's dot products over the whole tile.
"""

from __future__ import annotations

from typing import Protocol

import torch

try:  # the kernels need triton (a CUDA build of torch on Linux brings it; else `pip install fpmamba-hf[triton]`)
    import triton
    import triton.language as tl
except ImportError as err:  # never reached through `kernels`, which imports a kernel only with triton installed
    raise ImportError(f"fpmamba-hf's Triton kernels need triton: {err}") from err

from ._triton_utils import MIXER_CODES, pow2_at_least


class PicardSettings(Protocol):
    """The solver knobs the inner loop reads (`fixed_point.SolverSettings` has them): the stopping rule of
    `fixed_point.solve` with training=False, and damping with patience."""

    max_iter: int
    tol: float
    damping: float
    damping_decay: float
    damping_patience: int
    min_damping: float
    eps: float


@triton.jit
def _prep_kernel(state_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, a_ptr, g_ptr,
                 H, G, HPG, P, N, BP: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)  # (row, head)
    bi = (pid // H).to(tl.int64)
    hi = pid % H
    gi = hi // HPG
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    decay = tl.exp(tl.load(dt_ptr + pid).to(tl.float32) * tl.load(A_ptr + hi).to(tl.float32))
    Bv = tl.load(B_ptr + (bi * G + gi) * N + offs_n, mask=nm, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + (bi * G + gi) * N + offs_n, mask=nm, other=0.0).to(tl.float32)
    st = tl.load(state_ptr + (pid.to(tl.int64) * P + offs_p[:, None]) * N + offs_n[None, :],
                 mask=pm[:, None] & nm[None, :], other=0.0).to(tl.float32)
    a = tl.sum(st * Cv[None, :], 1) * decay
    tl.store(a_ptr + pid.to(tl.int64) * P + offs_p, a, mask=pm)
    dt = tl.load(dt_ptr + pid).to(tl.float32)
    g = dt * tl.sum(Cv * Bv, 0) + tl.load(D_ptr + hi).to(tl.float32)
    tl.store(g_ptr + pid, g)


@triton.jit
def _solve_kernel(x_ptr, z_ptr, a_ptr, g_ptr, w_ptr, u_ptr, coef_ptr,
                  yout_ptr, ystar_ptr, xt_ptr, it_ptr, res_ptr,
                  d, P, GS, NG, norm_eps, max_iter, tol, damping, damping_decay, patience, min_damping, res_eps,
                  MIX: tl.constexpr, R: tl.constexpr, BG: tl.constexpr, BGS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    gi = tl.arange(0, BG)
    ji = tl.arange(0, BGS)
    idx = gi[:, None] * GS + ji[None, :]  # channel index inside the row
    valid = (gi < NG)[:, None] & (ji < GS)[None, :]
    base = row * d
    x = tl.load(x_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
    gate = z / (1.0 + tl.exp(-z))  # SiLU(z), fixed within the token
    a = tl.load(a_ptr + base + idx, mask=valid, other=0.0)
    g = tl.load(g_ptr + row * (d // P) + idx // P, mask=valid, other=0.0)
    w = tl.load(w_ptr + idx, mask=valid, other=0.0).to(tl.float32)
    # Separate initial values: loop-carried variables aliasing one value miscompiled on the GPU (y* came
    # back wrong with y_star = y at init), so every carried tensor gets its own.
    y = tl.zeros((BG, BGS), dtype=tl.float32)
    y_star = tl.zeros((BG, BGS), dtype=tl.float32)
    y_out = tl.zeros((BG, BGS), dtype=tl.float32)
    xt_keep = tl.zeros((BG, BGS), dtype=tl.float32)
    k = tl.program_id(0) * 0
    stall = k
    r = damping * 0.0
    best = r + float("inf")
    delta = damping + r
    go = k == 0
    while go:
        k += 1
        # x~ = y + Q (x - y)
        v = x - y
        if MIX == 1:  # householder: Q = H_1 ... H_R, H_R applied first
            for ii in tl.static_range(R):
                i = R - 1 - ii
                u = tl.load(u_ptr + (row * R + i) * d + idx, mask=valid, other=0.0)
                c = tl.load(coef_ptr + row * R + i)
                v = v - c * tl.sum(tl.sum(u * v, 1), 0) * u
        if MIX == 2:  # dplr: Q = I - sum_i coef_i u_i u_i^T
            acc = tl.zeros((BG, BGS), dtype=tl.float32)
            for i in tl.static_range(R):
                u = tl.load(u_ptr + (row * R + i) * d + idx, mask=valid, other=0.0)
                c = tl.load(coef_ptr + row * R + i)
                acc += c * tl.sum(tl.sum(u * v, 1), 0) * u
            v = v - acc
        xt = y + v
        # yhat = RMSNorm((a + g x~) * SiLU(z)) per group of channels
        s = (a + g * xt) * gate
        var = tl.sum(s * s, 1) / GS
        yhat = w * s / tl.sqrt(var + norm_eps)[:, None]
        diff = tl.max(tl.max(tl.abs(yhat - y), 1), 0)
        scale = tl.max(tl.max(tl.abs(yhat), 1), 0) + res_eps
        r = diff / scale
        done = (r < tol) | (k >= max_iter)
        y_star = tl.where(valid, y, 0.0)  # a new value, not an alias of the carried y
        y_out = yhat
        xt_keep = xt
        # Damping with patience (takes effect from the next iteration, as in fixed_point.solve).
        y = delta * yhat + (1.0 - delta) * y
        improved = r < best
        best = tl.where(improved, r, best)
        stall = tl.where(improved, 0, stall + 1)
        shrink = stall >= patience
        delta = tl.where(shrink, tl.maximum(delta * damping_decay, min_damping), delta)
        stall = tl.where(shrink, 0, stall)
        go = done == 0
    tl.store(yout_ptr + base + idx, y_out, mask=valid)
    tl.store(ystar_ptr + base + idx, y_star, mask=valid)
    tl.store(xt_ptr + base + idx, xt_keep, mask=valid)
    tl.store(it_ptr + row, k.to(tl.int64))
    tl.store(res_ptr + row, r)


@triton.jit
def _update_kernel(state_ptr, dt_ptr, A_ptr, B_ptr, xt_ptr, out_ptr,
                   H, G, HPG, P, N, BP: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)  # (row, head)
    bi = (pid // H).to(tl.int64)
    hi = pid % H
    gi = hi // HPG
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    dt = tl.load(dt_ptr + pid).to(tl.float32)
    decay = tl.exp(dt * tl.load(A_ptr + hi).to(tl.float32))
    Bv = tl.load(B_ptr + (bi * G + gi) * N + offs_n, mask=nm, other=0.0).to(tl.float32)
    xt = tl.load(xt_ptr + pid.to(tl.int64) * P + offs_p, mask=pm, other=0.0)
    off = (pid.to(tl.int64) * P + offs_p[:, None]) * N + offs_n[None, :]
    m = pm[:, None] & nm[None, :]
    st = tl.load(state_ptr + off, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, decay * st + (dt * xt)[:, None] * Bv[None, :], mask=m)


def decode_step_triton(
    x: torch.Tensor,
    z: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    state: torch.Tensor,
    mixer_code: int,
    u: torch.Tensor | None,
    coef: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_eps: float,
    norm_group_size: int,
    settings: PicardSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode token of every row (see `decode_steps.ssd_decode_step` for shapes and semantics).

    x (b, h, p); z (b, d); dt (b, h); A, D (h,); B, C (b, g, n); state (b, h, p, n) fp32; the mixer Q_t of each
    row: its kernel code (MIXER_CODES) and, for codes 1 and 2, its rank-one terms u (b, r, d) and coef (b, r)
    (None for code 0). Returns (y_out (b, d), y* (b, d), new state (b, h, p, n), iterations (b,) int64, residual
    (b,)), all fp32 but the iteration counts. Non-finite values are returned, not raised (the caller checks).
    """
    if mixer_code not in MIXER_CODES:
        raise ValueError(f"decode kernel: mixer kernel code {mixer_code!r} is not one of {MIXER_CODES}")
    if mixer_code and (u is None or coef is None):
        raise ValueError(f"decode kernel: mixer kernel code {mixer_code} needs its rank-one terms u and coef")
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    d = h * p
    if d % norm_group_size:
        raise ValueError(f"norm group size {norm_group_size} must divide d_inner {d}")
    dev = x.device
    f32 = torch.float32
    x = x.float().contiguous()
    z = z.float().contiguous()
    dt = dt.float().contiguous()
    A = A.float().contiguous()
    D = D.float().contiguous()
    B = B.float().contiguous()
    C = C.float().contiguous()
    state = state.float().contiguous()
    a = torch.empty(b, d, device=dev, dtype=f32)
    gvec = torch.empty(b, h, device=dev, dtype=f32)
    BP, BN = pow2_at_least(p), pow2_at_least(n)
    if b == 0:
        e = x.new_empty(0, d)
        return e, e, state.clone(), torch.zeros(0, dtype=torch.long, device=dev), x.new_empty(0)
    _prep_kernel[(b * h,)](state, dt, A, B, C, D, a, gvec, h, g, h // g, p, n, BP=BP, BN=BN, num_warps=4)

    mix = mixer_code
    if mix:
        u = u.float().contiguous()
        coef = coef.float().contiguous()
        R = u.shape[-2]
    else:
        u = coef = a  # unused
        R = 1
    y_out = torch.empty(b, d, device=dev, dtype=f32)
    y_star = torch.empty(b, d, device=dev, dtype=f32)
    xt = torch.empty(b, d, device=dev, dtype=f32)
    iterations = torch.empty(b, device=dev, dtype=torch.long)
    residual = torch.empty(b, device=dev, dtype=f32)
    ng = d // norm_group_size
    s = settings
    _solve_kernel[(b,)](
        x, z, a, gvec, norm_weight.contiguous(), u, coef, y_out, y_star, xt, iterations, residual,
        d, p, norm_group_size, ng, float(norm_eps), int(s.max_iter), float(s.tol), float(s.damping),
        float(s.damping_decay), int(s.damping_patience), float(s.min_damping), float(s.eps),
        MIX=mix, R=R, BG=pow2_at_least(ng, 1), BGS=pow2_at_least(norm_group_size, 1), num_warps=8,
    )
    new_state = torch.empty_like(state)
    _update_kernel[(b * h,)](state, dt, A, B, xt, new_state, h, g, h // g, p, n, BP=BP, BN=BN, num_warps=4)
    return y_out, y_star, new_state, iterations, residual
