"""Triton chunked SSD scan (Mamba-2: scalar decay per head, B/C shared by the heads of a group).

Same signature, semantics and return values as `reference.ssd_scan_chunked`:
    x (b, T, h, p), dt (b, T, h), A (h,), B, C (b, T, g, n), D (h,) | None, initial_state (b, h, p, n) | None,
    mask (b, T) | None  ->  y (b, T, h, p) fp32, final_state (b, h, p, n) fp32.
Inputs may be fp32 or bf16/fp16; every load is upcast to fp32 and all accumulation is fp32.

Forward: one program per (batch, head, block of head_dim) walks the chunks in order, keeping the fp32 state
(p_block, n) in registers: per chunk the intra-chunk quadratic part (C B^T masked by the decay), the
contribution of the entering state, then the state update. With autograd it also stores the state entering
every chunk (b, nchunks, h, p, n) fp32 for the backward.
Backward: one program per (batch, head) walks the chunks in reverse, carrying dL/dH (p, n); the gradient of
the log-decay uses  dA_cum_i = C_i.dC_i - B_i.dB_i (+ <dH_out, H_out> at the chunk's last step), then a
reverse cumulative sum inside the chunk. B/C gradients are written per head and summed over a group's heads.
The chunk length is a block size only (results do not depend on it beyond rounding).
"""

from __future__ import annotations

import torch

try:  # the kernels need triton (a CUDA build of torch on Linux brings it; else `pip install fpmamba-hf[triton]`)
    import triton
    import triton.language as tl
except ImportError as err:  # never reached through `kernels`, which imports a kernel only with triton installed
    raise ImportError(f"fpmamba-hf's Triton kernels need triton: {err}") from err

from ._triton_utils import dot_precision, interpreting, kernel_chunk_len, pow2_at_least


@triton.jit
def _fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, mask_ptr,
    y_ptr, hs_ptr, hT_ptr,
    T, NC, H, G, HPG, P, N,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr, STORE_STATES: tl.constexpr,
    BL: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // HPG
    offs_l = tl.arange(0, BL)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    A = tl.load(A_ptr + hi).to(tl.float32)
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + hi).to(tl.float32)
    # State block (p, n) of this (batch, head).
    st_off = ((bi * H + hi) * P + offs_p[:, None]) * N + offs_n[None, :]
    st_m = pm[:, None] & nm[None, :]
    if HAS_H0:
        state = tl.load(h0_ptr + st_off, mask=st_m, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BP, BN), dtype=tl.float32)
    causal = offs_l[:, None] >= offs_l[None, :]
    for c in range(0, NC):
        t = c * BL + offs_l
        tm = t < T
        row = bi * T + t
        dtv = tl.load(dt_ptr + row * H + hi, mask=tm, other=0.0).to(tl.float32)
        xm = tm[:, None] & pm[None, :]
        x_off = (row * H + hi)[:, None] * P + offs_p[None, :]
        x = tl.load(x_ptr + x_off, mask=xm, other=0.0).to(tl.float32)
        if HAS_MASK:
            # Padded positions leave the state untouched: zero x and dt.
            m = tl.load(mask_ptr + row, mask=tm, other=0).to(tl.float32)
            dtv = dtv * m
            x = x * m[:, None]
        bc_off = (row * G + gi)[:, None] * N + offs_n[None, :]
        bcm = tm[:, None] & nm[None, :]
        Bt = tl.load(B_ptr + bc_off, mask=bcm, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off, mask=bcm, other=0.0).to(tl.float32)
        a = dtv * A
        acum = tl.cumsum(a, 0)
        alast = tl.sum(a, 0)
        xdt = x * dtv[:, None]
        # Intra-chunk part: y_i += sum_{j<=i} exp(acum_i - acum_j) (C_i . B_j) xdt_j.
        decay = tl.exp(tl.where(causal, acum[:, None] - acum[None, :], float("-inf")))
        S = tl.dot(Ct, tl.trans(Bt), input_precision=PREC) * decay
        y = tl.dot(S, xdt, input_precision=PREC)
        # Entering state: y_i += exp(acum_i) H C_i.
        y += tl.exp(acum)[:, None] * tl.dot(Ct, tl.trans(state), input_precision=PREC)
        y += Dv * x
        tl.store(y_ptr + x_off, y, mask=xm)
        if STORE_STATES:
            hs_off = (((bi * NC + c) * H + hi) * P + offs_p[:, None]) * N + offs_n[None, :]
            tl.store(hs_ptr + hs_off, state, mask=st_m)
        w = tl.exp(alast - acum)
        state = state * tl.exp(alast) + tl.dot(tl.trans(xdt * w[:, None]), Bt, input_precision=PREC)
    tl.store(hT_ptr + st_off, state, mask=st_m)


@triton.jit
def _bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, mask_ptr, hs_ptr, hT_ptr, dy_ptr, dhT_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dh0_ptr, dA_ptr, dD_ptr,
    T, NC, H, G, HPG, P, N,
    HAS_D: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DHT: tl.constexpr,
    BL: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    bi = (pid_bh // H).to(tl.int64)
    hi = pid_bh % H
    gi = hi // HPG
    offs_l = tl.arange(0, BL)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    A = tl.load(A_ptr + hi).to(tl.float32)
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + hi).to(tl.float32)
    st_off = ((bi * H + hi) * P + offs_p[:, None]) * N + offs_n[None, :]
    st_m = pm[:, None] & nm[None, :]
    if HAS_DHT:
        dstate = tl.load(dhT_ptr + st_off, mask=st_m, other=0.0).to(tl.float32)
    else:
        dstate = tl.zeros((BP, BN), dtype=tl.float32)
    # <dH_out, H_out> of the chunk being processed (for the gradient of its total log-decay).
    h_final = tl.load(hT_ptr + st_off, mask=st_m, other=0.0)
    dot_out = tl.sum(tl.sum(dstate * h_final, 1), 0)
    causal = offs_l[:, None] >= offs_l[None, :]
    is_last = offs_l == BL - 1
    dA_acc = 0.0
    dD_acc = 0.0
    for cc in range(0, NC):
        c = NC - 1 - cc
        t = c * BL + offs_l
        tm = t < T
        row = bi * T + t
        dtv = tl.load(dt_ptr + row * H + hi, mask=tm, other=0.0).to(tl.float32)
        xm = tm[:, None] & pm[None, :]
        x_off = (row * H + hi)[:, None] * P + offs_p[None, :]
        x = tl.load(x_ptr + x_off, mask=xm, other=0.0).to(tl.float32)
        m = tl.full((BL,), 1.0, tl.float32)
        if HAS_MASK:
            m = tl.load(mask_ptr + row, mask=tm, other=0).to(tl.float32)
            dtv = dtv * m
            x = x * m[:, None]
        dy = tl.load(dy_ptr + x_off, mask=xm, other=0.0).to(tl.float32)
        bc_off = (row * G + gi)[:, None] * N + offs_n[None, :]
        bcm = tm[:, None] & nm[None, :]
        Bt = tl.load(B_ptr + bc_off, mask=bcm, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off, mask=bcm, other=0.0).to(tl.float32)
        hs_off = (((bi * NC + c) * H + hi) * P + offs_p[:, None]) * N + offs_n[None, :]
        h_in = tl.load(hs_ptr + hs_off, mask=st_m, other=0.0)
        a = dtv * A
        acum = tl.cumsum(a, 0)
        alast = tl.sum(a, 0)
        xdt = x * dtv[:, None]
        decay = tl.exp(tl.where(causal, acum[:, None] - acum[None, :], float("-inf")))
        w = tl.exp(alast - acum)  # decay from each step to the chunk's end
        e_in = tl.exp(acum)  # decay from the chunk's start to each step
        S = tl.dot(Ct, tl.trans(Bt), input_precision=PREC) * decay
        # d(xdt_j) = sum_i S_ij dy_i + w_j dH_out B_j
        dxdt = tl.dot(tl.trans(S), dy, input_precision=PREC)
        dxdt += w[:, None] * tl.dot(Bt, tl.trans(dstate), input_precision=PREC)
        M = tl.dot(dy, tl.trans(xdt), input_precision=PREC) * decay  # (dy_i . xdt_j) decay_ij
        dC = tl.dot(M, Bt, input_precision=PREC) + e_in[:, None] * tl.dot(dy, h_in, input_precision=PREC)
        dB = tl.dot(tl.trans(M), Ct, input_precision=PREC)
        dB += w[:, None] * tl.dot(xdt, dstate, input_precision=PREC)
        dAc = tl.sum(Ct * dC, 1) - tl.sum(Bt * dB, 1) + tl.where(is_last, dot_out, 0.0)
        da = tl.sum(dAc, 0) - tl.cumsum(dAc, 0) + dAc  # reverse cumulative sum inside the chunk
        dx = (dxdt * dtv[:, None] + Dv * dy) * m[:, None]
        ddt = (tl.sum(x * dxdt, 1) + A * da) * m
        dA_acc += tl.sum(dtv * da, 0)
        dD_acc += tl.sum(tl.sum(x * dy, 1), 0)
        tl.store(dx_ptr + x_off, dx, mask=xm)
        tl.store(ddt_ptr + row * H + hi, ddt, mask=tm)
        dbc_off = (row * H + hi)[:, None] * N + offs_n[None, :]
        tl.store(dB_ptr + dbc_off, dB, mask=bcm)
        tl.store(dC_ptr + dbc_off, dC, mask=bcm)
        dstate = dstate * tl.exp(alast) + tl.dot(tl.trans(dy * e_in[:, None]), Ct, input_precision=PREC)
        # dstate is now dL/dH_in of this chunk = dL/dH_out of the previous one, whose H_out is h_in.
        dot_out = tl.sum(tl.sum(dstate * h_in, 1), 0)
    tl.store(dh0_ptr + st_off, dstate, mask=st_m)
    tl.store(dA_ptr + pid_bh, dA_acc)
    tl.store(dD_ptr + pid_bh, dD_acc)


def _bwd_precision(x: torch.Tensor) -> str:
    """The backward keeps exact fp32 dots for fp32 inputs: with tf32 and fp32 operands loaded straight into
    shared memory it needs 256 KiB of it (over the H100's 227 KiB; measured by compiling for sm_90)."""
    return "ieee" if x.dtype == torch.float32 else dot_precision(x)


def _fwd(x, dt, A, B, C, D, h0, mask, chunk_size, store_states):
    b, T, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    BL = kernel_chunk_len(chunk_size)
    NC = triton.cdiv(T, BL)
    BN = pow2_at_least(n)
    BP = min(pow2_at_least(p), 32 if not interpreting() else 128)
    y = torch.empty(b, T, h, p, device=x.device, dtype=torch.float32)
    hT = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    hs = torch.empty(b, NC, h, p, n, device=x.device, dtype=torch.float32) if store_states else hT
    dummy = hT
    grid = (triton.cdiv(p, BP), b * h)
    _fwd_kernel[grid](
        x, dt, A, B, C, D if D is not None else dummy, h0 if h0 is not None else dummy,
        mask if mask is not None else dummy, y, hs, hT,
        T, NC, h, g, h // g, p, n,
        HAS_D=D is not None, HAS_H0=h0 is not None, HAS_MASK=mask is not None, STORE_STATES=store_states,
        BL=BL, BP=BP, BN=BN, PREC=dot_precision(x), num_warps=4, num_stages=1,
    )
    return y, hT, hs


class _SSDScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, mask, chunk_size):
        store = any(ctx.needs_input_grad[:7])
        y, hT, hs = _fwd(x, dt, A, B, C, D, h0, mask, chunk_size, store)
        if store:
            ctx.save_for_backward(x, dt, A, B, C, D, mask, hs, hT)
            ctx.has_h0 = h0 is not None
            ctx.h0_dtype = None if h0 is None else h0.dtype
            ctx.chunk_size = chunk_size
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        x, dt, A, B, C, D, mask, hs, hT = ctx.saved_tensors
        b, T, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        BL = kernel_chunk_len(ctx.chunk_size)
        NC = triton.cdiv(T, BL)
        dev = x.device
        f32 = torch.float32
        dy = torch.zeros(b, T, h, p, device=dev, dtype=f32) if dy is None else dy.contiguous()
        dx = torch.empty(b, T, h, p, device=dev, dtype=f32)
        ddt = torch.empty(b, T, h, device=dev, dtype=f32)
        dBh = torch.empty(b, T, h, n, device=dev, dtype=f32)
        dCh = torch.empty(b, T, h, n, device=dev, dtype=f32)
        dh0 = torch.empty(b, h, p, n, device=dev, dtype=f32)
        dA = torch.empty(b, h, device=dev, dtype=f32)
        dD = torch.empty(b, h, device=dev, dtype=f32)
        dummy = hT
        _bwd_kernel[(b * h,)](
            x, dt, A, B, C, D if D is not None else dummy, mask if mask is not None else dummy, hs, hT, dy,
            dhT.contiguous() if dhT is not None else dummy,
            dx, ddt, dBh, dCh, dh0, dA, dD,
            T, NC, h, g, h // g, p, n,
            HAS_D=D is not None, HAS_MASK=mask is not None, HAS_DHT=dhT is not None,
            BL=BL, BP=pow2_at_least(p), BN=pow2_at_least(n), PREC=_bwd_precision(x), num_warps=8, num_stages=1,
        )
        # Heads of a group share B and C: their gradients add up.
        dB = dBh if g == h else dBh.view(b, T, g, h // g, n).sum(3)
        dC = dCh if g == h else dCh.view(b, T, g, h // g, n).sum(3)
        return (
            dx.to(x.dtype), ddt.to(dt.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype),
            dh0.to(ctx.h0_dtype) if ctx.has_h0 else None, None, None,
        )


def ssd_scan_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan on the Triton kernels; see the module docstring for shapes. Differentiable in
    x, dt, A, B, C, D and initial_state. Returns (y fp32 (b, T, h, p), final_state fp32 (b, h, p, n))."""
    b, T, h, p = x.shape
    if B.shape[2] == 0 or h % B.shape[2]:
        raise ValueError(f"heads ({h}) must be a multiple of the groups of B/C ({B.shape[2]})")
    if mask is not None:
        mask = mask.to(torch.int8).contiguous()
    return _SSDScan.apply(
        x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
        None if D is None else D.contiguous(), None if initial_state is None else initial_state.contiguous(),
        mask, chunk_size,
    )
