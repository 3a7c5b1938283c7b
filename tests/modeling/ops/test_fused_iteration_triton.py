"""Fused fixed-point iteration (`kernels.fused_iteration`) == the layer's composed map under Triton's interpreter (fp32,
tiny shapes; see conftest.py): every mixer the kernels cover, every mixer input, hidden-dependent dt, time-step
limits, no B/C norm, one and several norm groups, left padding, a carried state and y*, strict row subsets (frozen
rows), T = 1 and lengths across the chunk; whole-layer solves with equal per-row iteration counts (with damping); a
training step's gradients; a NaN reported with the layer's name. One case per shape / mixer.

The reference is the layer's own composed map: the iteration function `f` a layer hands the solver runs the fused
kernels without autograd and the composed PyTorch code with it, so one captured `f` evaluated both ways on the same
iterate compares the two paths exactly where they differ.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.closeness import assert_close, assert_equal
from tests.modeling.core import build_layer

pytestmark = pytest.mark.triton_interpreter


def _layer(seed: int, **overrides):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=32, state_size=16, head_dim=8, n_groups=2, chunk_size=16, mixer_rank=2,
               mixer_reflection_scale=2, fp_tol=1e-6, fp_max_iter=4, fp_max_iter_eval=4)
    cfg.update(overrides)
    layer = build_layer("mamba2", **cfg)
    with torch.no_grad():  # y-projections away from their zero initialisation, so every y-path matters
        layer.bc_y_proj.weight.normal_(0, 0.1)
        if layer.dt_y_proj is not None:
            layer.dt_y_proj.weight.normal_(0, 0.1)
        layer.dt_bias.add_(torch.randn_like(layer.dt_bias))
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def _capture_f(layer, hs, attention_mask=None, state=None):
    """The layer's iteration map for this call, reached as an object (`prelude` + `iteration_map`): with the Triton
    backend and no autograd it runs the fused kernels, with autograd the composed map."""
    mask = None if attention_mask is None else attention_mask.to(torch.bool)
    with torch.no_grad():
        pre = layer.prelude(hs, mask, state)
        return layer.iteration_map(pre, layer.solver_settings())


def _use(backend: str) -> None:
    os.environ["FPMAMBA_KERNELS"] = backend  # restored after each test (conftest.py)


def _map_case(seed, b, T, masked, with_state, **overrides):
    parts = [overrides.get("mixer_type", "householder"), f"b{b}", f"T{T}"]
    parts += [name for name, on in (("masked", masked), ("state", with_state)) if on]
    parts += [f"{k}={v}" for k, v in overrides.items() if k != "mixer_type"]
    case_id = "-".join(parts).replace(" ", "")
    return pytest.param(seed, b, T, masked, with_state, overrides, id=case_id)


MAP_CASES = [
    # seed, b, T, masked, with_state, overrides
    _map_case(0, 3, 20, True, False),
    _map_case(1, 3, 17, False, True, mixer_type="dplr", mixer_rank=3, dt_hidden_dependence=True,
              mixer_activation="tanh"),
    _map_case(2, 1, 1, False, False, mixer_type="none", norm_per_group=False),
    _map_case(3, 3, 40, True, True, mixer_input="sum", mixer_activation="relu", bc_norm=False,
              time_step_limit=(0.01, 0.5)),
    _map_case(4, 3, 9, False, False, mixer_input="x", mixer_activation="identity", mixer_rank=1, n_groups=1),
]


@pytest.mark.parametrize("seed, b, T, masked, with_state, overrides", MAP_CASES)
def test_fused_map_equals_composed_map(seed, b, T, masked, with_state, overrides):
    """f(y) fused (no grad) == f(y) composed (grad), on all rows and on strict subsets; residual included."""
    from fpmamba_core.backbones import LayerState
    from fpmamba_core.fixed_point import relative_residual

    _use("triton")
    layer = _layer(seed, **overrides)
    hs = torch.randn(b, T, layer.settings.hidden_size)
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.long)
        mask[0, : T // 3] = 0  # left padding of row 0
    state = None
    if with_state:
        state = LayerState(torch.randn(b, layer.conv_dim, layer.conv_kernel_size),
                           torch.randn(b, layer.num_heads, layer.head_dim, layer.ssm_state_size) * 0.3,
                           torch.randn(b, layer.d_inner))
    f = _capture_f(layer, hs, attention_mask=mask, state=state)
    # The solver passes every row (arange) or a strict subset of them, in order.
    subsets = [torch.arange(b)] + ([torch.tensor([0, b - 1]), torch.tensor([b - 2])] if b > 2 else [])
    for rows in subsets:
        y = torch.randn(rows.numel(), T, layer.d_inner)
        with torch.no_grad():
            fused = f(y, rows)
        yhat, (H,), res = fused.yhat, fused.aux, fused.residual
        assert f.fused is not None and res is not None, "without autograd the fused kernels serve the map"
        with torch.enable_grad():
            out = f(y, rows)
        assert out.residual is None, "with autograd the layer must use the composed map"
        ref, (H_ref,) = out.yhat, out.aux
        where = f"rows {rows.tolist()}"
        assert_close(f"yhat, {where}", yhat, ref.detach(), 1e-5)
        assert_close(f"state, {where}", H, H_ref.detach(), 1e-5)
        assert_close(f"residual, {where}", res, relative_residual(ref.detach(), y, 1e-6), 1e-4)


def check_layer_solve(seed: int, **overrides) -> None:
    """A whole layer forward (no grad): Triton (fused iterations + scan) == reference, with equal per-row
    iteration counts under a tolerance stop, rows stopping at different iterations."""
    layer = _layer(seed, fp_tol=1e-3, fp_max_iter_eval=40, **overrides).eval()
    hs = torch.randn(3, 21, layer.settings.hidden_size)
    hs[1] *= 3.0  # rows of different difficulty
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[2, :4] = 0
    outs = {}
    for backend in ("reference", "triton"):
        _use(backend)
        with torch.no_grad():
            outs[backend] = layer(hs, attention_mask=mask, return_state=True)
    t, r = outs["triton"], outs["reference"]
    assert_equal("iterations", t.iterations, r.iterations)
    assert_close("layer output", t.out, r.out, 1e-4)
    assert_close("final state", t.state.ssm, r.state.ssm, 1e-4)
    assert_close("last y*", t.state.y_prev, r.state.y_prev, 1e-4)


SOLVE_CASES = [
    pytest.param(5, {}, id="householder"),
    pytest.param(6, dict(mixer_type="dplr", fp_damping=0.8, fp_damping_patience=2), id="dplr-damped"),
    # the fused map returns its own residual: Anderson's step (modeling/anderson.py) on it, with damping
    pytest.param(5, dict(fp_solver="anderson", fp_anderson_m=3, fp_damping=0.8, fp_damping_patience=2),
                 id="householder-anderson-damped"),
    # the chunked solve: each chunk's fused map continues the state the chunk before left (chunks 6, 6, 6, 3, the
    # first one half padding in row 2); chunks of one token continue it through the decode kernel
    pytest.param(5, dict(fp_solve_chunk=6), id="householder-chunks-of-6"),
    pytest.param(5, dict(fp_solve_chunk=1), id="householder-chunks-of-1"),
]


@pytest.mark.parametrize("seed, overrides", SOLVE_CASES)
def test_fused_layer_solve(seed, overrides):
    check_layer_solve(seed, **overrides)


@pytest.mark.parametrize("seed, overrides", [pytest.param(7, {}, id="householder")])
def test_fused_layer_training_step(seed, overrides):
    """Training mode (fused iterations without autograd, then the composed one-step application with it):
    loss gradients on the Triton path equal the reference path's."""
    layer = _layer(seed, **overrides).train()
    hs = torch.randn(2, 19, layer.settings.hidden_size)
    grads = {}
    for backend in ("reference", "triton"):
        _use(backend)
        layer.zero_grad()
        out = layer(hs)
        out.out.square().mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        grads[backend]["iterations"] = out.iterations.float()
    assert grads["triton"].keys() == grads["reference"].keys()
    for name, ref in grads["reference"].items():
        assert_close(f"grad {name}", grads["triton"][name], ref, 1e-4)


def test_fused_nan_reported():
    """A non-finite iterate makes the fused residual NaN, and the solver raises naming the layer."""
    _use("triton")
    layer = _layer(0)
    f = _capture_f(layer, torch.randn(2, 5, 32))
    y = torch.randn(2, 5, layer.d_inner)
    y[1, 3, 7] = float("nan")
    with torch.no_grad():
        res = f(y, torch.arange(2)).residual
    assert torch.isfinite(res[0]) and torch.isnan(res[1]), res
    with torch.no_grad():
        layer.out_proj.weight.fill_(float("nan"))
        layer.in_proj.weight[:5].fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="layer 0"):
        layer(torch.randn(2, 5, 32))
