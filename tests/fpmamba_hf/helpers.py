"""Tiny models shared by the transformers-level tests."""

import torch

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

VOCAB = 40


def tiny_config(**overrides) -> FPMambaConfig:
    values = dict(vocab_size=VOCAB, hidden_size=32, head_dim=16, state_size=8, num_hidden_layers=2, chunk_size=8,
                  n_groups=2)
    values.update(overrides)
    return FPMambaConfig(**values)


def tiny_model(**overrides) -> FPMambaForCausalLM:
    """A tiny FP-Mamba in eval mode, with the hidden-state dependence of B and C switched on."""
    model = FPMambaForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for block in model.backbone.layers:
            block.mixer.bc_y_proj.weight.normal_(std=0.1)
    return model
