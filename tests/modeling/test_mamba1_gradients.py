"""Mamba1Layer gradients (fp64): the implicit gradient equals the unrolled iteration at the fixed point, with the
in-loop LayerNorm, a hidden-state dependent dt and the after-loop gate's W_zy all in play."""

import pytest
import torch
from fpmamba_core.backbones import Mamba1Layer

from tests.modeling.core import build_layer

TINY = dict(hidden_size=16, state_size=4, mixer_type="kronecker", dt_hidden_dependence=True,
            initializer_range=0.1, fp_tol=1e-12, fp_max_iter=400, fp_train_quantile=1.0)


def _layer(**overrides) -> Mamba1Layer:
    torch.manual_seed(0)
    layer = build_layer(Mamba1Layer, **{**TINY, **overrides}).double().train()
    with torch.no_grad():
        for proj in (layer.bc_y_proj, layer.dt_y_proj, layer.gate_y_proj):
            if proj is not None:
                proj.weight.normal_(std=0.1)
    return layer


def _grads(layer, x, target):
    layer.zero_grad()
    ((layer(x).out - target) ** 2).sum().backward()
    return {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("gate", ["after_loop", "in_loop"])
def test_implicit_gradient_equals_unrolled_iteration_at_convergence(gate):
    implicit = _layer(mamba1_gate=gate, fp_backward="implicit", fp_backward_tol=1e-12, fp_backward_max_iter=400)
    unrolled = _layer(mamba1_gate=gate, fp_backward="one_step", fp_backward_steps=80)
    unrolled.load_state_dict(implicit.state_dict())
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    target = torch.randn(2, 9, 16, dtype=torch.float64)
    g_imp, g_unr = _grads(implicit, x, target), _grads(unrolled, x, target)
    for name, g in g_imp.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name  # every parameter is reached
        torch.testing.assert_close(g, g_unr[name], rtol=1e-7, atol=1e-10, msg=name)
    one_step = _layer(mamba1_gate=gate, fp_backward="one_step", fp_backward_steps=1)
    one_step.load_state_dict(implicit.state_dict())
    g_one = _grads(one_step, x, target)  # ...a different (approximate) direction: the comparison above has teeth
    assert any(not torch.allclose(g_imp[n], g_one[n], rtol=1e-3) for n in g_imp)
