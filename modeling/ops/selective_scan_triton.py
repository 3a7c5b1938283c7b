"""Triton selective scan (Mamba-1: decay exp(dt A) per channel and state entry, B/C shared by every channel).

Same signature, semantics and return values as `selective_reference.selective_scan_chunked`:
    x, dt (b, T, d), A (d, n), B, C (b, T, n), D (d,) | None, initial_state (b, d, n) | None, mask (b, T) | None
    ->  y (b, T, d) fp32, final_state (b, d, n) fp32.
Inputs may be fp32 or bf16/fp16; every load is upcast to fp32 and all arithmetic is fp32 (elementwise: no dots).

Forward: one program per (batch, block of channels) walks the tokens in order with the fp32 state (channels, n) in
registers. With autograd it also stores the state entering every chunk of `chunk_size` tokens (b, nchunks, d, n).
Backward: the same programs walk the chunks in reverse. Per chunk they first recompute its states from the stored
one into a scratch buffer of their own (chunk + 1 slots), then walk its tokens in reverse carrying G = dL/dH_t:
    G += dy_t C_t^T;   dC_t = sum_d H_t dy_t;   dB_t = sum_d G dt_t x_t;   du_t = G B_t  (u = dt x)
    dx_t = du_t dt_t + D dy_t;   ddt_t = du_t x_t + sum_n G A exp(dt_t A) H_{t-1};   dA += G dt_t exp(dt_t A) H_{t-1}
    G <- exp(dt_t A) G
dB, dC, dA and dD are written per program and summed over the channel blocks / batch outside the kernel.
A padded position (mask 0) has dt = x = 0: the state passes through it, and its dx, ddt are zero.
"""

from __future__ import annotations

import torch

try:  # the kernels need triton (a CUDA build of torch on Linux brings it; else `pip install fpmamba-hf[triton]`)
    import triton
    import triton.language as tl
except ImportError as err:  # never reached through `kernels`, which imports a kernel only with triton installed
    raise ImportError(f"fpmamba-hf's Triton kernels need triton: {err}") from err

from ._triton_utils import pow2_at_least


@triton.jit
def _selective_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, mask_ptr,
    y_ptr, hs_ptr, hT_ptr,
    T, NC, L, Dm, N,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr, STORE_STATES: tl.constexpr,
    BD: tl.constexpr, BN: tl.constexpr,
):
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dm = offs_d < Dm
    nm = offs_n < N
    st_m = dm[:, None] & nm[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=st_m, other=0.0).to(tl.float32)
    Dv = tl.zeros((BD,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dm, other=0.0).to(tl.float32)
    st_off = (bi * Dm + offs_d[:, None]) * N + offs_n[None, :]
    if HAS_H0:
        H = tl.load(h0_ptr + st_off, mask=st_m, other=0.0).to(tl.float32)
    else:
        H = tl.zeros((BD, BN), dtype=tl.float32)
    for c in range(0, NC):
        if STORE_STATES:
            tl.store(hs_ptr + ((bi * NC + c) * Dm + offs_d[:, None]) * N + offs_n[None, :], H, mask=st_m)
        for j in range(0, tl.minimum(L, T - c * L)):
            row = bi * T + c * L + j
            x = tl.load(x_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            dtv = tl.load(dt_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            if HAS_MASK:
                m = tl.load(mask_ptr + row).to(tl.float32)
                x = x * m
                dtv = dtv * m
            Bt = tl.load(B_ptr + row * N + offs_n, mask=nm, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + row * N + offs_n, mask=nm, other=0.0).to(tl.float32)
            H = tl.exp(dtv[:, None] * A) * H + (dtv * x)[:, None] * Bt[None, :]
            y = tl.sum(H * Ct[None, :], 1) + Dv * x
            tl.store(y_ptr + row * Dm + offs_d, y, mask=dm)
    tl.store(hT_ptr + st_off, H, mask=st_m)


@triton.jit
def _selective_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, mask_ptr, hs_ptr, dy_ptr, dhT_ptr, scratch_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dh0_ptr, dA_ptr, dD_ptr,
    T, NC, L, Dm, N, NDB,
    HAS_D: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DHT: tl.constexpr,
    BD: tl.constexpr, BN: tl.constexpr,
):
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    prog = bi * NDB + pid_d  # this program's slot in the per-program outputs and its scratch
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dm = offs_d < Dm
    nm = offs_n < N
    st_m = dm[:, None] & nm[None, :]
    blk = tl.arange(0, BD)[:, None] * BN + offs_n[None, :]  # a (BD, BN) tile in the scratch
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=st_m, other=0.0).to(tl.float32)
    Dv = tl.zeros((BD,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dm, other=0.0).to(tl.float32)
    st_off = (bi * Dm + offs_d[:, None]) * N + offs_n[None, :]
    if HAS_DHT:
        G = tl.load(dhT_ptr + st_off, mask=st_m, other=0.0).to(tl.float32)
    else:
        G = tl.zeros((BD, BN), dtype=tl.float32)
    dA = tl.zeros((BD, BN), dtype=tl.float32)
    dD = tl.zeros((BD,), dtype=tl.float32)
    scratch = scratch_ptr + prog * (L + 1) * BD * BN
    for cc in range(0, NC):
        c = NC - 1 - cc
        steps = tl.minimum(L, T - c * L)
        # Recompute the chunk's states: slot 0 holds the state entering it, slot j + 1 the state after token j.
        H = tl.load(hs_ptr + ((bi * NC + c) * Dm + offs_d[:, None]) * N + offs_n[None, :], mask=st_m, other=0.0)
        tl.store(scratch + blk, H)
        for j in range(0, steps):
            row = bi * T + c * L + j
            x = tl.load(x_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            dtv = tl.load(dt_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            if HAS_MASK:
                m = tl.load(mask_ptr + row).to(tl.float32)
                x = x * m
                dtv = dtv * m
            Bt = tl.load(B_ptr + row * N + offs_n, mask=nm, other=0.0).to(tl.float32)
            H = tl.exp(dtv[:, None] * A) * H + (dtv * x)[:, None] * Bt[None, :]
            tl.store(scratch + (j + 1) * BD * BN + blk, H)
        tl.debug_barrier()  # the scratch is written and read by the whole program: every store lands first
        # The reverse walk through the chunk.
        for jj in range(0, steps):
            j = steps - 1 - jj
            row = bi * T + c * L + j
            x = tl.load(x_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            dtv = tl.load(dt_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            m = 1.0
            if HAS_MASK:
                m = tl.load(mask_ptr + row).to(tl.float32)
                x = x * m
                dtv = dtv * m
            dy = tl.load(dy_ptr + row * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + row * N + offs_n, mask=nm, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + row * N + offs_n, mask=nm, other=0.0).to(tl.float32)
            H_t = tl.load(scratch + (j + 1) * BD * BN + blk)
            H_prev = tl.load(scratch + j * BD * BN + blk)
            decay = tl.exp(dtv[:, None] * A)
            G += dy[:, None] * Ct[None, :]
            du = tl.sum(G * Bt[None, :], 1)
            gdecay = G * decay * H_prev  # dL/d(dt A) per entry
            tl.store(dx_ptr + row * Dm + offs_d, (du * dtv + Dv * dy) * m, mask=dm)
            tl.store(ddt_ptr + row * Dm + offs_d, (du * x + tl.sum(gdecay * A, 1)) * m, mask=dm)
            tl.store(dB_ptr + (prog * T + c * L + j) * N + offs_n, tl.sum(G * (dtv * x)[:, None], 0), mask=nm)
            tl.store(dC_ptr + (prog * T + c * L + j) * N + offs_n, tl.sum(H_t * dy[:, None], 0), mask=nm)
            dA += gdecay * dtv[:, None]
            dD += dy * x
            G = G * decay
        tl.debug_barrier()  # every read of this chunk's scratch is done before the next chunk overwrites it
    tl.store(dh0_ptr + st_off, G, mask=st_m)
    tl.store(dA_ptr + (bi * Dm + offs_d[:, None]) * N + offs_n[None, :], dA, mask=st_m)
    tl.store(dD_ptr + bi * Dm + offs_d, dD, mask=dm)


def _blocks(d: int, n: int) -> tuple[int, int]:
    """(BD, BN): channels per program and the state's padded width."""
    return min(pow2_at_least(d, floor=2), 32), pow2_at_least(n, floor=2)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0, mask, chunk_size):
        b, T, d = x.shape
        n = A.shape[1]
        BD, BN = _blocks(d, n)
        NC = triton.cdiv(T, chunk_size)
        store = any(ctx.needs_input_grad[:7])
        y = torch.empty(b, T, d, device=x.device, dtype=torch.float32)
        hT = torch.empty(b, d, n, device=x.device, dtype=torch.float32)
        hs = torch.empty(b, NC, d, n, device=x.device, dtype=torch.float32) if store else hT
        _selective_fwd_kernel[(triton.cdiv(d, BD), b)](
            x, dt, A, B, C, hT if D is None else D, hT if h0 is None else h0, hT if mask is None else mask,
            y, hs, hT, T, NC, chunk_size, d, n,
            HAS_D=D is not None, HAS_H0=h0 is not None, HAS_MASK=mask is not None, STORE_STATES=store,
            BD=BD, BN=BN, num_warps=4,
        )
        if store:
            ctx.save_for_backward(x, dt, A, B, C, D, mask, hs)
            ctx.h0_dtype = None if h0 is None else h0.dtype
            ctx.chunk_size = chunk_size
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        x, dt, A, B, C, D, mask, hs = ctx.saved_tensors
        b, T, d = x.shape
        n = A.shape[1]
        L = ctx.chunk_size
        BD, BN = _blocks(d, n)
        NDB, NC = triton.cdiv(d, BD), triton.cdiv(T, L)
        dev, f32 = x.device, torch.float32
        dy = torch.zeros(b, T, d, device=dev, dtype=f32) if dy is None else dy.contiguous()
        dx = torch.empty(b, T, d, device=dev, dtype=f32)
        ddt = torch.empty(b, T, d, device=dev, dtype=f32)
        dB = torch.empty(b, NDB, T, n, device=dev, dtype=f32)
        dC = torch.empty(b, NDB, T, n, device=dev, dtype=f32)
        dh0 = torch.empty(b, d, n, device=dev, dtype=f32)
        dA = torch.empty(b, d, n, device=dev, dtype=f32)
        dD = torch.empty(b, d, device=dev, dtype=f32)
        scratch = torch.empty(b * NDB * (L + 1) * BD * BN, device=dev, dtype=f32)
        _selective_bwd_kernel[(NDB, b)](
            x, dt, A, B, C, hs if D is None else D, hs if mask is None else mask, hs, dy,
            hs if dhT is None else dhT.contiguous(), scratch,
            dx, ddt, dB, dC, dh0, dA, dD, T, NC, L, d, n, NDB,
            HAS_D=D is not None, HAS_MASK=mask is not None, HAS_DHT=dhT is not None, BD=BD, BN=BN, num_warps=4,
        )
        return (
            dx.to(x.dtype), ddt.to(dt.dtype), dA.sum(0).to(A.dtype), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype),
            None, None,
        )


def selective_scan_triton(
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
    """The selective scan on the Triton kernels; see the module docstring for shapes. Differentiable in x, dt, A,
    B, C, D and initial_state. `chunk_size`: the tokens between two stored states (memory vs recompute only).
    Returns (y fp32 (b, T, d), final_state fp32 (b, d, n))."""
    if mask is not None:
        mask = mask.to(torch.int8).contiguous()
    return _SelectiveScan.apply(
        x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
        None if D is None else D.contiguous(), None if initial_state is None else initial_state.contiguous(),
        mask, chunk_size,
    )
