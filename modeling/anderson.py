"""Anderson acceleration (type II) of the fixed-point solver's step, per row.

Each row b keeps the differences of its last m consecutive evaluations, dF_j = f_{j+1} - f_j and dG_j = g_{j+1} - g_j
with g = f(y) - y, and replaces the damped Picard step by the mixed one:
    gamma = argmin_gamma ||g_k - dG gamma||^2 + reg ||S^-1 gamma||^2      (S: Jacobi scaling of dG's columns)
    y_{k+1} = (f_k - dF gamma) - (1 - delta) (g_k - dG gamma)            (delta: the row's damping)
With gamma = 0 this is the damped Picard step delta f_k + (1 - delta) y_k. The small (m, m) least squares run in fp64
on a Gram matrix updated by one column per iteration, so a step reads the history three times whatever m (the new
column with the right-hand side, then the two mixes). A row whose mixed step
is not finite takes the Picard step instead, and a row that stalls restarts as a Picard row (`fixed_point.solve`,
`stop`). Rows are independent: no row's step reads another row's history.
Memory: 2 m + 2 copies of the iterate. The Triton decode kernel (ops/decode_triton.py) runs its own Picard loop, so with
this solver decode steps take the reference path (`kernels.decode_step`).
"""

from __future__ import annotations

import torch

# Tikhonov term on the unit-diagonal (Jacobi-scaled) Gram matrix: bounds its condition number by ~1/reg, so nearly
# collinear differences (a slowly converging row) give a damped gamma instead of a blown-up one.
ANDERSON_REG = 1e-8


class AndersonHistory:
    """The mixing memory of one solve: histories for every row of the batch, read and written for the active rows.

    Rows start together and never restart, so every active row has seen the same number of evaluations (`count`).
    """

    def __init__(self, y0: torch.Tensor, m: int) -> None:
        """y0: (batch, ...) the initial iterate (its dtype is the histories'); m: memory (differences kept)."""
        batch = y0.shape[0]
        n = y0[0].numel()
        self.m = m
        self.dF = y0.new_zeros(batch, m, n)
        self.dG = y0.new_zeros(batch, m, n)
        self.f_prev = y0.new_zeros(batch, n)
        self.g_prev = y0.new_zeros(batch, n)
        self.gram = torch.zeros(batch, m, m, dtype=torch.float64, device=y0.device)
        self.mixing = torch.ones(batch, dtype=torch.bool, device=y0.device)  # False: the row takes Picard steps
        self.count = 0

    def stop(self, rows: torch.Tensor, which: torch.Tensor) -> None:
        """Rows `rows` (r,) where `which` (r,) bool is True take Picard steps from now on (no host sync)."""
        self.mixing[rows] = self.mixing[rows] & ~which

    def step(
        self, rows: torch.Tensor, y: torch.Tensor, f: torch.Tensor, delta: torch.Tensor, picard: torch.Tensor
    ) -> torch.Tensor:
        """The next iterate of the rows `rows` (r,) of the batch.

        y, f: (r, ...) the iterate and f(y); delta: (r,) the rows' damping; picard: (r, ...) the damped Picard
        step (the fallback). Returns (r, ...)."""
        r = rows.numel()
        full = r == self.dF.shape[0]
        f = f.reshape(r, -1)
        g = f - y.reshape(r, -1)
        if self.count:
            slot = (self.count - 1) % self.m
            df, dg = f - self._take(self.f_prev, rows, full), g - self._take(self.g_prev, rows, full)
            self._put(self.dF, rows, full, df, slot)
            self._put(self.dG, rows, full, dg, slot)
        self._put(self.f_prev, rows, full, f)
        self._put(self.g_prev, rows, full, g)
        self.count += 1
        k = min(self.count - 1, self.m)
        if k == 0:
            return picard
        dF = self._take(self.dF, rows, full)[:, :k]  # (r, k, n)
        dG = self._take(self.dG, rows, full)[:, :k]
        # One pass over dG: the new Gram column (dG^T dg) and the right-hand side (dG^T g).
        dots = torch.bmm(dG, torch.stack([dg, g], dim=-1)).double()  # (r, k, 2)
        self.gram[rows, slot, :k] = dots[..., 0]
        self.gram[rows, :k, slot] = dots[..., 0]
        gamma = self._solve(self.gram[rows, :k, :k], dots[..., 1]).to(f.dtype)[:, None]  # (r, 1, k)
        mixed_f = f - torch.bmm(gamma, dF)[:, 0]
        mixed_g = g - torch.bmm(gamma, dG)[:, 0]
        step = mixed_f - (1 - delta[:, None]) * mixed_g
        ok = torch.isfinite(step).all(-1, keepdim=True) & self._take(self.mixing, rows, full)[:, None]
        return torch.where(ok, step, picard.reshape(r, -1)).view(picard.shape)

    @staticmethod
    def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """gamma (r, k) from the Jacobi-scaled, regularised normal equations; gram (r, k, k), rhs (r, k) fp64.
        A zero column (two equal evaluations) gets gamma 0; a failed solve gives non-finite values (-> Picard)."""
        diag = gram.diagonal(dim1=-2, dim2=-1)
        s = torch.where(diag > 0, diag.clamp_min(1e-300).rsqrt(), torch.zeros_like(diag))
        scaled = gram * s[:, :, None] * s[:, None, :]
        scaled = scaled + ANDERSON_REG * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        z, _ = torch.linalg.solve_ex(scaled, (rhs * s)[..., None])
        return z[..., 0] * s

    @staticmethod
    def _take(t: torch.Tensor, rows: torch.Tensor, full: bool) -> torch.Tensor:
        return t if full else t[rows]  # no gather while every row iterates

    @staticmethod
    def _put(t: torch.Tensor, rows: torch.Tensor, full: bool, value: torch.Tensor, slot: int | None = None) -> None:
        target = t if slot is None else t[:, slot]
        if full:
            target.copy_(value)
        elif slot is None:
            t[rows] = value
        else:
            t[rows, slot] = value
