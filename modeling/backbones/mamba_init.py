"""The random initialisation the Mamba backbones share (`FixedPointLayer.init_weights` of mamba1 and mamba2)."""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn


def mamba_init_weights(init: Any, conv1d: nn.Conv1d | None, out_proj: nn.Linear) -> None:
    """Mamba's: kaiming-uniform (a = sqrt(5)) for the short conv (None: use_short_conv off; its bias 0) and the output
    projection, through `init` (transformers' guarded helpers, which leave loaded weights alone)."""
    if conv1d is not None:
        init.kaiming_uniform_(conv1d.weight, a=math.sqrt(5))
        if conv1d.bias is not None:
            init.zeros_(conv1d.bias)
    init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
