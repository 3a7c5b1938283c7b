"""The vector FP-RNN backbone: the paper's Fig. 3 model (docs/method.md, "FP-RNN backbone").

Whole sequence (prefill / training), iterating on the hidden-state sequence h (batch, T, d_inner) from h^0 = 0:
    h_{t-1}  = shift(h), with the cached h* of the previous call (or 0) at t = 0
    Q_t      = mixer(x_t, h_{t-1})                                p_t of mixer_input: [x_t ; h_{t-1}] (concat)
    u_t      = h_t + Q_t (b_t * x_t - h_t)                        = Q_t B_t x_t + (I - Q_t) h_t
    hhat     = diag_scan(lambda, (1 - lambda) * u)                hhat_t = lambda_t hhat_{t-1} + (1 - lambda_t) u_t
with lambda_t = sigmoid(W_lambda x_t + b_lambda) and B_t = diag(b_t), b_t = SiLU(W_b x_t): neither reads h. Then,
with h_out = f(h*):
    out = out_proj(RMSNorm(SiLU(z) * c * h_out)),   c_t = SiLU(W_c [x_t ; h_out_{t-1}])
One decode token (T = 1 with a state): its problem is linear in h_t and is solved directly (`decode_token`).
With Q = I (mixer "none", or gain 0) the map does not depend on h: the layer is a plain gated diagonal RNN.
No source model: this backbone is built from its config only (no `from_<source>` conversion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fixed_point import DecodeResult, IterationMap, MapOutput, SolverSettings, check_finite, relative_residual
from ..kernels import diag_scan
from ..layer import FixedPointLayer
from ..mixers import ChannelMixer, MixerFactors, apply_mixer
from ..norms import GatedRMSNorm
from ..precision import acc
from ..settings import FixedPointSettings, LayerSettings


@dataclass
class RNNState:
    """What an FP-RNN layer carries between calls. h: (b, d_inner) fp32, the scan's state after the last token (from
    the final application of the map); y_prev: (b, d_inner) fp32, h* of the last token (read by Q_t and c_t)."""

    h: torch.Tensor
    y_prev: torch.Tensor


@dataclass
class RNNPrelude:
    """Everything of one call that does not depend on the iterate. x, z (b, T, d) fp32; x_part: the mixer's x-part
    (`ChannelMixer.precompute`); bx (b, T, d) fp32: B_t x_t = b_t * x_t; lam (b, T, d) fp32: lambda_t; y_prev0
    (b, d): h* before t = 0; h0 (b, d) | None: the scan's state before t = 0; mask (b, T) bool | None; dtype: the
    input's."""

    x: torch.Tensor
    z: torch.Tensor
    x_part: torch.Tensor | None
    bx: torch.Tensor
    lam: torch.Tensor
    y_prev0: torch.Tensor
    h0: torch.Tensor | None
    mask: torch.Tensor | None
    dtype: torch.dtype


class RNNMap:
    """f(h) of one FP-RNN layer call on the rows `rows` (the composed PyTorch map; no fused kernel implements it).
    Returns MapOutput(hhat (rows, T, d), (final scan state (rows, d),))."""

    def __init__(self, layer: "RNNLayer", pre: RNNPrelude) -> None:
        self.layer = layer
        self.pre = pre

    def __call__(self, y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        layer, pre = self.layer, self.pre
        # Gather the rows still iterating; while all are (the common case) use the tensors as they are.
        b = pre.x.shape[0]
        take = (lambda t: t) if rows.numel() == b else (lambda t: None if t is None else t[rows])  # noqa: E731
        ys = torch.cat([take(pre.y_prev0)[:, None], y[:, :-1]], dim=1)
        factors = layer.channel_mixer.factors(take(pre.x_part), ys)
        mask, lam = take(pre.mask), take(pre.lam)
        # The mixer's projection may run in bf16/fp16 under autocast; the iterate and the scan stay fp32.
        with torch.autocast(y.device.type, enabled=False):
            u = y + apply_mixer(factors, take(pre.bx) - y)
            h, final = diag_scan(lam, (1 - lam) * u, take(pre.h0), mask, layer.settings.chunk_size)
        if mask is not None:
            h = h * mask[:, :, None].to(h.dtype)
        return MapOutput(h, (final,))


class RNNLayer(FixedPointLayer):
    """The vector FP-RNN. forward(hidden_states (b, T, hidden)) -> LayerOutput (see FixedPointLayer).

    Parameters: in_proj (hidden -> [x, z], 2 d_inner), lambda_proj (d -> d, with bias: lambda_t), b_proj (d -> d:
    b_t), c_proj (2 d -> d: c_t from [x_t ; h*_{t-1}]), norm (the output RMSNorm over d_inner, gated by SiLU(z)),
    out_proj (d -> hidden) and the channel mixer (channel_mixer)."""

    def __init__(self, settings: LayerSettings, solver: FixedPointSettings, layer_idx: int | None = None) -> None:
        super().__init__(settings, solver, layer_idx)
        c = settings
        d = self.d_inner = c.expand * c.hidden_size
        self.in_proj = nn.Linear(c.hidden_size, 2 * d, bias=c.use_bias)
        self.lambda_proj = nn.Linear(d, d, bias=True)
        self.b_proj = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(2 * d, d, bias=False)
        self.norm = GatedRMSNorm(d, d, c.layer_norm_epsilon)
        self.out_proj = nn.Linear(d, c.hidden_size, bias=c.use_bias)
        self.channel_mixer = ChannelMixer(c.mixer, d)

    def initial_values(self) -> dict[str, torch.Tensor]:
        """None: every weight keeps transformers' default init, so lambda starts near sigmoid(0) = 1/2, as the
        official code's FP-RNN (decays near 1 would make the implied dense transition collapse towards I)."""
        return {}

    def init_weights(self, init: Any) -> None:
        """Nothing beyond transformers' defaults (normal linear weights, zero biases)."""

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    # ------------------------------------------------------------------------------ no source model to convert
    @classmethod
    def config_from_source(cls, source: nn.Module) -> dict[str, Any]:
        raise NotImplementedError("backbone 'rnn' has no transformers source model to convert from; build it from "
                                  "FPMambaConfig(backbone='rnn')")

    def start_as_source(self) -> None:
        raise NotImplementedError("backbone 'rnn' has no transformers source model to start as")

    # ------------------------------------------------------------------------------------ backbone interface
    def prelude(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, state: RNNState | None) -> RNNPrelude:
        b = hidden_states.shape[0]
        dtype = hidden_states.dtype
        if mask is not None:
            hidden_states = hidden_states * mask[..., None].to(dtype)
        x, z = self.in_proj(hidden_states).split(self.d_inner, dim=-1)
        lam = torch.sigmoid(acc(self.lambda_proj(x)))
        bx = F.silu(acc(self.b_proj(x))) * acc(x)
        if mask is not None:  # a bias would make padded positions non-zero
            bx = bx * mask[..., None].to(bx.dtype)
        x = acc(x)
        return RNNPrelude(
            x=x, z=acc(z), x_part=self.channel_mixer.precompute(x), bx=bx, lam=lam,
            y_prev0=acc(state.y_prev) if state is not None else x.new_zeros(b, self.d_inner),
            h0=None if state is None else acc(state.h), mask=mask, dtype=dtype,
        )

    def initial_iterate(self, prelude: RNNPrelude) -> torch.Tensor:
        return torch.zeros_like(prelude.x)

    def iteration_map(self, prelude: RNNPrelude, settings: SolverSettings) -> RNNMap:
        return RNNMap(self, prelude)

    def map_reads_iterate(self) -> bool:
        """f reads h only through (I - Q_t) h_t and Q_t: not when Q = I (no mixer, or strength c * g = 0). The
        verdict costs one host sync and is kept until the gain changes (its tensor or in-place version counter)."""
        if self.channel_mixer.proj is None:
            return False
        if torch.compiler.is_compiling():  # a traced step keeps the eager verdict (no sync, no version counter)
            return getattr(self, "_reads_iterate", True)
        key = (id(self.channel_mixer.gain), self.channel_mixer.gain._version)
        if getattr(self, "_reads_iterate_key", None) != key:
            with torch.no_grad():  # saves nothing for backward: a checkpoint's recompute, which skips this, must match
                self._reads_iterate = bool(self.channel_mixer.strength() != 0)
            self._reads_iterate_key = key
        return self._reads_iterate

    def token_map(self, pre: RNNPrelude, factors: MixerFactors) -> IterationMap:
        """The map of one decode token (T = 1, with a state), h_t (rows, d) -> (rows, d) with everything else fixed:
        F(h) = lambda_t h_{t-1} + (1 - lambda_t) (h + Q_t (b_t x_t - h)); `factors`: Q_t of every row."""
        lam, bx, h_prev = pre.lam[:, 0], pre.bx[:, 0], pre.h0

        def F_t(h: torch.Tensor, rows: torch.Tensor) -> MapOutput:
            keep = lam[rows]
            return MapOutput(keep * h_prev[rows] + (1 - keep) * (h + apply_mixer(factors.select(rows), bx[rows] - h)))

        return F_t

    def decode_token(self, pre: RNNPrelude, settings: SolverSettings) -> DecodeResult:
        """One token per row, exactly: F(h) = h is linear, (diag(lambda) + diag(1 - lambda) Q_t) h =
        lambda h_{t-1} + (1 - lambda) Q_t b x, solved by LU on the dense Q_t (d columns of the mixer applied to I;
        O(d^3) per row). The cap and tolerance do not apply (one solve, counted as one evaluation); the residual
        reported is F's at the solution, i.e. the solve's rounding."""
        b, d = pre.y_prev0.shape
        factors = self.channel_mixer.factors(None if pre.x_part is None else pre.x_part[:, 0], pre.y_prev0)
        lam, bx = pre.lam[:, 0], pre.bx[:, 0]
        eye = torch.eye(d, dtype=lam.dtype, device=lam.device)
        # A new axis after the batch applies the factors to the d columns of a (b, d, d) stack; its row j is Q e_j.
        Q = apply_mixer(factors.map(lambda t: t[:, None]), eye.expand(b, d, d)).transpose(-1, -2)
        M = torch.diag_embed(lam) + (1 - lam)[:, :, None] * Q
        rhs = lam * pre.h0 + (1 - lam) * apply_mixer(factors, bx)
        h = torch.linalg.solve_ex(M, rhs)[0]  # a singular M gives non-finite values, caught below
        y_out = self.token_map(pre, factors)(h, torch.arange(b, device=h.device)).yhat
        residual = relative_residual(y_out, h, settings.eps)
        if settings.raise_non_finite:
            check_finite(residual, self.layer_idx, 1)
        return DecodeResult(y_out, h, y_out, torch.ones(b, dtype=torch.long, device=h.device), residual)

    def output(self, y_out: torch.Tensor, prelude: RNNPrelude) -> torch.Tensor:
        prev = torch.cat([prelude.y_prev0[:, None].to(y_out.dtype), y_out[:, :-1]], dim=1)
        w = self.c_proj.weight
        c = F.silu(acc(self.c_proj(torch.cat([prelude.x, prev], dim=-1).to(w.dtype))))
        return self.out_proj(self.norm(c * y_out, prelude.z).to(prelude.dtype))

    def pack_state(self, state: RNNState) -> tuple[torch.Tensor, torch.Tensor]:
        """No conv: an empty (b, 0) conv state; h and y_prev stacked as the recurrent state (b, 2, d_inner), fp32."""
        h = acc(state.h)
        return h.new_zeros(h.shape[0], 0), torch.stack([h, acc(state.y_prev)], dim=1)

    def unpack_state(self, conv: torch.Tensor, recurrent: torch.Tensor) -> RNNState:
        return RNNState(h=recurrent[:, 0], y_prev=recurrent[:, 1])

    def next_state(self, prelude: RNNPrelude, y_star: torch.Tensor, y_out: torch.Tensor, aux: tuple) -> RNNState:
        (h,) = aux
        return RNNState(h.detach(), y_star[:, -1].detach())
