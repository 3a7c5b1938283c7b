"""Backbones: the model-specific half of an FP-RNN layer (a FixedPointLayer subclass each; docs/architecture.md).

BACKBONES is the one place that names them; the model picks a layer class here from its config.
"""

from __future__ import annotations

from ..layer import FixedPointLayer
from .mamba1 import MAMBA1_GATES, MAMBA1_NORMS, Mamba1Layer, Mamba1Map, Mamba1Prelude, Mamba1State
from .mamba2 import LayerState, Mamba2Layer, Mamba2Map, Mamba2Prelude
from .rnn import RNNLayer, RNNMap, RNNPrelude, RNNState

BACKBONES: dict[str, type[FixedPointLayer]] = {"mamba2": Mamba2Layer, "mamba1": Mamba1Layer, "rnn": RNNLayer}


def backbone_layer(name: str) -> type[FixedPointLayer]:
    """The layer class registered as `name`, or a ValueError listing the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {tuple(BACKBONES)}")
    return BACKBONES[name]


__all__ = ["BACKBONES", "LayerState", "MAMBA1_GATES", "MAMBA1_NORMS", "Mamba1Layer", "Mamba1Map", "Mamba1Prelude",
           "Mamba1State", "Mamba2Layer", "Mamba2Map", "Mamba2Prelude", "RNNLayer", "RNNMap", "RNNPrelude", "RNNState",
           "backbone_layer"]
