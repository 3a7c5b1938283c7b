"""The models the harness trains: FP-Mamba and its baselines, built from one size description.

Kinds (docs/tasks.md):
  fpmamba   FP-Mamba (Householder mixer by default), 1 layer
  diagonal  FP-Mamba's diagonal ablation: mixer_type="none", one iteration (a Mamba-2 layer with B/C norm), 1 layer
  mamba2    transformers' own Mamba2ForCausalLM, 2 layers
  lstm      a torch LSTM language model (experiments.lstm), 1 layer
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn
from transformers import Mamba2Config, Mamba2ForCausalLM

from ..configuration_fpmamba import FPMambaConfig
from ..modeling_fpmamba import FPMambaForCausalLM
from .lstm import LSTMConfig, LSTMForCausalLM

MODEL_KINDS = ("fpmamba", "diagonal", "mamba2", "lstm")
DEFAULT_LAYERS = {"fpmamba": 1, "diagonal": 1, "mamba2": 2, "lstm": 1}


@dataclass
class ModelSpec:
    """Size and fixed-point settings shared by every kind (each kind uses the fields that apply to it).

    num_layers None means the kind's default (DEFAULT_LAYERS). fp_max_iter caps training iterations,
    fp_max_iter_eval caps evaluation/generation; the diagonal kind always uses one iteration.
    """

    hidden_size: int = 64
    state_size: int = 16
    head_dim: int = 16
    expand: int = 2
    num_layers: int | None = None
    chunk_size: int = 16
    mixer_type: str = "householder"
    mixer_rank: int = 2
    mixer_input: str = "concat"
    mixer_reflection_scale: int = 2
    fp_max_iter: int = 16
    fp_max_iter_eval: int = 64
    fp_tol: float = 1e-2

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(
    kind: str, spec: ModelSpec, vocab_size: int, pad_token_id: int | None = None, bos_token_id: int | None = None
) -> nn.Module:
    """A freshly initialised model of `kind` (one of MODEL_KINDS) with the sizes of `spec`."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    layers = spec.num_layers or DEFAULT_LAYERS[kind]
    tokens = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    if kind == "lstm":
        return LSTMForCausalLM(LSTMConfig(hidden_size=spec.hidden_size, num_hidden_layers=layers, **tokens))
    if kind == "mamba2":
        d_inner = spec.expand * spec.hidden_size
        config = Mamba2Config(
            hidden_size=spec.hidden_size, num_hidden_layers=layers, state_size=spec.state_size,
            head_dim=spec.head_dim, num_heads=d_inner // spec.head_dim, expand=spec.expand, n_groups=1,
            chunk_size=spec.chunk_size, tie_word_embeddings=True, **tokens,
        )
        return Mamba2ForCausalLM(config)
    diagonal = kind == "diagonal"
    config = FPMambaConfig(
        hidden_size=spec.hidden_size, num_hidden_layers=layers, state_size=spec.state_size, head_dim=spec.head_dim,
        expand=spec.expand, chunk_size=spec.chunk_size,
        mixer_type="none" if diagonal else spec.mixer_type, mixer_rank=spec.mixer_rank,
        mixer_input=spec.mixer_input, mixer_reflection_scale=spec.mixer_reflection_scale,
        fp_max_iter=1 if diagonal else spec.fp_max_iter, fp_max_iter_eval=1 if diagonal else spec.fp_max_iter_eval,
        fp_tol=spec.fp_tol, **tokens,
    )
    return FPMambaForCausalLM(config)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["DEFAULT_LAYERS", "MODEL_KINDS", "ModelSpec", "build_model", "count_parameters"]
