"""Pure-PyTorch reference of the Mamba-1 selective scan (docs/method.md, "Mamba-1 backbone"): the spec of
`selective_scan_triton` and the CPU path.

Shapes (Mamba-1 layout, token-major):
    x      (batch, T, d)          input of the scan (the mixed input x~)
    dt     (batch, T, d)          step size per channel, already softplus'ed and clamped
    A      (d, n)                 negative decay rate per channel and state entry
    B, C   (batch, T, n)          shared by every channel
    D      (d,)                   skip
    state  (batch, d, n)          fp32 recurrent state H
Recurrence: H_t = exp(dt_t A) * H_{t-1} + (dt_t x_t) B_t^T ;  y_t = H_t C_t + D x_t   (* elementwise on (d, n)).
A padded position (mask False) leaves the state untouched: its dt and x are zeroed (decay exp(0) = 1, no input).
All accumulation is fp32 (fp64 stays fp64); outputs are fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..precision import acc


def _prepare(x, dt, B, C, mask):
    x, dt, B, C = acc(x), acc(dt), acc(B), acc(C)
    if mask is not None:
        m = mask.to(x.dtype)[:, :, None]
        x, dt = x * m, dt * m
    return x, dt, B, C


def selective_scan_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence token by token (the spec). Returns (y (b, T, d) fp32, final_state (b, d, n) fp32)."""
    x, dt, B, C = _prepare(x, dt, B, C, mask)
    b, T, d = x.shape
    A = acc(A)
    H = x.new_zeros(b, d, A.shape[-1]) if initial_state is None else acc(initial_state)
    ys = []
    for t in range(T):
        H = torch.exp(dt[:, t, :, None] * A) * H + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", H, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + acc(D) * x
    return y, H


def selective_scan_chunked(
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
    """Same signature and results as `selective_scan_sequential`, in about 2 sqrt(T) vectorised steps.

    T is cut into chunks of `chunk_size` tokens (default ceil(sqrt(T)), which minimises the steps; it need not
    divide T). (1) Every chunk runs the recurrence from a zero state, all chunks at once, step by step inside the
    chunk. (2) The states entering the chunks follow from their end states, chunk by chunk. (3) Each position adds
    what its chunk's entering state contributes: C_t . (exp(A cum_t) * H_in), cum_t = the chunk's dt summed up to t.
    Every factor is a product of decays <= 1, so no ratio of decays is ever formed: stable for any dt and A (the
    cumulative log-decay trick, exp(-A cum) inside a chunk, overflows for large dt |A|).
    """
    x, dt, B, C = _prepare(x, dt, B, C, mask)
    b, T, d = x.shape
    A = acc(A)
    n = A.shape[-1]
    L = chunk_size or math.isqrt(T - 1) + 1
    pad = (-T) % L
    if pad:  # zero dt and x on the tail: the state is unchanged, the outputs are dropped below
        x, dt, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (x, dt, B, C))
    c = (T + pad) // L
    u = (dt * x).view(b, c, L, d)
    dtc = dt.view(b, c, L, d)
    Bc, Cc = B.view(b, c, L, n), C.view(b, c, L, n)

    # (1) inside every chunk from zero, all chunks in parallel: L steps on (b, c, d, n).
    decay = torch.exp(dtc[..., None] * A)  # (b, c, L, d, n)
    H = x.new_zeros(b, c, d, n)
    local = []
    for step in range(L):
        H = decay[:, :, step] * H + u[:, :, step, :, None] * Bc[:, :, step, None, :]
        local.append(torch.einsum("bcdn,bcn->bcd", H, Cc[:, :, step]))
    y = torch.stack(local, dim=2)  # (b, c, L, d)

    # (2) the state entering each chunk: c steps on (b, d, n).
    chunk_decay = torch.exp(dtc.sum(2)[..., None] * A)  # (b, c, d, n)
    state = x.new_zeros(b, d, n) if initial_state is None else acc(initial_state)
    entering = []
    for k in range(c):
        entering.append(state)
        state = chunk_decay[:, k] * state + H[:, k]
    H_in = torch.stack(entering, dim=1)  # (b, c, d, n)

    # (3) the entering state's share of every output.
    carried = torch.exp(torch.cumsum(dtc, dim=2)[..., None] * A) * H_in[:, :, None]  # (b, c, L, d, n)
    y = (y + torch.einsum("bcldn,bcln->bcld", carried, Cc)).reshape(b, c * L, d)[:, :T]
    if D is not None:
        y = y + acc(D) * x[:, :T]
    return y, state
