"""The models the harness trains: FP-Mamba and its baselines, built from one model description (`ModelSpec`).

Kinds (docs/tasks.md):
  fpmamba   FP-Mamba (Householder mixer by default), 1 layer
  diagonal  FP-Mamba's diagonal ablation: mixer_type="none", one iteration (a Mamba-2 layer with B/C norm), 1 layer
  mamba2    transformers' own Mamba2ForCausalLM, 2 layers
  lstm      a torch LSTM language model (harness.lstm), 1 layer

`ModelSpec` is made from FPMambaConfig: one field per config knob (same name, type and meaning, documented in
FPMambaConfig's docstring) except the ones a run sets itself (`SET_BY_RUN`), plus `num_layers`. Its defaults are
FPMambaConfig's, except the harness's own values in `HARNESS_DEFAULTS`, the one place they are stated.
"""

from __future__ import annotations

from dataclasses import asdict, field, fields, make_dataclass
from typing import Any

import torch.nn as nn
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.configuration_utils import PreTrainedConfig

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_hf.configuration_fpmamba import switch_applies

from .lstm import LSTMConfig, LSTMForCausalLM

MODEL_KINDS = ("fpmamba", "diagonal", "mamba2", "lstm")
DEFAULT_LAYERS = {"fpmamba": 1, "diagonal": 1, "mamba2": 2, "lstm": 1}

# The harness's values of the FPMambaConfig knobs where they differ from the config's defaults, and why.
HARNESS_DEFAULTS: dict[str, Any] = {
    # CPU scale: the synthetic tasks have small vocabularies and sequences of tens to hundreds of tokens, and a
    # 1-layer model this narrow trains on them in minutes on one CPU core (docs/tasks.md); chunks of 16 suit the
    # short sequences (the chunk length changes the speed only, not the result).
    "hidden_size": 64,
    "state_size": 16,
    "head_dim": 16,
    "chunk_size": 16,
    # Reflection scale 2, as the official code (the config's default 1 is the paper's): it allows negative
    # eigenvalues, which the state-tracking tasks (word problems, parity) rely on (docs/method.md, "Reflection
    # scale and gain").
    "mixer_reflection_scale": 2,
}
# Config knobs a run sets itself: the task gives the vocabulary and special tokens, num_layers and the kind the depth.
SET_BY_RUN = ("vocab_size", "num_hidden_layers", "pad_token_id", "bos_token_id", "eos_token_id")
# The diagonal ablation: no mixer and one iteration, whatever the spec says.
DIAGONAL = {"mixer_type": "none", "fp_max_iter": 1, "fp_max_iter_eval": 1}
# The knobs transformers' Mamba2 baseline takes (Mamba2Config has the same names): its sizes and the tied head. The
# rest stay Mamba2Config's own defaults, the baseline as transformers ships it. The LSTM takes hidden_size only.
MAMBA2_KNOBS = ("hidden_size", "state_size", "head_dim", "expand", "n_groups", "chunk_size", "tie_word_embeddings")


def _spec_fields() -> list[tuple[str, Any, Any]]:
    """ModelSpec's fields: num_layers, then every FPMambaConfig knob not in SET_BY_RUN with its type and default."""
    config_defaults = {f.name: f.default for f in fields(FPMambaConfig)}
    knobs = [
        (name, hint, field(default=HARNESS_DEFAULTS.get(name, config_defaults[name])))
        for name, hint in FPMambaConfig.field_types().items()
        if name not in SET_BY_RUN
    ]
    return [("num_layers", int | None, field(default=None)), *knobs]


def _to_dict(self) -> dict:
    return asdict(self)


ModelSpec = make_dataclass(
    "ModelSpec",
    _spec_fields(),
    namespace={
        "__module__": __name__,
        "__doc__": "The model settings of an experiment, shared by every kind (each uses the knobs that apply to "
                   "it). num_layers None means the kind's default (DEFAULT_LAYERS); every other field is the "
                   "FPMambaConfig knob of that name, defaulting to HARNESS_DEFAULTS or else to FPMambaConfig's "
                   "default.",
        "to_dict": _to_dict,
    },
)


def model_config(
    kind: str, spec: ModelSpec, vocab_size: int, pad_token_id: int | None = None, bos_token_id: int | None = None
) -> PreTrainedConfig:
    """The config of a model of `kind` (one of MODEL_KINDS) with the settings of `spec` (FP-Mamba's is checked)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    layers = spec.num_layers or DEFAULT_LAYERS[kind]
    tokens = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    if kind == "lstm":
        return LSTMConfig(hidden_size=spec.hidden_size, num_hidden_layers=layers, **tokens)
    # The switches of other backbones are left at their defaults (recorded runs hold every field's value then).
    knobs = {name: value for name, value in spec.to_dict().items()
             if name != "num_layers" and switch_applies(name, spec.backbone)}
    if kind == "mamba2":
        sizes = {name: knobs[name] for name in MAMBA2_KNOBS}
        num_heads = spec.expand * spec.hidden_size // spec.head_dim
        return Mamba2Config(num_hidden_layers=layers, num_heads=num_heads, **sizes, **tokens)
    if kind == "diagonal":
        knobs.update(DIAGONAL)
    return FPMambaConfig(num_hidden_layers=layers, **knobs, **tokens)


def build_model(
    kind: str, spec: ModelSpec, vocab_size: int, pad_token_id: int | None = None, bos_token_id: int | None = None
) -> nn.Module:
    """A freshly initialised model of `kind` (one of MODEL_KINDS) with the settings of `spec`."""
    config = model_config(kind, spec, vocab_size, pad_token_id, bos_token_id)
    model_class = {"lstm": LSTMForCausalLM, "mamba2": Mamba2ForCausalLM}.get(kind, FPMambaForCausalLM)
    return model_class(config)


def model_kind(config: PreTrainedConfig) -> str:
    """Which of MODEL_KINDS a model of `config` is (a saved model's, e.g.); another model's `model_type` as it is.
    The diagonal ablation is the FP-Mamba whose config holds DIAGONAL's settings."""
    if isinstance(config, FPMambaConfig):
        return "diagonal" if all(getattr(config, k) == v for k, v in DIAGONAL.items()) else "fpmamba"
    return {LSTMConfig.model_type: "lstm", Mamba2Config.model_type: "mamba2"}.get(config.model_type, config.model_type)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "DEFAULT_LAYERS", "DIAGONAL", "HARNESS_DEFAULTS", "MAMBA2_KNOBS", "MODEL_KINDS", "ModelSpec", "SET_BY_RUN",
    "build_model", "count_parameters", "model_config", "model_kind",
]
