"""A small LSTM language model, the recurrent baseline of the paper's experiments (docs/method.md, "The paper's tasks").

It is a `PreTrainedModel` so the same `Trainer`, `save_pretrained` and `AutoModelForCausalLM` paths serve it and
FP-Mamba alike; importing `fpmamba_lab.harness` registers model_type "fpmamba_lstm" with the Auto classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput


@strict(accept_kwargs=True)
class LSTMConfig(PreTrainedConfig):
    """vocab_size, hidden_size (embedding and LSTM width), num_hidden_layers (stacked LSTM layers)."""

    model_type = "fpmamba_lstm"

    vocab_size: int = 32
    hidden_size: int = 128
    num_hidden_layers: int = 1
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None


@dataclass
class LSTMOutput(ModelOutput):
    """loss (transformers' causal-LM loss: `labels` shifted inside, or aligned `shift_labels`); logits (batch, T,
    vocab) fp32."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class LSTMForCausalLM(PreTrainedModel):
    """Embedding -> nn.LSTM -> linear head. forward(input_ids, labels=None) -> LSTMOutput."""

    config_class = LSTMConfig
    config: LSTMConfig
    base_model_prefix = "lstm"

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lstm = nn.LSTM(config.hidden_size, config.hidden_size, config.num_hidden_layers, batch_first=True)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's own LSTM initialisation (uniform +-1/sqrt(hidden)) and unit-variance embeddings:
        transformers' default (std 0.02 embeddings) leaves the LSTM inputs near zero and it does not learn
        the word problems in a CPU-sized run."""
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LSTM):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None, **kwargs: Any) -> LSTMOutput:
        """kwargs: transformers' causal-LM loss arguments (`shift_labels`: targets aligned with the logits, used
        instead of shifting `labels`; `num_items_in_batch` from Trainer), as every transformers causal LM takes them."""
        hidden, _ = self.lstm(self.embeddings(input_ids))
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return LSTMOutput(loss=loss, logits=logits)


AutoConfig.register(LSTMConfig.model_type, LSTMConfig, exist_ok=True)
AutoModelForCausalLM.register(LSTMConfig, LSTMForCausalLM, exist_ok=True)

__all__ = ["LSTMConfig", "LSTMForCausalLM", "LSTMOutput"]
