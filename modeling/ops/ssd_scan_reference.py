"""Pure-PyTorch reference of Mamba-2's SSD scan: the executable spec of `ssd_scan_triton`, and the CPU path.

Shapes (Mamba-2 layout):
    x      (batch, T, heads, head_dim)        input of the scan (the mixed input x~)
    dt     (batch, T, heads)                  step size, already softplus'ed and clamped
    A      (heads,)                           negative decay rate per head
    B, C   (batch, T, groups, state)          shared by the heads of a group
    D      (heads,)                           skip
    state  (batch, heads, head_dim, state)    fp32 recurrent state H
Recurrence: H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T ;  y_t = H_t C_t + D x_t.
All accumulation is fp32; outputs are fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..precision import acc


def _heads_of_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, T, g, n) -> (b, T, heads, n): each group's B/C serves heads // g consecutive heads."""
    groups = t.shape[2]
    return t.repeat_interleave(heads // groups, dim=2)


def _prepare(x, dt, B, C, mask):
    x, dt, B, C = acc(x), acc(dt), acc(B), acc(C)
    if mask is not None:
        # A padded position must leave the state untouched: zero input and dt (decay exp(0) = 1).
        m = mask.to(x.dtype)
        x = x * m[:, :, None, None]
        dt = dt * m[:, :, None]
    return x, dt, _heads_of_groups(B, x.shape[2]), _heads_of_groups(C, x.shape[2])


def ssd_scan_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence token by token. Returns (y (b, T, h, p) fp32, final_state (b, h, p, n) fp32)."""
    x, dt, Bh, Ch = _prepare(x, dt, B, C, mask)
    b, T, h, p = x.shape
    n = Bh.shape[-1]
    H = x.new_zeros(b, h, p, n) if initial_state is None else acc(initial_state).clone()
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * acc(A))  # (b, h)
        H = decay[:, :, None, None] * H + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", H, Ch[:, t]))
    y = torch.stack(ys, dim=1) if T > 0 else x.new_zeros(b, 0, h, p)
    if D is not None:
        y = y + acc(D)[None, None, :, None] * x
    return y, H


@dataclass
class ScanDecay:
    """The part of the chunked SSD scan that depends only on dt, A and the mask (docs/method.md, "The SSD scan"):
    computed once per layer call when dt does not depend on the iterate, instead of once per iteration.

    dt (b, c, L, h) the masked, padded steps; decay_ij (b, c, h, L, L) exp(a_cum_i - a_cum_j) for i >= j (0 above);
    decay_to_end (b, c, h, L); chunk_decay (b, c, h); decay_in (b, c, h, L) exp(a_cum); T: the unpadded length.
    """

    dt: torch.Tensor
    decay_ij: torch.Tensor
    decay_to_end: torch.Tensor
    chunk_decay: torch.Tensor
    decay_in: torch.Tensor
    T: int

    def select(self, rows: torch.Tensor) -> "ScanDecay":
        """The decay of the batch rows `rows`."""
        return ScanDecay(self.dt[rows], self.decay_ij[rows], self.decay_to_end[rows], self.chunk_decay[rows],
                         self.decay_in[rows], self.T)


def ssd_scan_decay(
    dt: torch.Tensor, A: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int = 64
) -> ScanDecay:
    """The dt-only part of `ssd_scan_chunked` for dt (b, T, h), A (h,), mask (b, T) | None."""
    dt = acc(dt)
    if mask is not None:
        dt = dt * mask.to(dt.dtype)[:, :, None]  # a padded position leaves the state untouched: decay exp(0) = 1
    b, T, h = dt.shape
    L = chunk_size
    pad = (-T) % L
    if pad:
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (T + pad) // L
    dtc = dt.view(b, c, L, h)
    a = (dtc * acc(A)).permute(0, 1, 3, 2)  # (b, c, h, L) log-decay per step
    a_cum = torch.cumsum(a, dim=-1)
    # Decay from step j to step i inside a chunk: exp(a_cum_i - a_cum_j) for i >= j.
    seg = a_cum[..., :, None] - a_cum[..., None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=dt.device).tril()
    decay_ij = torch.exp(seg.masked_fill(~causal, float("-inf")))
    return ScanDecay(dtc, decay_ij, torch.exp(a_cum[..., -1:] - a_cum), torch.exp(a_cum[..., -1]), torch.exp(a_cum), T)


def ssd_scan_chunked(
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
    """Mamba-2's chunked (SSD) form: quadratic inside a chunk, recurrent across chunks.

    Same signature and results as `ssd_scan_sequential`; `chunk_size` need not divide T. `decay`: the dt-only part
    (`ssd_scan_decay` of the same dt, A, mask and chunk_size), when the caller has it already.
    """
    if decay is None:
        decay = ssd_scan_decay(dt, A, mask, chunk_size)
    x, B, C = acc(x), acc(B), acc(C)
    if mask is not None:
        x = x * mask.to(x.dtype)[:, :, None, None]  # with dt zeroed in `decay`: a padded position adds nothing
    b, T, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    hg = h // g
    L = chunk_size
    pad = (-T) % L
    if pad:
        # Zero x on the tail (dt is zero there too): state unchanged, outputs discarded below.
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // L
    # Heads stay grouped (b, c, g, hg, ...): a group's B and C serve its hg heads, so C B^T is computed once per
    # group, not once per head, and every contraction is a batched matmul (no einsum permute-copies).
    Bg = B.view(b, c, L, g, n).permute(0, 1, 3, 2, 4)  # (b, c, g, L, n)
    Cg = C.view(b, c, L, g, n).permute(0, 1, 3, 2, 4)
    xdt = (x.view(b, c, L, h, p) * decay.dt[..., None]).view(b, c, L, g, hg, p).permute(0, 1, 3, 4, 2, 5)
    # Inside a chunk: y_i = sum_{j <= i} (C_i . B_j) decay_ij dt_j x_j.
    scores = (Cg @ Bg.transpose(-1, -2))[:, :, :, None] * decay.decay_ij.view(b, c, g, hg, L, L)
    y_diag = scores @ xdt  # (b, c, g, hg, L, p)

    # State contributed by each chunk alone, at its end: sum_j decay_to_end_j dt_j x_j B_j^T.
    weighted = xdt * decay.decay_to_end.view(b, c, g, hg, L, 1)
    chunk_states = (weighted.transpose(-1, -2).reshape(b, c, g, hg * p, L) @ Bg).view(b, c, h, p, n)

    # Recurrence across chunks (few steps): state entering each chunk.
    H = x.new_zeros(b, h, p, n) if initial_state is None else acc(initial_state)
    entering = []
    for k in range(c):
        entering.append(H)
        H = decay.chunk_decay[:, k, :, None, None] * H + chunk_states[:, k]
    H_in = torch.stack(entering, dim=1).view(b, c, g, hg * p, n)

    # From the state entering the chunk: y_i = decay_in_i C_i . H_in.
    y_off = (Cg @ H_in.transpose(-1, -2)).view(b, c, g, L, hg, p).transpose(3, 4)
    y = y_diag + y_off * decay.decay_in.view(b, c, g, hg, L, 1)
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * L, h, p)[:, :T]
    if D is not None:
        y = y + acc(D)[None, None, :, None] * x[:, :T]
    return y, H
