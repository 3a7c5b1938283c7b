"""What every kind of channel mixer Q_t provides (docs/method.md, "Channel mixers"; docs/architecture.md).

A kind is stateless: `ChannelMixer` holds the parameters (one linear map `proj` of p_t and the gain) and asks its
kind how to lay out, initialise, read and apply them. The kind also states which Triton ops implement it; every
dispatch (fused iteration, decode kernel, their fallbacks) reads that here, so a kind no kernel supports runs the
PyTorch path instead of reaching a kernel that cannot serve it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

# The Triton ops a mixer kind may be implemented by (modeling/ops).
KERNEL_OPS = ("fused_iteration", "decode")

Activation = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MixerFactors:
    """Q_t for every position in factored form; leading dims (...) match the vectors it is applied to.

    householder/dplr: u (..., r, d) unit vectors, coef (..., r) = c * g * alpha.
    kronecker: k1 (..., m1, m1), k2 (..., m2, m2), coef (...,) = c * g.
    none: all None.
    """

    kind: str
    u: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    k1: torch.Tensor | None = None
    k2: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> "MixerFactors":
        """The factors of the batch rows `rows` (leading dim is the batch; rows: distinct, increasing, as the solver's
        active rows are, so all of them means the whole batch and needs no gather)."""
        present = [t for t in (self.u, self.coef, self.k1, self.k2) if t is not None]
        if not present or rows.numel() == present[0].shape[0]:
            return self
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return MixerFactors(self.kind, pick(self.u), pick(self.coef), pick(self.k1), pick(self.k2))


class MixerKind:
    """One kind of structured Q_t. Subclasses set `name` and implement the static methods below.

    kernel_code: the kind's code in the Triton kernels (MIX constexpr), None if no kernel implements it.
    kernel_ops: the ops of KERNEL_OPS whose Triton kernel implements it (the others run the PyTorch path).
    """

    name: ClassVar[str]
    kernel_code: ClassVar[int | None] = None
    kernel_ops: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def configured(cls, **options: Any) -> type["MixerKind"]:
        """The kind with a layer's mixer options applied (`ChannelMixer`'s `options`, e.g. Kronecker's kron_norm). A
        kind reads the options it has and ignores the others: every layer passes the same set, whatever its kind."""
        return cls

    @staticmethod
    def split_sizes(d: int, rank: int) -> list[int]:
        """The projection layout: sizes of the consecutive chunks of proj's output (empty: no parameters)."""
        raise NotImplementedError

    @staticmethod
    def gate_chunks(d: int, rank: int) -> int:
        """How many chunks at the start of the layout are not gates (the gates' biases start at alpha_init)."""
        raise NotImplementedError

    @staticmethod
    def factors(pre: torch.Tensor, strength: torch.Tensor, act: Activation, d: int, rank: int) -> MixerFactors:
        """Q_t's factors from proj(p_t) (..., P) fp32 and strength c * g (a () tensor)."""
        raise NotImplementedError

    @staticmethod
    def apply(factors: MixerFactors, v: torch.Tensor) -> torch.Tensor:
        """Q v for v (..., d) fp32."""
        raise NotImplementedError
