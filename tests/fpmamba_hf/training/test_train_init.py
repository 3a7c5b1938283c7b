"""_init_weights runs through transformers' guarded init helpers: loading never re-initialises loaded weights."""

from __future__ import annotations

import torch
from train_helpers import tiny_model

from fpmamba_hf import FPMambaForCausalLM


def test_from_pretrained_keeps_every_loaded_weight(tmp_path) -> None:
    model = tiny_model()
    with torch.no_grad():  # move every parameter away from any value an initialiser could produce
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.37 + 0.11)
    model.save_pretrained(tmp_path)
    loaded = FPMambaForCausalLM.from_pretrained(tmp_path)
    expected = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name]), f"{name} was re-initialised on load"


def test_fresh_model_gets_fp_mamba_init() -> None:
    """A fresh model holds the special values (Mamba-2's A_log and D, y-projections at zero, mixer gain 1)."""
    mixer = tiny_model().backbone.layers[1].mixer
    heads = mixer.num_heads
    torch.testing.assert_close(mixer.A_log.detach(), torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
    assert torch.equal(mixer.D.detach(), torch.ones(heads))
    assert not mixer.bc_y_proj.weight.any()
    assert torch.equal(mixer.channel_mixer.gain.detach(), torch.ones(1))
