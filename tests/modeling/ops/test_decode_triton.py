"""Triton decode step == `decode_steps.ssd_decode_step` under Triton's interpreter (fp32, tiny shapes; see
conftest.py): outputs, new state, per-row iteration counts (rows stop on their own) and residuals, for householder /
dplr / none, with damping + patience, several norm groups and n_groups > 1; a layer's prefill and decode tokens on
both paths; the dispatch (kronecker falls back). One case per shape / mixer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.closeness import assert_close, assert_equal
from tests.modeling.core import build_layer, solver_settings

pytestmark = pytest.mark.triton_interpreter


def _case(kind, b, h, p, g, n, r, norm_groups, max_iter, tol, damping, patience, coef_scale, note=""):
    case_id = f"{kind}-b{b}-h{h}-p{p}-g{g}-n{n}-r{r}-ng{norm_groups}-cap{max_iter}-tol{tol:g}-damp{damping:g}" \
              f"-pat{patience}-coef{coef_scale:g}" + (f"-{note}" if note else "")
    return pytest.param(kind, b, h, p, g, n, r, norm_groups, max_iter, tol, damping, patience, coef_scale, id=case_id)


CASES = [
    # kind, b, h, p, g, n, r, norm_groups, max_iter, tol, damping, patience, coef_scale
    _case("householder", 3, 4, 16, 2, 16, 2, 2, 30, 1e-5, 1.0, 5, 0.5),
    _case("dplr", 4, 2, 16, 1, 32, 3, 1, 40, 1e-4, 0.9, 2, 1.9),
    _case("none", 2, 3, 8, 3, 16, 1, 3, 30, 1e-5, 1.0, 5, 0.5),
    _case("householder", 4, 2, 16, 1, 16, 1, 1, 3, 1e-9, 0.7, 1, 0.5, note="all-rows-at-cap"),
]


@pytest.mark.parametrize("kind, b, h, p, g, n, r, norm_groups, max_iter, tol, damping, patience, coef_scale", CASES)
def test_decode_matches_reference(kind, b, h, p, g, n, r, norm_groups, max_iter, tol, damping, patience, coef_scale):
    """Outputs, new state, per-row iteration counts and residuals agree with `ssd_decode_step`
    (the kernel called through its entry point `kernels.decode_step_kernel`)."""
    from fpmamba_core.decode_steps import ssd_decode_step
    from fpmamba_core.kernels import decode_step_kernel
    from fpmamba_core.mixers import MixerFactors, RankOneFactors

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
        factors = RankOneFactors(kind, u=u, coef=torch.rand(b, r, generator=gen) * coef_scale)
    w = torch.rand(d, generator=gen) + 0.5
    st = solver_settings(max_iter, tol, damping=damping, damping_patience=patience)
    args = (x, z, dt, A, B, C, D, state, factors, w, 1e-5, d // norm_groups, st)
    out_t = decode_step_kernel(*args)
    out_r = ssd_decode_step(*args)
    for name in ("y_out", "y_star", "state"):
        t, ref = getattr(out_t, name), getattr(out_r, name)
        assert_close(name, t, ref, 1e-4, dtype=torch.float32)
    assert_equal("iterations", out_t.iterations, out_r.iterations)
    assert_close("residual", out_t.residual, out_r.residual, 1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["householder"])
def test_layer_decode_and_prefill_triton_equal_reference(kind):
    """A tiny Mamba2Layer: prefill (scan kernel) then two decode tokens (decode kernel) under
    FPMAMBA_KERNELS=triton equal the reference path."""
    import os

    torch.manual_seed(0)
    layer = build_layer("mamba2", hidden_size=32, state_size=16, head_dim=16, n_groups=2, chunk_size=16,
                        mixer_type=kind, fp_tol=1e-5, fp_max_iter_eval=6).eval()
    with torch.no_grad():
        layer.bc_y_proj.weight.normal_(0, 0.02)
    hs = torch.randn(2, 20, 32)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :5] = 0
    steps = torch.randn(2, 2, 32)
    outs = {}
    for backend in ("reference", "triton"):
        os.environ["FPMAMBA_KERNELS"] = backend  # restored after the test (conftest.py)
        with torch.no_grad():
            o = layer(hs, attention_mask=mask, return_state=True)
            res = {"prefill out": o.out}
            st = o.state
            for t in range(2):
                o2 = layer(steps[:, t:t + 1], state=st, return_state=True)
                res[f"token {t} out"], res[f"token {t} state"] = o2.out, o2.state.ssm
                st = o2.state
        outs[backend] = res
    for name, ref in outs["reference"].items():
        assert_close(name, outs["triton"][name], ref, 1e-4)


def test_kronecker_decode_falls_back_to_reference(monkeypatch):
    """kernels.decode_step routes a kronecker mixer to the reference (no kernel for it): any use of the kernel
    would fail."""
    import fpmamba_core.ops.decode_triton as dk
    from fpmamba_core import kernels
    from fpmamba_core.decode_steps import ssd_decode_step
    from fpmamba_core.mixers import KroneckerFactors

    monkeypatch.setattr(dk, "decode_step_triton", None)
    b, h, p, n, d = 2, 2, 8, 16, 16
    k1 = torch.rand(b, 4, 4) * 0.1
    k2 = torch.rand(b, 4, 4) * 0.1
    fac = KroneckerFactors("kronecker", k1=k1, k2=k2, coef=torch.ones(b))
    args = (torch.randn(b, h, p), torch.randn(b, d), torch.rand(b, h), -torch.rand(h), torch.randn(b, 1, n),
            torch.randn(b, 1, n), torch.randn(h), torch.randn(b, h, p, n), fac, torch.ones(d), 1e-5, d,
            solver_settings(5, 1e-5))
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    out = kernels.decode_step(*args)
    ref = ssd_decode_step(*args)
    for field in dataclasses.fields(ref):
        assert_equal(field.name, getattr(out, field.name), getattr(ref, field.name))
