"""Activation checkpointing replays the forward's fixed point: gradients equal those without checkpointing, with two
backward steps and where a recompute would stop elsewhere. (Each backbone, each gradient: test_train_backbones.py.)"""

from __future__ import annotations

import fpmamba_core.layer
import pytest
import torch
from train_helpers import assert_same_gradients, enable_checkpointing, tiny_model, token_batch, train_step_grads

# A tolerance-based stopping rule that actually stops rows at different iterations, with the batch quantile rule.
RULE = dict(fp_tol=1e-2, fp_max_iter=12, fp_train_quantile=0.75)


def test_two_backward_steps_under_reentrant_checkpointing() -> None:
    """fp_backward_steps=2: the no-grad first forward of a reentrant checkpoint yields f(f(y*)), the value its
    recompute differentiates, so loss and gradients still match the plain run."""
    ids = token_batch(4, 12, seed=2)
    plain = tiny_model(fp_backward_steps=2, **RULE)
    ckpt = tiny_model(fp_backward_steps=2, **RULE)
    enable_checkpointing(ckpt, use_reentrant=True)
    loss_p, _, grads_p = train_step_grads(plain, ids)
    loss_c, _, grads_c = train_step_grads(ckpt, ids)
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=0)
    assert_same_gradients(grads_c, grads_p)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_recompute_does_not_solve_again(monkeypatch, use_reentrant: bool) -> None:
    """Simulate a recompute whose stopping decision differs from the forward's (what non-deterministic kernels or
    a cross-rank agreement can cause): every solve after the forward's own stops after one iteration. The replay
    never solves again, so the gradients stay those of the forward's fixed point."""
    ids = token_batch(8, 12, seed=3)
    plain = tiny_model(**RULE)
    _, _, grads_p = train_step_grads(plain, ids)

    ckpt = tiny_model(**RULE)
    enable_checkpointing(ckpt, use_reentrant)
    layers = ckpt.config.num_hidden_layers
    real_solve = fpmamba_core.layer.solve
    calls = []

    def drifting_solve(f, y0, settings, *args, **kwargs):
        calls.append(settings.max_iter)
        if len(calls) > layers:
            settings.max_iter = 1
        return real_solve(f, y0, settings, *args, **kwargs)

    monkeypatch.setattr(fpmamba_core.layer, "solve", drifting_solve)
    _, _, grads_c = train_step_grads(ckpt, ids)
    assert len(calls) == layers
    assert_same_gradients(grads_c, grads_p)
