"""fp_jacobian_reg: a training forward adds the Jacobian penalty to the loss (every backbone, at the defaults of a
tiny model), its gradient reaches the map's parameters, checkpointing recomputes it exactly, and nothing else
changes: eval, no labels, weight 0."""

import pytest
import torch
from fpmamba_core.backbones import BACKBONES

from fpmamba_hf import FPMambaConfig
from tests.fpmamba_hf.helpers import VOCAB, tiny_model

REG = 0.5


def _loss(model, ids, seed: int = 1):
    torch.manual_seed(seed)  # the penalty's probe vector
    return model(ids, labels=ids)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_penalty_is_weighed_into_the_training_loss(backbone):
    torch.manual_seed(0)
    model = tiny_model(backbone, fp_jacobian_reg=REG).train()
    ids = torch.randint(0, VOCAB, (3, 10))
    out = _loss(model, ids)
    assert out.fp_jacobian_penalty is not None and out.fp_jacobian_penalty.ndim == 0
    assert out.fp_jacobian_penalty.item() > 0
    model.config.fp_jacobian_reg = 0.0  # a solver setting: takes effect at the next call
    plain = _loss(model, ids)
    assert plain.fp_jacobian_penalty is None
    torch.testing.assert_close(out.loss, plain.loss + REG * out.fp_jacobian_penalty)
    model.config.fp_jacobian_reg = REG
    assert model(ids).fp_jacobian_penalty is not None  # without labels: reported, no loss
    assert model.eval()(ids).fp_jacobian_penalty is None
    with torch.no_grad():
        assert model.train()(ids).fp_jacobian_penalty is None


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_penalty_gradient_reaches_the_map_and_survives_checkpointing(backbone):
    torch.manual_seed(0)
    model = tiny_model(backbone, fp_jacobian_reg=REG).train()
    ids = torch.randint(0, VOCAB, (3, 10))
    weight = model.backbone.layers[0].mixer.channel_mixer.proj.weight

    def grad() -> torch.Tensor:
        model.zero_grad()
        _loss(model, ids).loss.backward()
        return weight.grad.clone()

    with_penalty = grad()
    model.config.fp_jacobian_reg = 0.0
    without = grad()
    assert (with_penalty - without).abs().max() > 1e-6  # the penalty has a gradient in the mixer
    model.config.fp_jacobian_reg = REG
    model.gradient_checkpointing_enable()
    torch.testing.assert_close(grad(), with_penalty)  # the recompute draws the same probe (RNG state restored)


def test_the_penalty_goes_into_the_tuple_output_last():
    torch.manual_seed(0)
    model = tiny_model(fp_jacobian_reg=REG).train()
    ids = torch.randint(0, VOCAB, (2, 6))
    loss, logits, iterations, residual, penalty = _loss_tuple(model, ids)
    assert logits.shape == (2, 6, VOCAB) and iterations.shape == residual.shape == (2, 2) and penalty.ndim == 0


def _loss_tuple(model, ids):
    torch.manual_seed(1)
    return model(ids, labels=ids, return_dict=False)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True])
def test_a_bad_weight_is_refused(value):
    with pytest.raises(ValueError, match="fp_jacobian_reg"):
        FPMambaConfig(fp_jacobian_reg=value)
