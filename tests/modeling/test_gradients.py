"""Gradients: implicit == unrolled at the fixed point; one_step reaches every parameter; O(1) memory in iterations."""

import pytest
import torch
from fpmamba_core.backbones import Mamba2Layer

from tests.modeling.core import build_layer

TINY = dict(hidden_size=16, state_size=4, head_dim=8, chunk_size=4, mixer_rank=2)


def _layer(**overrides) -> Mamba2Layer:
    layer = build_layer(Mamba2Layer, **{**TINY, **overrides}).double().train()
    with torch.no_grad():  # give the hidden-state dependence of B and C some weight
        layer.bc_y_proj.weight.normal_(std=0.1)
    return layer


def _grads(layer, x, target):
    layer.zero_grad()
    loss = ((layer(x).out - target) ** 2).sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("mixer_type", ["householder", "kronecker"])
def test_implicit_gradient_equals_unrolled_iteration_at_convergence(mixer_type):
    common = dict(mixer_type=mixer_type, fp_tol=1e-12, fp_max_iter=300, fp_train_quantile=1.0)
    implicit = _layer(fp_backward="implicit", fp_backward_tol=1e-12, fp_backward_max_iter=300, **common)
    unrolled = _layer(fp_backward="one_step", fp_backward_steps=60, **common)
    unrolled.load_state_dict(implicit.state_dict())
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    target = torch.randn(2, 9, 16, dtype=torch.float64)
    g_imp, g_unr = _grads(implicit, x, target), _grads(unrolled, x, target)
    one_step = _layer(fp_backward="one_step", fp_backward_steps=1, **common)
    one_step.load_state_dict(implicit.state_dict())
    g_one = _grads(one_step, x, target)
    for name in g_imp:
        torch.testing.assert_close(g_imp[name], g_unr[name], rtol=1e-7, atol=1e-10, msg=name)
    # ...and the one-step gradient is a different (approximate) direction, so the comparison above has teeth.
    assert any(not torch.allclose(g_imp[n], g_one[n], rtol=1e-3) for n in g_imp)


@pytest.mark.parametrize("backward", ["one_step", "implicit"])
def test_gradients_reach_every_parameter(backward):
    layer = _layer(fp_backward=backward, dt_hidden_dependence=True, fp_tol=1e-6, fp_max_iter=50)
    with torch.no_grad():
        layer.dt_y_proj.weight.normal_(std=0.1)
    grads = _grads(layer, torch.randn(2, 7, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64))
    for name, g in grads.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("backward", ["one_step", "implicit"])
def test_saved_activation_memory_does_not_grow_with_iterations(backward):
    """Bytes autograd keeps for backward are the same for a 1-iteration and a 16-iteration forward."""

    def saved_bytes(max_iter: int) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        layer = _layer(fp_backward=backward, fp_tol=1e-30, fp_max_iter=max_iter)
        x = torch.randn(2, 12, 16, dtype=torch.float64)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(x)
        assert out.iterations.tolist() == [max_iter, max_iter]
        return total

    assert saved_bytes(16) == saved_bytes(1)
