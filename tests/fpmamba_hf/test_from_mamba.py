"""from_mamba: a converted transformers MambaForCausalLM (Mamba-1) gives the same logits, and stays trainable."""

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

from fpmamba_hf import FPMambaForCausalLM

VOCAB = 50


def _mamba(**overrides) -> MambaForCausalLM:
    values = dict(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)
    values.update(overrides)
    mamba = MambaForCausalLM(MambaConfig(**values)).eval()
    with torch.no_grad():  # make the comparison sensitive to every parameter
        for p in mamba.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return mamba


@pytest.mark.parametrize("gate", ["after_loop", "in_loop"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
def test_logits_equal_transformers_mamba(gate, padded):
    mamba = _mamba()
    fp = FPMambaForCausalLM.from_mamba(mamba, mamba1_gate=gate).eval()
    ids = torch.randint(0, VOCAB, (3, 21))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :5] = 0
        mask[1, :12] = 0
    with torch.no_grad():
        expected = mamba(ids, attention_mask=mask).logits
        got = fp(ids, attention_mask=mask)
    real = mask.bool()
    assert (got.logits - expected)[real].abs().max() <= 1e-4
    assert got.fp_iterations.max() <= 2  # y does not feed back: converged as soon as it can be detected


def test_converts_from_a_saved_checkpoint_path(tmp_path):
    mamba = _mamba(num_hidden_layers=1, tie_word_embeddings=False, time_step_rank=3, use_bias=True)
    mamba.save_pretrained(tmp_path)
    fp = FPMambaForCausalLM.from_mamba(str(tmp_path)).eval()
    assert fp.config.tie_word_embeddings is False and fp.config.time_step_rank == 3
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert (fp(ids).logits - mamba(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("gate", ["in_loop", "after_loop"])
def test_converted_model_fine_tunes_into_a_dense_rnn(gate):
    fp = FPMambaForCausalLM.from_mamba(_mamba(num_hidden_layers=1), dt_hidden_dependence=True, mamba1_gate=gate)
    fp.train()
    ids = torch.randint(0, VOCAB, (2, 12))
    fp(ids, labels=ids).loss.backward()
    layer = fp.backbone.layers[0].mixer
    assert layer.channel_mixer.gain.grad.abs() > 0  # the mixer can leave the identity
    projections = (layer.bc_y_proj, layer.dt_y_proj) + ((layer.gate_y_proj,) if gate == "after_loop" else ())
    for proj in projections:
        assert proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["layernorm", "layernorm_after_loop"])
def test_a_layernorm_in_or_after_the_loop_is_refused(norm):
    with pytest.raises(ValueError, match="mamba1_norm='none'"):
        FPMambaForCausalLM.from_mamba(_mamba(num_hidden_layers=1), mamba1_norm=norm)
