"""Kernel-vs-reference checks of the decode step, executed under TRITON_INTERPRET=1 (see _triton_interp.py)."""

from __future__ import annotations

import torch

from modeling.fixed_point import SolverSettings
from modeling.mixers import MixerFactors
from modeling.ops import reference
from modeling.ops.decode import decode_step_triton


def check_decode(kind: str, b: int, h: int, p: int, g: int, n: int, r: int, norm_groups: int,
                 max_iter: int, tol: float, damping: float, patience: int, coef_scale: float = 0.5) -> None:
    """Outputs, new state, per-row iteration counts and residuals agree with `reference.decode_step`."""
    gen = torch.Generator().manual_seed(b * 13 + h + r)
    rn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    d = h * p
    x, z = rn(b, h, p), rn(b, d)
    dt = torch.nn.functional.softplus(rn(b, h) - 1)
    A = -torch.rand(h, generator=gen) * 2 - 0.2
    B = torch.nn.functional.normalize(rn(b, g, n), dim=-1)
    C = torch.nn.functional.normalize(rn(b, g, n), dim=-1)
    D = rn(h)
    state = rn(b, h, p, n) * 0.5
    if kind == "none":
        factors = MixerFactors("none")
    else:
        u = torch.nn.functional.normalize(rn(b, r, d), dim=-1)
        factors = MixerFactors(kind, u=u, coef=torch.rand(b, r, generator=gen) * coef_scale)
    w = torch.rand(d, generator=gen) + 0.5
    st = SolverSettings(max_iter=max_iter, tol=tol, damping=damping, damping_patience=patience)
    args = (x, z, dt, A, B, C, D, state, factors, w, 1e-5, d // norm_groups, st)
    out_t = decode_step_triton(*args)
    out_r = reference.decode_step(*args)
    for name, t, ref in zip(["y_out", "y_star", "state"], out_t[:3], out_r[:3]):
        assert t.shape == ref.shape and t.dtype == torch.float32, name
        err = float((t - ref).abs().max() / (ref.abs().max() + 1e-6))
        assert err < 1e-4, f"{kind} {name}: relative max error {err:.2e}"
    assert torch.equal(out_t[3], out_r[3]), f"{kind} iterations {out_t[3].tolist()} != {out_r[3].tolist()}"
    assert torch.allclose(out_t[4], out_r[4], rtol=1e-3, atol=1e-6), f"{kind} residual"
