"""FP-Mamba, the method: layer, fixed-point solver, channel mixers and kernels. No transformers import here."""

from .fixed_point import SolveResult, SolverSettings, solve
from .layer import FPMambaLayerConfig, FPMambaMixer, LayerState, MixerOutput
from .mixers import ChannelMixer, MixerFactors, apply_mixer

__all__ = [
    "ChannelMixer",
    "FPMambaLayerConfig",
    "FPMambaMixer",
    "LayerState",
    "MixerFactors",
    "MixerOutput",
    "SolveResult",
    "SolverSettings",
    "apply_mixer",
    "solve",
]
