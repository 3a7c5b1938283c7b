"""Tiny models shared by the transformers-level tests, for every backbone of `fpmamba_core.BACKBONES`."""

from typing import Any

import torch

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_hf.configuration_fpmamba import BACKBONE_SWITCHES

VOCAB = 40

# A backbone's own settings of the tiny model, where tiny_config's do not suit it (a backbone not listed takes
# tiny_config's). mamba1: one layer (its selective scan is the slowest on the CPU); its defaults otherwise (the gate
# in the loop, the LayerNorm after it: they converge at initialisation).
# rnn: the gates at 0.5, a map far from the identity that still contracts.
BACKBONE_SETTINGS: dict[str, dict[str, Any]] = {
    "mamba1": dict(num_hidden_layers=1),
    "rnn": dict(hidden_size=16, mixer_alpha_init=0.5),
}
# The projections through which a layer's map reads the previous iterate (each layer has some of them), with the
# std they are drawn at: the y-projections start at zero, which would leave the iteration nothing to do, and the
# FP-RNN's output gate is made to read h*_{t-1} strongly.
ITERATE_READERS = {"bc_y_proj": 0.1, "dt_y_proj": 0.1, "gate_y_proj": 0.1, "c_proj": 0.3}


def tiny_config(**overrides) -> FPMambaConfig:
    values = dict(vocab_size=VOCAB, hidden_size=32, head_dim=16, state_size=8, num_hidden_layers=2, chunk_size=8,
                  n_groups=2)
    values.update(overrides)
    return FPMambaConfig(**values)


def tiny_model(backbone: str = "mamba2", **overrides) -> FPMambaForCausalLM:
    """A tiny FP-Mamba of `backbone` in eval mode (its BACKBONE_SETTINGS, then `overrides`) whose map reads the
    iterate through every path it has (ITERATE_READERS drawn away from zero)."""
    config = tiny_config(backbone=backbone, **{**BACKBONE_SETTINGS.get(backbone, {}), **overrides})
    model = FPMambaForCausalLM(config).eval()
    with torch.no_grad():
        for block in model.backbone.layers:
            for name, std in ITERATE_READERS.items():
                proj = getattr(block.mixer, name, None)
                if proj is not None:
                    proj.weight.normal_(std=std)
    return model


def backbone_has(backbone: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The entries of `settings` that `backbone` has: every field but the switches its config refuses there
    (`BACKBONE_SWITCHES`)."""
    return {name: value for name, value in settings.items() if backbone in BACKBONE_SWITCHES.get(name, (backbone,))}


def fp64_model(backbone: str, mixer_type: str, seed: int = 0, **overrides) -> FPMambaForCausalLM:
    """A tiny fp64 model in eval mode whose map reads y through every path (B/C y-projections drawn away from zero),
    for checks of "the same fixed point" far below fp32 rounding."""
    torch.manual_seed(seed)
    model = FPMambaForCausalLM(tiny_config(backbone=backbone, mixer_type=mixer_type, **overrides)).double().eval()
    with torch.no_grad():
        for block in model.backbone.layers:
            proj = getattr(block.mixer, "bc_y_proj", None)
            if proj is not None:
                proj.weight.normal_(std=0.1)
    return model
