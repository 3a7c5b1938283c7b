"""Channel mixers Q_t: structured, input- and state-dependent matrices applied as x~ = y + Q_t (x - y).

Every mixer is conditioned on p_t, built from x_t and the shifted iterate y_{t-1} (`input_mode`):
    "concat": p = [x_t ; y_{t-1}]     "sum": p = x_t + y_{t-1}     "x": p = x_t (no hidden dependence)
All parameters come from ONE linear map `proj` of p, so its x-part is computed once per layer call and only the
y-part is recomputed at each fixed-point iteration. A wrapped `proj` (e.g. a peft LoRA layer, see `is_plain_linear`)
has no weight to split: it is then applied to the whole p at each iteration.

Kinds (c = reflection scale, 1 = paper, 2 = official code; g = learnable gain in [0, 1]):
    householder  Q = prod_i (I - c g alpha_i u_i u_i^T)       u_i = l2norm(act(W_u p)), alpha_i = sigmoid(w_i p + b_i)
    dplr         Q = I - c g sum_i alpha_i u_i u_i^T
    kronecker    Q = I - c g (K1 (x) K2), K_n = diag(sigmoid(W_n p + b_n)) S_n / ||S_n||_F, S_n = P_n P_n^T,
                 P_n = upper_triangular(act(W_n p)); ||K_n|| <= 1 since the Frobenius norm bounds the spectral one
    none         Q = I
The gain g = tri(gain), a triangle wave of the stored parameter (see `ChannelMixer.effective_gain`), is 1 for a fresh
model (exactly the paper's parametrisation) and 0 for a converted Mamba-2, where it makes Q = I exactly while
keeping a gradient path to grow the mixer during fine-tuning, whichever way the optimiser first moves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.reference import acc

MIXER_KINDS = ("householder", "dplr", "kronecker", "none")
MIXER_INPUTS = ("concat", "sum", "x")
_ACTIVATIONS = {"silu": F.silu, "identity": lambda t: t, "tanh": torch.tanh, "relu": F.relu}


def is_plain_linear(module: nn.Module) -> bool:
    """Whether `module` is exactly an nn.Linear, whose map is F.linear(v, weight, bias): only then may a layer split
    its weight into x- and y-parts or stack it with others for the fused kernels. A wrapped linear (a peft LoRA
    layer, ...) must be called: its `.weight` is only its base map, and reading it would bypass the adapter."""
    return type(module) is nn.Linear


def kronecker_dims(d_inner: int) -> tuple[int, int]:
    """Factor d_inner = m1 * m2 with m1 the largest divisor not above sqrt(d_inner)."""
    m1 = max(k for k in range(1, math.isqrt(d_inner) + 1) if d_inner % k == 0)
    return m1, d_inner // m1


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
        """The factors of the batch rows `rows` (leading dim is the batch)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return MixerFactors(self.kind, pick(self.u), pick(self.coef), pick(self.k1), pick(self.k2))


def apply_mixer(factors: MixerFactors, v: torch.Tensor) -> torch.Tensor:
    """Q v for v (..., d), in fp32."""
    v = acc(v)
    if factors.kind == "none":
        return v
    if factors.kind == "householder":
        # Q = H_1 ... H_r: apply H_r first.
        for i in reversed(range(factors.u.shape[-2])):
            u = factors.u[..., i, :]
            v = v - (factors.coef[..., i] * (u * v).sum(-1))[..., None] * u
        return v
    if factors.kind == "dplr":
        proj = torch.einsum("...rd,...d->...r", factors.u, v) * factors.coef
        return v - torch.einsum("...r,...rd->...d", proj, factors.u)
    if factors.kind == "kronecker":
        m1, m2 = factors.k1.shape[-1], factors.k2.shape[-1]
        V = v.reshape(*v.shape[:-1], m1, m2)
        # (K1 (x) K2) vec(V) = vec(K1 V K2^T) for row-major vec.
        KV = factors.k1 @ V @ factors.k2.transpose(-1, -2)
        return v - factors.coef[..., None] * KV.reshape(v.shape)
    raise ValueError(f"unknown mixer kind {factors.kind!r}")


class ChannelMixer(nn.Module):
    """Produces the factors of Q_t from x_t and the shifted iterate y_{t-1}."""

    def __init__(
        self,
        kind: str,
        d_inner: int,
        input_mode: str = "concat",
        rank: int = 1,
        reflection_scale: float = 1.0,
        activation: str = "silu",
        alpha_init: float = 0.1,
        initializer_range: float = 0.02,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.d_inner = d_inner
        self.input_mode = input_mode
        self.rank = rank
        self.reflection_scale = float(reflection_scale)
        self.act = _ACTIVATIONS[activation]
        self.alpha_init = alpha_init
        self.initializer_range = initializer_range
        if kind == "none":
            self.proj = None
            return
        if kind in ("householder", "dplr"):
            self.split_sizes = [rank * d_inner, rank]
        else:
            m1, m2 = kronecker_dims(d_inner)
            self.kron_dims = (m1, m2)
            self.split_sizes = [m1 * m1, m2 * m2, m1, m2]
        in_dim = 2 * d_inner if input_mode == "concat" else d_inner
        self.proj = nn.Linear(in_dim, sum(self.split_sizes), bias=True)
        self.gain = nn.Parameter(torch.ones(1))  # shape (1,), not (): FSDP2's fully_shard rejects 0-dim parameters
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial parameter values by name: random directions, gates at alpha_init, gain 1 (Q near identity)."""
        if self.proj is None:
            return {}
        logit = math.log(self.alpha_init / (1.0 - self.alpha_init))
        bias = torch.zeros_like(self.proj.bias)
        # Biases of the gates (alpha for householder/dplr, the sigmoid diagonals for kronecker).
        gate_start = self.split_sizes[0] if self.kind != "kronecker" else sum(self.split_sizes[:2])
        bias[gate_start:] = logit
        weight = torch.randn_like(self.proj.weight) * self.initializer_range
        return {"proj.weight": weight, "proj.bias": bias, "gain": torch.ones_like(self.gain)}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_values().items():
            self.get_parameter(name).copy_(value)

    def precompute(self, x: torch.Tensor) -> torch.Tensor | None:
        """What `factors` needs from x (..., d), computed once per layer call: the x-part of the projection with its
        bias (..., P); x itself (..., d) when `proj` is wrapped (applied to the whole input at every iteration)."""
        if self.proj is None:
            return None
        if not is_plain_linear(self.proj):
            return acc(x)
        d = self.d_inner
        w = self.proj.weight[:, :d] if self.input_mode == "concat" else self.proj.weight
        return acc(F.linear(x.to(w.dtype), w, self.proj.bias))

    def y_weight(self) -> torch.Tensor | None:
        """The weight a plain `proj` applies to y_{t-1} (P, d), or None when the mixer does not read the iterate."""
        if self.proj is None or self.input_mode == "x":
            return None
        return self.proj.weight[:, self.d_inner:] if self.input_mode == "concat" else self.proj.weight

    def effective_gain(self) -> torch.Tensor:
        """g = tri(gain) in [0, 1], a () tensor: the triangle wave of period 2 through tri(0) = 0 and tri(1) = 1.

        It equals the stored value on [0, 1] (so a fresh model's 1 and a converted Mamba-2's 0 are exact, and a
        stored gain in [0, 1] means what it did under the former clamp(gain, 0, 1); one outside, which the clamp had
        frozen at 0 or 1, now reads as its fold) and has slope +-1 everywhere, 0 and 1 included (torch.where, not
        torch.abs, whose gradient at 0 is 0): an optimiser step that pushes the gain out of [0, 1] folds it back
        instead of freezing it where a clamp's gradient is zero.
        """
        raw = acc(self.gain[0])
        folded = torch.remainder(torch.where(raw >= 0, raw, -raw), 2.0)
        return torch.where(folded <= 1.0, folded, 2.0 - folded)

    def strength(self) -> torch.Tensor:
        """c * g: the factor in front of every rank-one term, a () tensor."""
        return self.reflection_scale * self.effective_gain()

    def _project(self, x_part: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        """proj(p_t) (..., P) in fp32 from `precompute`'s output and the shifted iterate y_{t-1} (..., d)."""
        if is_plain_linear(self.proj):
            w = self.y_weight()
            return x_part if w is None else x_part + acc(F.linear(y_prev.to(w.dtype), w))
        # Wrapped: x_part is x itself (..., d); build p and call the module.
        if self.input_mode == "concat":
            p = torch.cat([x_part, y_prev], dim=-1)
        elif self.input_mode == "sum":
            p = x_part + y_prev
        else:
            p = x_part
        return acc(self.proj(p.to(self.proj.weight.dtype)))

    def factors(self, x_part: torch.Tensor | None, y_prev: torch.Tensor) -> MixerFactors:
        """Q_t's factors given `precompute`'s output for x_t and the shifted iterate y_{t-1} (..., d)."""
        if self.proj is None:
            return MixerFactors("none")
        d = self.d_inner
        pre = self._project(x_part, y_prev)
        strength = self.strength()
        lead = pre.shape[:-1]
        if self.kind in ("householder", "dplr"):
            u_raw, a_raw = pre.split(self.split_sizes, dim=-1)
            u = F.normalize(self.act(u_raw.reshape(*lead, self.rank, d)), dim=-1, eps=1e-6)
            return MixerFactors(self.kind, u=u, coef=strength * torch.sigmoid(a_raw))
        m1, m2 = self.kron_dims
        p1, p2, g1, g2 = pre.split(self.split_sizes, dim=-1)
        k1 = self._psd_factor(p1.reshape(*lead, m1, m1), g1)
        k2 = self._psd_factor(p2.reshape(*lead, m2, m2), g2)
        return MixerFactors("kronecker", k1=k1, k2=k2, coef=strength.expand(lead))

    def _psd_factor(self, raw: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        P = torch.triu(self.act(raw))
        S = P @ P.transpose(-1, -2)
        S = S / (S.flatten(-2).norm(dim=-1)[..., None, None] + 1e-6)
        return torch.sigmoid(gate)[..., :, None] * S
