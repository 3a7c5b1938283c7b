"""from_mamba2: a converted transformers Mamba2ForCausalLM gives the same logits, and stays trainable."""

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

from fpmamba_hf import FPMambaForCausalLM


@pytest.mark.parametrize("n_groups", [1, 2])
def test_logits_equal_transformers_mamba2(n_groups):
    cfg = Mamba2Config(vocab_size=50, hidden_size=32, head_dim=16, num_heads=4, state_size=8, n_groups=n_groups,
                       num_hidden_layers=2, chunk_size=8, expand=2)
    mamba2 = Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():  # make the comparison sensitive to every parameter
        for p in mamba2.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fp = FPMambaForCausalLM.from_mamba2(mamba2).eval()
    ids = torch.randint(0, 50, (3, 21))
    with torch.no_grad():
        expected = mamba2(ids).logits
        got = fp(ids)
    assert (got.logits - expected).abs().max() <= 1e-4
    assert got.fp_iterations.max() <= 2  # y does not feed back: converged as soon as it can be detected


def test_converted_model_fine_tunes_into_a_dense_rnn():
    cfg = Mamba2Config(vocab_size=50, hidden_size=32, head_dim=16, num_heads=4, state_size=8, n_groups=1,
                       num_hidden_layers=1, chunk_size=8, expand=2)
    fp = FPMambaForCausalLM.from_mamba2(Mamba2ForCausalLM(cfg)).train()
    ids = torch.randint(0, 50, (2, 12))
    fp(ids, labels=ids).loss.backward()
    mixer = fp.backbone.layers[0].mixer
    assert mixer.channel_mixer.gain.grad.abs() > 0  # the mixer can leave the identity
    assert mixer.bc_y_proj.weight.grad.abs().sum() > 0


def test_converts_from_a_saved_checkpoint_path(tmp_path):
    cfg = Mamba2Config(vocab_size=50, hidden_size=32, head_dim=16, num_heads=4, state_size=8, n_groups=1,
                       num_hidden_layers=1, chunk_size=8, expand=2, tie_word_embeddings=False)
    mamba2 = Mamba2ForCausalLM(cfg).eval()
    mamba2.save_pretrained(tmp_path)
    fp = FPMambaForCausalLM.from_mamba2(str(tmp_path)).eval()
    assert fp.config.tie_word_embeddings is False
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert (fp(ids).logits - mamba2(ids).logits).abs().max() <= 1e-4
