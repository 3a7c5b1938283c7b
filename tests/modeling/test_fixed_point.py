"""The solver: finds fixed points of contractive maps, per-row stopping, caps, damping, divergence detection."""

import pytest
import torch
from fpmamba_core.fixed_point import MapOutput, solve
from fpmamba_core.precision import all_finite
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.modeling.core import solver_settings


def _affine_map(W: torch.Tensor, c: torch.Tensor):
    """f(y)_b = W_b y_b + c_b (contractive when ||W_b|| < 1); aux = 2 * yhat, to check aux bookkeeping."""

    def f(y, rows):
        yhat = torch.einsum("bij,bj->bi", W[rows], y) + c[rows]
        return MapOutput(yhat, (2 * yhat,))

    return f


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 5), d=st.integers(1, 8), lip=st.floats(0.05, 0.9), seed=st.integers(0, 10_000))
def test_finds_fixed_point_of_contraction(b, d, lip, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(b, d, d, generator=g, dtype=torch.float64)
    W = lip * W / torch.linalg.matrix_norm(W, 2)[:, None, None]
    c = torch.randn(b, d, generator=g, dtype=torch.float64)
    res = solve(_affine_map(W, c), torch.zeros(b, d, dtype=torch.float64), solver_settings(2000, 1e-12))
    exact = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - W, c)
    torch.testing.assert_close(res.y_star, exact, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.aux[0], 2 * res.y_out)
    assert bool((res.residual < 1e-12).all())


def test_rows_stop_on_their_own_and_do_not_depend_on_the_batch():
    d = 4
    W = torch.stack([0.1 * torch.eye(d), 0.8 * torch.eye(d), 0.5 * torch.eye(d)]).double()
    c = torch.randn(3, d, dtype=torch.float64)
    s = solver_settings(500, 1e-8)
    together = solve(_affine_map(W, c), torch.zeros(3, d, dtype=torch.float64), s)
    assert together.iterations[0] < together.iterations[2] < together.iterations[1]
    for i in range(3):
        alone = solve(_affine_map(W[i : i + 1], c[i : i + 1]), torch.zeros(1, d, dtype=torch.float64), s)
        assert torch.equal(alone.y_star[0], together.y_star[i])
        assert alone.iterations[0] == together.iterations[i]


def test_cap_is_respected_and_reported():
    W = 0.99 * torch.eye(3, dtype=torch.float64)[None]
    res = solve(_affine_map(W, torch.ones(1, 3, dtype=torch.float64)), torch.zeros(1, 3, dtype=torch.float64),
                solver_settings(7, 1e-12))
    assert res.iterations.tolist() == [7]
    assert res.residual[0] > 1e-12


def test_train_quantile_stops_the_batch_early():
    d = 2
    W = torch.stack([0.01 * torch.eye(d)] * 3 + [0.95 * torch.eye(d)]).double()
    c = torch.ones(4, d, dtype=torch.float64)
    s = solver_settings(1000, 1e-6, train_quantile=0.75)
    res = solve(_affine_map(W, c), torch.zeros(4, d, dtype=torch.float64), s, training=True)
    assert res.iterations.max() == res.iterations[:3].max()  # the slow row was cut with the others
    full = solve(_affine_map(W, c), torch.zeros(4, d, dtype=torch.float64), s, training=False)
    assert full.iterations[3] > res.iterations[3]


def test_damping_rescues_an_oscillating_map():
    """f(y) = -1.5 y + 1 diverges undamped; damping shrinks after stalls and converges to y* = 0.4."""
    W = torch.full((1, 1, 1), -1.5, dtype=torch.float64)
    c = torch.ones(1, 1, dtype=torch.float64)
    s = solver_settings(400, 1e-8, damping=1.0, damping_decay=0.5, damping_patience=2)
    res = solve(_affine_map(W, c), torch.zeros(1, 1, dtype=torch.float64), s)
    torch.testing.assert_close(res.y_star, torch.full((1, 1), 0.4, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_non_finite_values_raise_naming_the_layer():
    def f(y, rows):
        return MapOutput(y + float("nan"))

    with pytest.raises(FloatingPointError, match="layer 3"):
        solve(f, torch.zeros(2, 3), solver_settings(5, 1e-3), layer_idx=3)


@pytest.mark.parametrize("value, expected", [(1.0, True), (float("nan"), False), (float("inf"), False),
                                             (float("-inf"), False), (3e38, True)], ids=str)
def test_all_finite_is_exact(value, expected):
    """One reduction (the largest magnitude) answers exactly: NaN and +-inf anywhere are seen, large finite values
    pass; an empty tensor is finite."""
    t = torch.zeros(3, 7)
    t[1, 4] = value
    assert bool(all_finite(t)) is expected
    assert bool(all_finite(torch.zeros(0, 5)))


def test_a_cap_of_one_is_the_general_rule_without_bookkeeping():
    """max_iter=1 takes a short path: the same y*, f(y*), aux, iterations and residual as the loop would give."""
    torch.manual_seed(0)
    W = 0.3 * torch.randn(3, 4, 4, dtype=torch.float64)
    f = _affine_map(W, torch.randn(3, 4, dtype=torch.float64))
    y0 = torch.randn(3, 4, dtype=torch.float64)
    short = solve(f, y0, solver_settings(1, 1e-12))
    looped = solve(f, y0, solver_settings(1, 1e-12), sync=lambda go_on: go_on)  # the loop path
    for name in ("y_star", "y_out", "iterations", "residual"):
        torch.testing.assert_close(getattr(short, name), getattr(looped, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(short.aux[0], looped.aux[0], rtol=0, atol=0)

