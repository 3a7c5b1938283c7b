"""Channel mixers Q_t, applied as x~ = y + Q_t (x - y): the registry of kinds, one file per kind.

MIXERS is the one place that names the kinds; each kind (mixers/base.py, MixerKind) owns its projection layout,
initialisation, factors, application and the Triton ops that implement it. To add a mixer: write its file with a
MixerKind subclass (and its factor type, a MixerFactors subclass, if it has factors), list it in registry.py (MIXERS),
and add its cases to tests/modeling/test_mixers.py (docs/architecture.md).
"""

from __future__ import annotations

from .base import KERNEL_OPS, MixerFactors, MixerKind
from .channel_mixer import ACTIVATIONS, ChannelMixer, is_plain_linear
from .householder import RankOneFactors
from .kronecker import KRONECKER_NORMS, KroneckerFactors, kronecker_dims, top_eigenvalue_bound
from .registry import MIXER_INPUTS, MIXER_KINDS, MIXERS, apply_mixer, kernel_supports, mixer_kind

__all__ = [
    "ACTIVATIONS", "KERNEL_OPS", "KRONECKER_NORMS", "MIXERS", "MIXER_INPUTS", "MIXER_KINDS", "ChannelMixer",
    "KroneckerFactors", "MixerFactors", "MixerKind", "RankOneFactors", "apply_mixer", "is_plain_linear",
    "kernel_supports", "kronecker_dims", "mixer_kind", "top_eigenvalue_bound",
]
