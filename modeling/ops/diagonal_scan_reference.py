"""The first-order diagonal scan h_t = lambda_t * h_{t-1} + u_t (per channel): the spec and its chunked form.

Shapes: lam, u (batch, T, d); initial_state (batch, d) or None (zero); mask (batch, T) bool or None (True = real
token). A padded position leaves the state untouched (lambda = 1, u = 0 there), so its output is the state that
passes through it. Returns (h (batch, T, d), final state (batch, d)), in the accumulation precision (fp32, fp64
kept). Used by the vector FP-RNN (modeling/backbones/rnn.py; docs/method.md, "FP-RNN backbone").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import acc


def _prepare(
    lam: torch.Tensor, u: torch.Tensor, initial_state: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lam, u in the accumulation precision with padded positions made neutral, and the initial state (b, d)."""
    lam, u = acc(lam), acc(u)
    if mask is not None:
        m = mask[:, :, None]
        lam = torch.where(m, lam, torch.ones_like(lam))
        u = u * m.to(u.dtype)
    h0 = u.new_zeros(u.shape[0], u.shape[2]) if initial_state is None else acc(initial_state)
    return lam, u, h0


def diag_scan_sequential(
    lam: torch.Tensor, u: torch.Tensor, initial_state: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence token by token (the spec). See the module docstring for shapes."""
    lam, u, h = _prepare(lam, u, initial_state, mask)
    hs = []
    for t in range(u.shape[1]):
        h = lam[:, t] * h + u[:, t]
        hs.append(h)
    return (torch.stack(hs, dim=1) if hs else u.new_zeros(u.shape)), h


def diag_scan_chunked(
    lam: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same results as `diag_scan_sequential` (up to rounding), in blocks of `chunk_size` tokens (need not divide T).

    Inside a block, a doubling (Hillis-Steele) scan of the pairs (prod lambda, partial state) in log2(chunk_size)
    steps; across blocks, the recurrence on the blocks' entering states. Only products and sums of lambda, no logs
    or divisions: exact for any lambda, 0 and negative values included.
    """
    lam, u, h = _prepare(lam, u, initial_state, mask)
    b, T, d = u.shape
    L = max(1, min(chunk_size, T))
    pad = (-T) % L
    if pad:  # neutral tail: the state passes through, the outputs are dropped below
        lam = F.pad(lam, (0, 0, 0, pad), value=1.0)
        u = F.pad(u, (0, 0, 0, pad))
    c = (T + pad) // L
    decay, local = lam.view(b, c, L, d), u.view(b, c, L, d)
    # After the step of offset k, position i holds (prod of lambda over (i - 2k, i], state from zero over that span).
    k = 1
    while k < L:
        local = local + decay * F.pad(local[:, :, :-k], (0, 0, k, 0))
        decay = decay * F.pad(decay[:, :, :-k], (0, 0, k, 0), value=1.0)
        k *= 2
    entering = []
    for j in range(c):
        entering.append(h)
        h = local[:, j, -1] + decay[:, j, -1] * h
    out = local + decay * torch.stack(entering, dim=1)[:, :, None]
    return out.reshape(b, c * L, d)[:, :T], h
