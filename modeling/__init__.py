"""FP-Mamba, the method (import name `fpmamba_core`): the fixed-point layer and solver, backbones, channel mixers
and kernels. docs/architecture.md draws the picture."""

from .backbones import BACKBONES, LayerState, Mamba2Layer
from .fixed_point import DecodeResult, MapOutput, SolveResult, SolverSettings, solve
from .layer import FixedPointLayer, LayerOutput
from .mixers import MIXERS, ChannelMixer, MixerFactors, apply_mixer
from .settings import FixedPointSettings, LayerSettings, MixerSettings, check_call_budget

__all__ = [
    "BACKBONES",
    "ChannelMixer",
    "DecodeResult",
    "FixedPointLayer",
    "FixedPointSettings",
    "LayerOutput",
    "LayerSettings",
    "LayerState",
    "MIXERS",
    "Mamba2Layer",
    "MapOutput",
    "MixerFactors",
    "MixerSettings",
    "SolveResult",
    "SolverSettings",
    "apply_mixer",
    "check_call_budget",
    "solve",
]
