"""Triton first-order diagonal scan h_t = lambda_t * h_{t-1} + u_t (the vector FP-RNN's), forward and backward.

Same signature, semantics and return values as `diagonal_scan.diag_scan_chunked`:
    lam, u (b, T, d), initial_state (b, d) | None, mask (b, T) | None  ->  h (b, T, d) fp32, final_state (b, d) fp32.
Inputs may be fp32 or bf16/fp16; every load is upcast to fp32 and all arithmetic is fp32. A padded position
(mask 0) is neutral (lambda = 1, u = 0): the state passes through it, and its dlambda, du are zero.

Forward: one program per (batch, block of channels) walks the chunks of `chunk_size` tokens in order. Inside a
chunk, one associative scan over the tokens of the pairs (lambda, u) with (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)
gives (prod lambda, state from zero) at every token; the carried state adds prod lambda * h_in. Only products and
sums: exact for any lambda (0 and negative values included), no logs or divisions.
Backward: the states are the op's own output h, so nothing is recomputed or stored beyond it (it is saved for the
backward). With G_t = dL/dh_t (total):
    G_t = dh_t + lambda_{t+1} G_{t+1}  (G_T = dL/d final_state, lambda_T = 1);   du_t = G_t;   dlambda_t = G_t h_{t-1}
    d initial_state = lambda_0 G_0.
The same programs walk the chunks in reverse; each chunk is loaded in reversed token order, so the reverse
recurrence is again a forward associative scan of the pairs (lambda_{t+1}, dh_t), carrying G of the next chunk's
first token.
"""

from __future__ import annotations

import torch

try:  # the kernels need triton (a CUDA build of torch on Linux brings it; else `pip install fpmamba-hf[triton]`)
    import triton
    import triton.language as tl
except ImportError as err:  # never reached through `kernels`, which imports a kernel only with triton installed
    raise ImportError(f"fpmamba-hf's Triton kernels need triton: {err}") from err

from ._triton_utils import kernel_chunk_len, pow2_at_least


@triton.jit
def _combine(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2): the map h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_lam(lam_ptr, mask_ptr, row, tok, dm, off, HAS_MASK: tl.constexpr):
    """lambda (fp32) at the tokens `row` (tok: inside the sequence) and channels (dm: inside d); 1 outside and at
    padded positions."""
    lam = tl.load(lam_ptr + off, mask=tok[:, None] & dm[None, :], other=1.0).to(tl.float32)
    if HAS_MASK:
        m = tl.load(mask_ptr + row, mask=tok, other=1)
        lam = tl.where(m[:, None] != 0, lam, 1.0)
    return lam


@triton.jit
def _diag_fwd_kernel(
    lam_ptr, u_ptr, h0_ptr, mask_ptr, h_ptr, hT_ptr,
    T, NC, Dm,
    HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
):
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    offs_l = tl.arange(0, BL)
    offs_d = pid_d * BD + tl.arange(0, BD)
    dm = offs_d < Dm
    if HAS_H0:
        carry = tl.load(h0_ptr + bi * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BD,), dtype=tl.float32)
    is_last = (offs_l == BL - 1)[:, None]
    for c in range(0, NC):
        t = c * BL + offs_l
        row = bi * T + t
        ok = (t < T)[:, None] & dm[None, :]
        off = row[:, None] * Dm + offs_d[None, :]
        lam = _load_lam(lam_ptr, mask_ptr, row, t < T, dm, off, HAS_MASK)
        u = tl.load(u_ptr + off, mask=ok, other=0.0).to(tl.float32)
        if HAS_MASK:
            m = tl.load(mask_ptr + row, mask=t < T, other=0)
            u = tl.where(m[:, None] != 0, u, 0.0)
        prod, local = tl.associative_scan((lam, u), 0, _combine)
        h = prod * carry[None, :] + local
        tl.store(h_ptr + off, h, mask=ok)
        carry = tl.sum(tl.where(is_last, h, 0.0), 0)  # the tail past T is neutral: the last row is the state
    tl.store(hT_ptr + bi * Dm + offs_d, carry, mask=dm)


@triton.jit
def _diag_bwd_kernel(
    lam_ptr, h0_ptr, mask_ptr, h_ptr, dh_ptr, dhT_ptr,
    dlam_ptr, du_ptr, dh0_ptr,
    T, NC, Dm,
    HAS_H0: tl.constexpr, HAS_MASK: tl.constexpr, HAS_DH: tl.constexpr, HAS_DHT: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr,
):
    pid_d = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    rev = BL - 1 - tl.arange(0, BL)  # row k of a tile is token BL - 1 - k of its chunk
    offs_d = pid_d * BD + tl.arange(0, BD)
    dm = offs_d < Dm
    if HAS_DHT:
        carry = tl.load(dhT_ptr + bi * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BD,), dtype=tl.float32)
    if HAS_H0:
        h0 = tl.load(h0_ptr + bi * Dm + offs_d, mask=dm, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros((BD,), dtype=tl.float32)
    is_first_token = (rev == 0)[:, None]
    for cc in range(0, NC):
        c = NC - 1 - cc
        t = c * BL + rev
        row = bi * T + t
        ok = (t < T)[:, None] & dm[None, :]
        off = row[:, None] * Dm + offs_d[None, :]
        # lambda_{t+1} (1 past the end): the factor that carries G_{t+1} back to G_t.
        lam_next = _load_lam(lam_ptr, mask_ptr, row + 1, t + 1 < T, dm, off + Dm, HAS_MASK)
        if HAS_DH:
            g = tl.load(dh_ptr + off, mask=ok, other=0.0).to(tl.float32)
        else:
            g = tl.zeros((BL, BD), dtype=tl.float32)
        prod, local = tl.associative_scan((lam_next, g), 0, _combine)
        G = prod * carry[None, :] + local  # dL/dh_t
        # h_{t-1}: the output one token back, the initial state at t = 0.
        ok_prev = (t >= 1)[:, None] & ok
        h_prev = tl.load(h_ptr + off - Dm, mask=ok_prev, other=0.0)
        h_prev = tl.where((t == 0)[:, None], h0[None, :], h_prev)
        du = G
        dlam = G * h_prev
        if HAS_MASK:
            real = tl.load(mask_ptr + row, mask=t < T, other=0)[:, None] != 0
            du = tl.where(real, du, 0.0)
            dlam = tl.where(real, dlam, 0.0)
        tl.store(du_ptr + off, du, mask=ok)
        tl.store(dlam_ptr + off, dlam, mask=ok)
        carry = tl.sum(tl.where(is_first_token, G, 0.0), 0)  # G of the chunk's first token
    any_token = (offs_d * 0 + T) > 0  # T = 0: no lambda_0, G_0 is dL/d final_state
    lam0 = tl.load(lam_ptr + bi * T * Dm + offs_d, mask=dm & any_token, other=1.0).to(tl.float32)
    if HAS_MASK:
        m0 = tl.load(mask_ptr + bi * T + offs_d * 0, mask=any_token, other=1)
        lam0 = tl.where(m0 != 0, lam0, 1.0)
    tl.store(dh0_ptr + bi * Dm + offs_d, lam0 * carry, mask=dm)


def _blocks(d: int, chunk_size: int) -> tuple[int, int]:
    """(BL, BD): the chunk (tokens per tile) and the channels per program."""
    return kernel_chunk_len(chunk_size), min(pow2_at_least(d, floor=16), 64)


class _DiagScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam, u, h0, mask, chunk_size):
        b, T, d = u.shape
        BL, BD = _blocks(d, chunk_size)
        NC = triton.cdiv(T, BL)
        h = torch.empty(b, T, d, device=u.device, dtype=torch.float32)
        hT = torch.empty(b, d, device=u.device, dtype=torch.float32)
        dummy = hT
        _diag_fwd_kernel[(triton.cdiv(d, BD), b)](
            lam, u, dummy if h0 is None else h0, dummy if mask is None else mask, h, hT,
            T, NC, d, HAS_H0=h0 is not None, HAS_MASK=mask is not None, BL=BL, BD=BD, num_warps=4,
        )
        ctx.save_for_backward(lam, h0, mask, h)
        ctx.h0_dtype = None if h0 is None else h0.dtype
        ctx.u_dtype = u.dtype
        ctx.chunk_size = chunk_size
        return h, hT

    @staticmethod
    def backward(ctx, dh, dhT):
        lam, h0, mask, h = ctx.saved_tensors
        b, T, d = h.shape
        BL, BD = _blocks(d, ctx.chunk_size)
        dev, f32 = h.device, torch.float32
        dlam = torch.empty(b, T, d, device=dev, dtype=f32)
        du = torch.empty(b, T, d, device=dev, dtype=f32)
        dh0 = torch.empty(b, d, device=dev, dtype=f32)
        dummy = dh0
        _diag_bwd_kernel[(triton.cdiv(d, BD), b)](
            lam, dummy if h0 is None else h0, dummy if mask is None else mask, h,
            dummy if dh is None else dh.contiguous(), dummy if dhT is None else dhT.contiguous(),
            dlam, du, dh0, T, triton.cdiv(T, BL), d,
            HAS_H0=h0 is not None, HAS_MASK=mask is not None, HAS_DH=dh is not None, HAS_DHT=dhT is not None,
            BL=BL, BD=BD, num_warps=4,
        )
        dh0 = None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype)
        return dlam.to(lam.dtype), du.to(ctx.u_dtype), dh0, None, None


def diag_scan_triton(
    lam: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal scan on the Triton kernels; see the module docstring for shapes. Differentiable in lam, u and
    initial_state. `chunk_size` (16, 32, 64 or 128; else ValueError): the tokens of one associative scan (a block
    size: results do not depend on it beyond rounding). Returns (h fp32 (b, T, d), final_state fp32 (b, d))."""
    kernel_chunk_len(chunk_size)
    if mask is not None:
        mask = mask.to(torch.int8).contiguous()
    return _DiagScan.apply(lam.contiguous(), u.contiguous(),
                            None if initial_state is None else initial_state.contiguous(), mask, chunk_size)

