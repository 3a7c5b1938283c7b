"""A converted Mamba-2 (mixer gain 0, Q = I) keeps a gradient into the mixer whatever direction the first
optimiser step takes, so fine-tuning can turn it into a dense RNN; the gain stays in [0, 1]."""

import pytest
import torch
from fpmamba_core.mixers import ChannelMixer
from transformers import Mamba2Config, Mamba2ForCausalLM

from fpmamba_hf import FPMambaForCausalLM
from tests.modeling.core import mixer_settings


@pytest.mark.parametrize("raw", [0.0, 1.0, -0.3, -1.0, 0.4, 1.7, 2.5, -3.2])
def test_gain_in_unit_interval_with_gradient_everywhere(raw: float) -> None:
    mixer = ChannelMixer(mixer_settings(mixer_rank=1), 8)
    with torch.no_grad():
        mixer.gain.fill_(raw)
    g = mixer.strength()
    assert 0.0 <= g.item() <= 1.0
    g.backward()
    assert mixer.gain.grad.abs().item() == 1.0


def test_gain_keeps_its_meaning_on_the_unit_interval() -> None:
    """Stored gains in [0, 1] (every fresh and converted model) mean what they always meant: 0 = Q = I, 1 = paper."""
    mixer = ChannelMixer(mixer_settings(mixer_rank=1, mixer_reflection_scale=2.0), 8)
    for raw in (0.0, 0.25, 1.0):
        with torch.no_grad():
            mixer.gain.fill_(raw)
        assert mixer.strength().item() == 2.0 * raw


@pytest.mark.parametrize("seed", range(6))
def test_converted_mamba2_learns_a_mixer(seed: int) -> None:
    torch.manual_seed(seed)
    cfg = Mamba2Config(vocab_size=50, hidden_size=32, head_dim=16, num_heads=4, state_size=8, n_groups=1,
                       num_hidden_layers=1, chunk_size=8, expand=2)
    fp = FPMambaForCausalLM.from_mamba2(Mamba2ForCausalLM(cfg)).train()
    mixer = fp.backbone.layers[0].mixer.channel_mixer
    opt = torch.optim.AdamW(fp.parameters(), lr=1e-2)
    ids = torch.randint(0, 50, (4, 16))
    for _ in range(4):
        opt.zero_grad()
        fp(ids, labels=ids, fp_max_iter=4).loss.backward()
        opt.step()
    assert mixer.strength().item() > 0.0  # the mixer has left the identity ...
    assert mixer.proj.weight.grad.abs().sum() > 0  # ... and its directions and gates now learn
    assert mixer.proj.bias.grad.abs().sum() > 0
    fp.eval()
    with torch.no_grad():
        one, eight = fp(ids, fp_max_iter=1).logits, fp(ids, fp_max_iter=8, fp_tol=1e-6).logits
    assert (one - eight).abs().max() > 1e-6  # the fixed point is no longer the first iterate
