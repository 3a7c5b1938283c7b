"""Gradients are right or refused: the implicit gradient falls back when its adjoint diverges, and a one-token
forward with a cache under autograd gives the true gradient."""

import copy
import warnings

import pytest
import torch
from fpmamba_core.fixed_point import ImplicitGradientFallback

from tests.fpmamba_hf.helpers import VOCAB, tiny_model


def _grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_diverging_implicit_gradient_falls_back_to_one_step_and_warns():
    # A DPLR mixer at reflection scale 2 is not contractive: the adjoint series grows without bound.
    settings = dict(mixer_type="dplr", mixer_reflection_scale=2, mixer_alpha_init=0.9, mixer_rank=4, fp_max_iter=64)
    implicit = tiny_model(fp_backward="implicit", **settings).train()
    one_step = tiny_model(fp_backward="one_step", **settings).train()
    one_step.load_state_dict(implicit.state_dict())
    ids = torch.randint(0, VOCAB, (2, 12))
    with pytest.warns(ImplicitGradientFallback, match="did not converge"):
        got = _grads(implicit, ids)
    expected = _grads(one_step, ids)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_a_converging_implicit_gradient_does_not_warn():
    model = tiny_model(fp_backward="implicit", fp_backward_max_iter=200, fp_tol=1e-6, fp_max_iter=200).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImplicitGradientFallback)
        _grads(model, torch.randint(0, VOCAB, (2, 6)))


def test_one_token_with_a_cache_under_autograd_has_the_true_gradient():
    """Finite differences in fp64 of the loss of one cached token, against its implicit gradient."""
    model = tiny_model(fp_backward="implicit", fp_backward_tol=1e-12, fp_backward_max_iter=500, fp_tol=1e-12,
                       fp_max_iter=500, fp_max_iter_eval=500, fp_train_quantile=1.0).double()
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        cache = model(ids[:, :6], use_cache=True).cache
    model.train()
    target = torch.randint(0, VOCAB, (2,))

    def loss() -> torch.Tensor:
        logits = model(ids[:, 6:], cache=copy.deepcopy(cache)).logits[:, 0]
        return torch.nn.functional.cross_entropy(logits, target)

    model.zero_grad()
    loss().backward()
    for name in ("backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.channel_mixer.proj.weight",
                 "backbone.layers.1.mixer.bc_y_proj.weight", "backbone.layers.1.mixer.out_proj.weight"):
        param = model.get_parameter(name)
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
        direction = torch.randn_like(param)
        eps = 1e-6
        with torch.no_grad():
            param += eps * direction
            up = loss()
            param -= 2 * eps * direction
            down = loss()
            param += eps * direction
        numeric = (up - down) / (2 * eps)
        torch.testing.assert_close((param.grad * direction).sum(), numeric, rtol=1e-5, atol=1e-9, msg=name)
