"""Anderson acceleration (fp_solver="anderson"): the same fixed point as Picard with every mixer, per-row
independence, unchanged gradients, the Picard fallback, knob validation. On the fused Triton map: the
"householder-anderson-damped" case of tests/modeling/ops/test_fused_iteration_triton.py."""

import pytest
import torch
from fpmamba_core.anderson import AndersonHistory
from fpmamba_core.backbones import Mamba2Layer
from fpmamba_core.fixed_point import MapOutput, solve
from fpmamba_core.mixers import MIXERS

from tests.modeling.core import build_layer, solver_settings

TINY = dict(hidden_size=16, state_size=4, head_dim=8, chunk_size=4, mixer_rank=2, fp_max_iter=400,
            fp_max_iter_eval=400, fp_train_quantile=1.0)


def _layers(**overrides) -> dict[str, Mamba2Layer]:
    """A Picard and an Anderson layer with the same fp64 weights (B/C read the iterate)."""
    torch.manual_seed(0)
    picard = build_layer(Mamba2Layer, **{**TINY, **overrides}).double()
    with torch.no_grad():
        picard.bc_y_proj.weight.normal_(std=0.3)
    anderson = build_layer(Mamba2Layer, **{**TINY, **overrides, "fp_solver": "anderson"}).double()
    anderson.load_state_dict(picard.state_dict())
    return {"picard": picard, "anderson": anderson}


def _linear_map(seed: int, b: int, d: int):
    """f(y)_b = W_b y_b + c_b with symmetric W_b, eigenvalues in (-0.97, 0.97): slow for Picard."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(b, d, d, generator=g, dtype=torch.float64))
    W = Q @ torch.diag_embed(torch.rand(b, d, generator=g, dtype=torch.float64) * 1.94 - 0.97) @ Q.mT
    c = torch.randn(b, d, generator=g, dtype=torch.float64)

    def f(y, rows):
        yhat = torch.einsum("bij,bj->bi", W[rows], y) + c[rows]
        return MapOutput(yhat, (2 * yhat,))

    exact = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - W, c)
    return f, exact


def test_anderson_finds_the_exact_fixed_point_in_fewer_iterations():
    f, exact = _linear_map(0, 3, 24)
    y0 = torch.zeros(3, 24, dtype=torch.float64)
    runs = {s: solve(f, y0, solver_settings(5000, 1e-10, solver=s, anderson_m=8))
            for s in ("picard", "anderson")}
    for res in runs.values():
        torch.testing.assert_close(res.y_star, exact, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(res.aux[0], 2 * res.y_out)
    assert bool((runs["anderson"].iterations * 2 < runs["picard"].iterations).all())


def test_non_finite_anderson_step_falls_back_to_picard(monkeypatch):
    f, _ = _linear_map(1, 3, 10)
    y0 = torch.zeros(3, 10, dtype=torch.float64)
    picard = solve(f, y0, solver_settings(3000, 1e-9))
    monkeypatch.setattr(AndersonHistory, "_solve", staticmethod(lambda gram, rhs: torch.full_like(rhs, torch.nan)))
    fallback = solve(f, y0, solver_settings(3000, 1e-9, solver="anderson"))
    assert torch.equal(fallback.iterations, picard.iterations)
    assert torch.equal(fallback.y_star, picard.y_star)


@pytest.mark.parametrize("mixer_type", list(MIXERS))
def test_same_fixed_point_as_picard_with_every_mixer(mixer_type):
    layers = _layers(mixer_type=mixer_type, fp_tol=1e-11)
    x = torch.randn(3, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        outs = {name: layer.eval()(x, return_state=True) for name, layer in layers.items()}
    p, a = outs["picard"], outs["anderson"]
    torch.testing.assert_close(a.out, p.out, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(a.state.y_prev, p.state.y_prev, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(a.state.ssm, p.state.ssm, rtol=1e-8, atol=1e-9)
    assert bool((a.residual < 1e-11).all()) and bool((a.iterations < 400).all())


def test_rows_do_not_depend_on_the_batch():
    layer = _layers(fp_tol=1e-10, mixer_reflection_scale=2)["anderson"].eval()
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    x[1] *= 4.0  # a harder row: it iterates longer than the others
    with torch.no_grad():
        together = layer(x, return_state=True)
        assert together.iterations.unique().numel() > 1
        for i in range(3):
            alone = layer(x[i : i + 1], return_state=True)
            assert alone.iterations[0] == together.iterations[i]
            torch.testing.assert_close(alone.out[0], together.out[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backward", ["one_step", "implicit"])
def test_gradients_equal_between_solvers(backward):
    layers = _layers(fp_tol=1e-11, fp_backward=backward, fp_backward_tol=1e-11, fp_backward_max_iter=300)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    target = torch.randn(2, 9, 16, dtype=torch.float64)
    grads = {}
    for name, layer in layers.items():
        layer.train().zero_grad()
        ((layer(x).out - target) ** 2).sum().backward()
        grads[name] = {n: p.grad for n, p in layer.named_parameters()}
    for n, g in grads["picard"].items():
        torch.testing.assert_close(grads["anderson"][n], g, rtol=1e-7, atol=1e-9, msg=n)


@pytest.mark.parametrize(("field", "value"), [("solver", "newton"), ("anderson_m", 0), ("anderson_m", 2.5)])
def test_invalid_knobs_raise_naming_the_field(field, value):
    """The core's settings refuse them (the model's config refuses its fp_* fields too: tests/fpmamba_hf)."""
    with pytest.raises(ValueError, match=field):
        build_layer(Mamba2Layer, **TINY, **{f"fp_{field}": value})

