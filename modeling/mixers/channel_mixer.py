"""ChannelMixer: the parameters of Q_t and the map from (x_t, y_{t-1}) to its factors.

Every mixer is conditioned on p_t, built from x_t and the shifted iterate y_{t-1} (`input_mode`):
    "concat": p = [x_t ; y_{t-1}]     "sum": p = x_t + y_{t-1}     "x": p = x_t (no hidden dependence)
All parameters come from ONE linear map of p, so its x-part is computed once per layer call and only the y-part is
recomputed at each fixed-point iteration. The map is `proj` (p -> P), or with `proj_rank` r > 0 (config
mixer_proj_rank) `proj(proj_in(p))`, factored through r (p -> r -> P, the bias on `proj`): then an iteration
projects y_{t-1} as y -> r -> P. A wrapped projection (e.g. a peft LoRA layer, see `is_plain_linear`) has no weight to
split: the map is then applied to the whole p at each iteration.

The strength in front of Q - I is c * g: c the reflection scale (1 = paper, 2 = official code) and g = tri(gain), a
triangle wave of the stored parameter (see `effective_gain`): 1 for a fresh model (exactly the paper's
parametrisation) and 0 for a converted Mamba-2, where it makes Q = I exactly while keeping a gradient path to grow
the mixer during fine-tuning, whichever way the optimiser first moves it. The kind (mixers/registry.py, MIXERS)
decides the layout of proj's output, the factors and their application.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import acc
from ..settings import MixerSettings
from .base import MixerFactors
from .registry import MIXER_INPUTS, mixer_kind

ACTIVATIONS = {"silu": F.silu, "identity": lambda t: t, "tanh": torch.tanh, "relu": F.relu}


def is_plain_linear(module: nn.Module) -> bool:
    """Whether `module` is exactly an nn.Linear, whose map is F.linear(v, weight, bias): only then may a layer split
    its weight into x- and y-parts or stack it with others for the fused kernels. A wrapped linear (a peft LoRA
    layer, ...) must be called: its `.weight` is only its base map, and reading it would bypass the adapter."""
    return type(module) is nn.Linear


class ChannelMixer(nn.Module):
    """Produces the factors of Q_t from x_t and the shifted iterate y_{t-1}: the kind, layout and options of
    `settings` (MixerSettings) for a layer of width d_inner."""

    def __init__(self, settings: MixerSettings, d_inner: int) -> None:
        super().__init__()
        kind = mixer_kind(settings.kind)
        if set(settings.options) != set(kind.options):
            raise ValueError(f"mixer kind {settings.kind!r} takes the options {kind.options}, got "
                             f"{tuple(settings.options)}")
        if settings.input_mode not in MIXER_INPUTS:
            raise ValueError(f"unknown mixer input {settings.input_mode!r}; choose one of {MIXER_INPUTS}")
        if settings.activation not in ACTIVATIONS:
            raise ValueError(f"unknown mixer activation {settings.activation!r}; choose one of {tuple(ACTIVATIONS)}")
        self.spec = kind.configured(**settings.options)
        self.kind = settings.kind
        self.d_inner = d_inner
        self.input_mode = settings.input_mode
        self.rank = settings.rank
        self.reflection_scale = float(settings.reflection_scale)
        self.act = ACTIVATIONS[settings.activation]
        self.alpha_init = settings.alpha_init
        self.initializer_range = settings.initializer_range
        self.split_sizes = self.spec.split_sizes(d_inner, settings.rank)
        self.proj_rank = proj_rank = settings.proj_rank
        self.proj_in = None
        if not self.split_sizes:
            self.proj = None
            return
        in_dim = 2 * d_inner if self.input_mode == "concat" else d_inner
        if proj_rank > 0:  # p -> r -> P: proj_in (no bias), then proj (with the bias)
            self.proj_in = nn.Linear(in_dim, proj_rank, bias=False)
            in_dim = proj_rank
        self.proj = nn.Linear(in_dim, sum(self.split_sizes), bias=True)
        self.gain = nn.Parameter(torch.ones(1))  # shape (1,), not (): FSDP2's fully_shard rejects 0-dim parameters
        self._finite_gain: tuple[int, int] | None = None  # the gain (tensor, version) last checked finite
        self.reset_parameters()

    def projections(self) -> tuple[nn.Module, ...]:
        """The linear maps of p, innermost first: (proj,) or (proj_in, proj); () without a projection."""
        return tuple(m for m in (self.proj_in, self.proj) if m is not None)

    def plain(self) -> bool:
        """Whether every projection is a plain nn.Linear (`is_plain_linear`), whose weights may be split and read."""
        return all(is_plain_linear(m) for m in self.projections())

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial parameter values by name: random directions, gates at alpha_init, gain 1 (Q near identity). With a
        low-rank projection, proj_in ~ N(0, initializer_range^2) and proj ~ N(0, 1 / r): the product's outputs then
        have the variance of the full-rank map's."""
        if self.proj is None:
            return {}
        logit = math.log(self.alpha_init / (1.0 - self.alpha_init))
        bias = torch.zeros_like(self.proj.bias)
        bias[sum(self.split_sizes[: self.spec.gate_chunks(self.d_inner, self.rank)]):] = logit
        if self.proj_in is None:
            weight = torch.randn_like(self.proj.weight) * self.initializer_range
            return {"proj.weight": weight, "proj.bias": bias, "gain": torch.ones_like(self.gain)}
        return {"proj_in.weight": torch.randn_like(self.proj_in.weight) * self.initializer_range,
                "proj.weight": torch.randn_like(self.proj.weight) * self.proj_rank ** -0.5, "proj.bias": bias,
                "gain": torch.ones_like(self.gain)}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_values().items():
            self.get_parameter(name).copy_(value)

    def precompute(self, x: torch.Tensor) -> torch.Tensor | None:
        """What `factors` needs from x (..., d), computed once per layer call: the x-part of the projection with its
        bias (..., P); x itself (..., d) when `proj` is wrapped (applied to the whole input at every iteration)."""
        if self.proj is None:
            return None
        if not self.plain():
            return acc(x)
        first = self.projections()[0]
        w = first.weight[:, : self.d_inner] if self.input_mode == "concat" else first.weight
        if self.proj_in is None:
            return acc(F.linear(x.to(w.dtype), w, self.proj.bias))
        low = F.linear(x.to(w.dtype), w)
        return acc(F.linear(low.to(self.proj.weight.dtype), self.proj.weight, self.proj.bias))

    def _y_in_weight(self) -> torch.Tensor | None:
        """The weight the first projection applies to y_{t-1}: (P, d), or (r, d) when low-rank; None when the mixer
        does not read the iterate."""
        if self.proj is None or self.input_mode == "x":
            return None
        first = self.projections()[0]
        return first.weight[:, self.d_inner:] if self.input_mode == "concat" else first.weight

    def y_weight(self) -> torch.Tensor | None:
        """The (P, d) matrix a plain projection applies to y_{t-1}, or None when the mixer does not read the
        iterate. Low-rank: the product proj.weight @ (proj_in's y-columns), formed here for the fused Triton iteration,
        which reads one y-weight matrix; the PyTorch path applies the two factors (y -> r -> P) instead."""
        w = self._y_in_weight()
        if w is None or self.proj_in is None:
            return w
        return self.proj.weight @ w.to(self.proj.weight.dtype)

    def effective_gain(self) -> torch.Tensor:
        """g = tri(gain) in [0, 1], a () tensor: the triangle wave of period 2 through tri(0) = 0 and tri(1) = 1.

        It equals the stored value on [0, 1] (so a fresh model's 1 and a converted Mamba-2's 0 are exact, and a
        stored gain in [0, 1] means what it did under the former clamp(gain, 0, 1); one outside, which the clamp had
        frozen at 0 or 1, now reads as its fold) and has slope +-1 everywhere, 0 and 1 included (torch.where, not
        torch.abs, whose gradient at 0 is 0): an optimiser step that pushes the gain out of [0, 1] folds it back
        instead of freezing it where a clamp's gradient is zero.
        """
        raw = acc(self.gain[0])
        self._check_finite_gain(raw)
        folded = torch.remainder(torch.where(raw >= 0, raw, -raw), 2.0)
        return torch.where(folded <= 1.0, folded, 2.0 - folded)

    def _check_finite_gain(self, raw: torch.Tensor) -> None:
        """Raise FloatingPointError for a NaN or infinite gain. Its fold would be NaN, which the layers' test for
        Q = I (strength > 0) reads as a zero strength: the mixer would silently drop out. One host sync per change of
        the gain (its tensor or in-place version), none in a traced step (the eager call before it checked)."""
        if torch.compiler.is_compiling():
            return
        key = (id(self.gain), self.gain._version)
        if key == self._finite_gain:
            return
        if not bool(torch.isfinite(raw)):
            raise FloatingPointError(
                f"the channel mixer's gain is {raw.item()} (a non-finite parameter): the weights are broken; load "
                "finite ones (a diverged training step, or a bad checkpoint)"
            )
        self._finite_gain = key

    def strength(self) -> torch.Tensor:
        """c * g: the factor in front of every term of Q - I, a () tensor."""
        return self.reflection_scale * self.effective_gain()

    def _project(self, x_part: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        """proj(p_t) (..., P) in fp32 from `precompute`'s output and the shifted iterate y_{t-1} (..., d)."""
        if self.plain():
            w = self._y_in_weight()
            if w is None:
                return x_part
            y_part = F.linear(y_prev.to(w.dtype), w)
            if self.proj_in is not None:  # y -> r -> P
                y_part = F.linear(y_part.to(self.proj.weight.dtype), self.proj.weight)
            return x_part + acc(y_part)
        # Wrapped: x_part is x itself (..., d); build p and call the module.
        if self.input_mode == "concat":
            p = torch.cat([x_part, y_prev], dim=-1)
        elif self.input_mode == "sum":
            p = x_part + y_prev
        else:
            p = x_part
        for m in self.projections():
            p = m(p.to(m.weight.dtype))
        return acc(p)

    def factors(self, x_part: torch.Tensor | None, y_prev: torch.Tensor) -> MixerFactors:
        """Q_t's factors given `precompute`'s output for x_t and the shifted iterate y_{t-1} (..., d)."""
        if self.proj is None:
            return MixerFactors(self.kind)
        pre = self._project(x_part, y_prev)
        return self.spec.factors(pre, self.strength(), self.act, self.d_inner, self.rank)
