"""What every kind of channel mixer Q_t provides (docs/method.md, "Channel mixers"; docs/architecture.md).

A kind is stateless: `ChannelMixer` holds the parameters (one linear map `proj` of p_t and the gain) and asks its
kind how to lay out, initialise, read and apply them. The kind also states which Triton ops implement it; every
dispatch (fused iteration, decode kernel, their fallbacks) reads that here, so a kind no kernel supports runs the
PyTorch path instead of reaching a kernel that cannot serve it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, ClassVar

import torch

# The Triton ops a mixer kind may be implemented by (modeling/ops).
KERNEL_OPS = ("fused_iteration", "decode")

Activation = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MixerFactors:
    """Q_t for every position in factored form: the base of every kind's factor type. `kind` names the kind whose
    `apply` reads them; a kind with factors declares a dataclass subclass with its own tensor fields, whose leading
    dims (...) match the vectors they are applied to (e.g. householder's u (..., r, d) and coef (..., r)). The kind
    "none" (Q = I) has none: the base itself."""

    kind: str

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "MixerFactors":
        """The same factors with `fn` applied to every tensor field (e.g. a gather of rows, a new axis)."""
        tensors = {f.name: fn(v) for f in fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)}
        return replace(self, **tensors) if tensors else self

    def select(self, rows: torch.Tensor) -> "MixerFactors":
        """The factors of the batch rows `rows` (leading dim is the batch; rows: distinct, increasing, as the solver's
        active rows are, so all of them means the whole batch and needs no gather)."""
        batch = next((v.shape[0] for f in fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)), None)
        if batch is None or rows.numel() == batch:
            return self
        return self.map(lambda t: t[rows])


class MixerKind:
    """One kind of structured Q_t. Subclasses set `name` and implement the static methods below.

    kernel_code: the kind's code in the Triton kernels (MIX constexpr), None if no kernel implements it.
    kernel_ops: the ops of KERNEL_OPS whose Triton kernel implements it (the others run the PyTorch path).
    options: the names of the kind's own options (MixerSettings.options; the model config's field `mixer_<name>`),
    applied by `configured`.

    The contract of a kind (docs/architecture.md, "How to add a mixer"): strength c * g = 0 gives Q = I exactly (a
    converted model's start and the layers' constant-map shortcut rely on it), and every term of I - Q is a gate in
    (0, 1) times a matrix of spectral norm <= 1 scaled by the strength, so a single term keeps ||I - Q|| <= c g * gate
    < 1 at reflection scale c = 1 (the paper's Theorem 3.1 condition for a contractive map). Products of such
    factors (householder) keep ||Q|| <= 1; sums of several (dplr of rank > 1) and c = 2 (reflections) can break
    contraction, which the solver's cap and telemetry report. Its tests check the dense Q against its bounds.
    """

    name: ClassVar[str]
    kernel_code: ClassVar[int | None] = None
    kernel_ops: ClassVar[frozenset[str]] = frozenset()
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def configured(cls, **options: Any) -> type["MixerKind"]:
        """The kind with its options applied (exactly the names of `options`; a kind without options has none)."""
        if options:
            raise ValueError(f"mixer kind {cls.name!r} takes no options, got {sorted(options)}")
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
