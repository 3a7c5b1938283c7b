"""The outputs of FPMambaModel and FPMambaForCausalLM (and of generate()'s decode runner, which returns the latter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput


@dataclass
class FPMambaOutput(ModelOutput):
    """last_hidden_state (batch, T, hidden); cache: the DynamicCache to continue from (if use_cache; also
    readable as cache_params, its name before transformers 5.24); hidden_states: per-layer outputs if asked;
    fp_iterations: LongTensor (batch, num_layers), fixed-point iterations each layer used per sequence in this call
    (with fp_solve_chunk: map evaluations per token, rounded up);
    fp_residual: FloatTensor (batch, num_layers), the relative residual each layer stopped at (below fp_tol when
    converged, above it when the cap was hit);
    fp_jacobian_penalty: FloatTensor (), the Jacobian penalty's mean over rows and layers (a training forward with
    autograd and config.fp_jacobian_reg > 0 only; else None)."""

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    fp_iterations: torch.LongTensor | None = None
    fp_residual: torch.FloatTensor | None = None
    fp_jacobian_penalty: torch.FloatTensor | None = None


@dataclass
class FPMambaCausalLMOutput(ModelOutput):
    """loss (labels shifted inside, -100 ignored); logits (batch, T, vocab) fp32; cache (also cache_params);
    hidden_states; fp_iterations: LongTensor (batch, num_layers); fp_residual: FloatTensor (batch, num_layers);
    fp_jacobian_penalty: FloatTensor () (see FPMambaOutput; the loss includes fp_jacobian_reg x it)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    fp_iterations: torch.LongTensor | None = None
    fp_residual: torch.FloatTensor | None = None
    fp_jacobian_penalty: torch.FloatTensor | None = None
