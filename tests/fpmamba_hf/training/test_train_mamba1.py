"""backbone="mamba1" trains: a Trainer step updates every parameter; activation checkpointing gives the plain
gradients (one-step and implicit)."""

from __future__ import annotations

import datasets
import pytest
import torch
from train_helpers import enable_checkpointing, tiny_model, token_batch, train_step_grads
from transformers import Trainer, TrainingArguments

# The after-loop gate, whose W_zy reads the previous f(y*); the batch quantile stops some rows early.
MAMBA1 = dict(backbone="mamba1", mamba1_gate="after_loop", mixer_type="kronecker", initializer_range=0.1,
              fp_tol=1e-3, fp_max_iter=12, fp_train_quantile=0.75)


def _model(**overrides):
    """A tiny FP-Mamba1 whose y-projections are not zero, so every parameter is reached by the gradient."""
    model = tiny_model(**MAMBA1, **overrides)
    with torch.no_grad():
        for block in model.backbone.layers:
            for proj in (block.mixer.bc_y_proj, block.mixer.dt_y_proj, block.mixer.gate_y_proj):
                if proj is not None:
                    proj.weight.normal_(std=0.1)
    return model


@pytest.mark.parametrize("fp_backward, use_reentrant", [("one_step", False), ("implicit", True)])
def test_checkpointed_gradients_equal_plain(fp_backward: str, use_reentrant: bool) -> None:
    ids = token_batch(8, 12, seed=1)
    plain, ckpt = _model(fp_backward=fp_backward), _model(fp_backward=fp_backward)
    enable_checkpointing(ckpt, use_reentrant)
    loss_p, its_p, grads_p = train_step_grads(plain, ids)
    loss_c, its_c, grads_c = train_step_grads(ckpt, ids)
    assert its_p.unique().numel() > 1 and int(its_p.max()) < MAMBA1["fp_max_iter"]
    assert torch.equal(its_p, its_c)
    torch.testing.assert_close(loss_c, loss_p, rtol=0, atol=0)
    assert grads_c.keys() == grads_p.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")


def test_a_trainer_step_updates_every_parameter(tmp_path) -> None:
    model = _model(dt_hidden_dependence=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = token_batch(8, 12, seed=2)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no", max_steps=1,
                             per_device_train_batch_size=8, learning_rate=1e-2, disable_tqdm=True, seed=0)
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged
