"""The registry of mixer kinds: the one place that names them (see mixers/__init__.py)."""

from __future__ import annotations

import torch

from ..precision import acc
from .base import KERNEL_OPS, MixerFactors, MixerKind
from .dplr import DPLR
from .householder import Householder
from .identity import Identity
from .kronecker import Kronecker

MIXERS: dict[str, type[MixerKind]] = {kind.name: kind for kind in (Householder, DPLR, Kronecker, Identity)}
MIXER_KINDS = tuple(MIXERS)
MIXER_INPUTS = ("concat", "sum", "x")


def mixer_kind(name: str) -> type[MixerKind]:
    """The kind registered as `name`, or a ValueError listing the known ones."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer kind {name!r}; choose one of {MIXER_KINDS}")
    return MIXERS[name]


def kernel_supports(name: str, op: str) -> bool:
    """Whether the Triton kernel of `op` (one of KERNEL_OPS) implements mixer kind `name`."""
    if op not in KERNEL_OPS:
        raise ValueError(f"unknown kernel op {op!r}; one of {KERNEL_OPS}")
    return op in mixer_kind(name).kernel_ops


def apply_mixer(factors: MixerFactors, v: torch.Tensor) -> torch.Tensor:
    """Q v for v (..., d), in fp32."""
    return mixer_kind(factors.kind).apply(factors, acc(v))

