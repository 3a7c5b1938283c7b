"""FP-Mamba, the method (import name `fpmamba_core`): the fixed-point layer and solver, backbones, channel mixers
and kernels. docs/architecture.md draws the picture."""

from .backbones import BACKBONES, LayerState, Mamba2Layer
from .fixed_point import MapOutput, SolveResult, SolverSettings, solve
from .layer import FixedPointLayer, LayerOutput
from .mixers import MIXERS, ChannelMixer, MixerFactors, apply_mixer

__all__ = [
    "BACKBONES",
    "ChannelMixer",
    "FixedPointLayer",
    "LayerOutput",
    "LayerState",
    "MIXERS",
    "Mamba2Layer",
    "MapOutput",
    "MixerFactors",
    "SolveResult",
    "SolverSettings",
    "apply_mixer",
    "solve",
]
