"""The Mamba-1 backbone of FP-Mamba, the paper's main model (parameter names as transformers' MambaMixer;
docs/method.md, "Mamba-1 backbone").

Whole sequence (prefill / training), iterating on y (batch, T, d_inner) from y^0 = 0:
    y_{t-1}  = shift(y), with the cached y* of the previous call (or 0) at t = 0
    x~       = y + Q_t (x - y)                                   Q_t from the mixer on (x_t, y_{t-1})
    B_t, C_t = l2norm(B^x_t + W_B^y y_{t-1}), l2norm(C^x_t + W_C^y y_{t-1})     (over the state, if bc_norm)
    dt_t     = softplus(dt_proj(dt^x_t [+ W_dt^y y_{t-1}]))      (dt^x_t: the time-step rank part of x_proj(x_t))
    s        = selective_scan(x~, dt, A, B, C) + D x~            (decay exp(dt_t A) per channel and state entry)
    yhat     = [LayerNorm](s [* SiLU(z)])                        (the gate inside the loop; mamba1_norm="layernorm")
then, with y_out = f(y*) and n(y_out) = LayerNorm(y_out) (mamba1_norm="layernorm_after_loop") or y_out:
    out = out_proj(SiLU(z + W_zy shift(y_out)) * n(y_out))       gate after the loop (official code's default)
    out = out_proj(n(y_out))                                     gate inside the loop (the default)
The in-loop LayerNorm (paper, official code) divides out the contraction (I - Q) gives the fed-back iterate, so at a
small initialisation the map is nearly scale-invariant in y: slow, with several fixed points (docs/method.md). The
default normalises once, after the loop, where it does not enter the map.
One decode token (T = 1 with a state): the per-token loop of `decode_steps.selective_decode_step`.
With Q = I, the y-projections at zero and no in-loop norm the map does not depend on y: the layer IS Mamba-1's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode_steps import selective_decode_step
from ..fixed_point import DecodeResult, MapOutput, SolverSettings
from ..kernels import selective_scan
from ..layer import FixedPointLayer
from ..mixers import ChannelMixer, apply_mixer
from ..ops.readout_reference import mamba1_readout
from ..precision import acc
from ..settings import FixedPointSettings, LayerSettings
from .mamba_init import mamba_init_weights

MAMBA1_GATES = ("after_loop", "in_loop")  # config field mamba1_gate
MAMBA1_NORMS = ("layernorm_after_loop", "layernorm", "none")  # config field mamba1_norm; "layernorm": in the loop


@dataclass
class Mamba1State:
    """What a Mamba-1 layer carries between calls. conv: (b, d_inner, conv_kernel) last pre-conv inputs;
    ssm: (b, d_inner, state) fp32 H; y_prev: (b, d_inner) fp32 y* of the last token; y_out_prev: (b, d_inner) fp32
    f(y*) of the last token (read by the after-loop gate; None with the gate inside the loop)."""

    conv: torch.Tensor
    ssm: torch.Tensor
    y_prev: torch.Tensor
    y_out_prev: torch.Tensor | None


@dataclass
class Mamba1Prelude:
    """Everything of one call that does not depend on the iterate. x, z (b, T, d) fp32; x_part: the mixer's
    x-part (`ChannelMixer.precompute`); Bx, Cx (b, T, n) fp32; dt_low (b, T, rank): the time-step part of x_proj;
    dt (b, T, d) fp32, or None when dt reads y_{t-1}; A (d, n) fp32; y_prev0, y_out_prev0 (b, d): y* and f(y*)
    before t = 0; H0 (b, d, n) | None; mask (b, T) bool | None; window: the new conv window; dtype: the input's."""

    x: torch.Tensor
    z: torch.Tensor
    x_part: torch.Tensor | None
    Bx: torch.Tensor
    Cx: torch.Tensor
    dt_low: torch.Tensor
    dt: torch.Tensor | None
    A: torch.Tensor
    y_prev0: torch.Tensor
    y_out_prev0: torch.Tensor
    H0: torch.Tensor | None
    mask: torch.Tensor | None
    window: torch.Tensor
    dtype: torch.dtype


class Mamba1Map:
    """f(y) of one Mamba-1 layer call on the rows `rows` (the composed PyTorch map). Returns MapOutput(yhat, (H,))."""

    def __init__(self, layer: "Mamba1Layer", pre: Mamba1Prelude) -> None:
        self.layer = layer
        self.pre = pre

    def __call__(self, y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        layer, pre = self.layer, self.pre
        # Gather the rows still iterating; while all are (the common case) use the tensors as they are.
        all_rows = rows.numel() == pre.x.shape[0]
        take = (lambda t: t) if all_rows else (lambda t: None if t is None else t[rows])  # noqa: E731
        ys = torch.cat([take(pre.y_prev0)[:, None], y[:, :-1]], dim=1)
        factors = layer.channel_mixer.factors(take(pre.x_part), ys)
        B, C = layer.bc(take(pre.Bx), take(pre.Cx), ys)
        dt = take(pre.dt) if pre.dt is not None else layer.dt(take(pre.dt_low), ys)
        mask = take(pre.mask)
        # The projections above may run in bf16/fp16 under autocast; the iterate and the scan stay fp32.
        with torch.autocast(y.device.type, enabled=False):
            xt = y + apply_mixer(factors, take(pre.x) - y)
            s, H = selective_scan(xt, dt, pre.A, B, C, layer.D, take(pre.H0), mask)
            yhat = layer.readout(s, take(pre.z))
        if mask is not None:
            yhat = yhat * mask[:, :, None].to(yhat.dtype)
        return MapOutput(yhat, (H,))


class Mamba1Layer(FixedPointLayer):
    """FP-Mamba on a Mamba-1 backbone. forward(hidden_states (b, T, hidden)) -> LayerOutput (see FixedPointLayer)."""

    def __init__(self, settings: LayerSettings, solver: FixedPointSettings, layer_idx: int | None = None) -> None:
        super().__init__(settings, solver, layer_idx)
        c = settings
        self.d_inner = d = c.expand * c.hidden_size
        self.ssm_state_size = n = c.state_size
        self.conv_kernel_size = c.conv_kernel
        self.time_step_rank = r = math.ceil(c.hidden_size / 16) if c.time_step_rank == "auto" else c.time_step_rank
        self.gate_in_loop = c.mamba1_gate == "in_loop"
        self.in_proj = nn.Linear(c.hidden_size, 2 * d, bias=c.use_bias)
        self.conv1d = (nn.Conv1d(d, d, c.conv_kernel, groups=d, padding=c.conv_kernel - 1, bias=c.use_conv_bias)
                       if c.use_short_conv else None)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.empty(d, n))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = nn.Linear(d, c.hidden_size, bias=c.use_bias)
        # FP-Mamba's additions: the channel mixer, the LayerNorm (in or after the loop), the hidden-state dependence
        # of B, C (and dt), and the after-loop gate's dependence on the previous output.
        self.channel_mixer = ChannelMixer(c.mixer, d)
        self.norm = nn.LayerNorm(d, eps=c.layer_norm_epsilon) if c.mamba1_norm != "none" else None
        self.norm_in_loop = c.mamba1_norm == "layernorm"
        self.bc_y_proj = nn.Linear(d, 2 * n, bias=False) if c.bc_hidden_dependence else None
        self.dt_y_proj = nn.Linear(d, r, bias=False) if c.dt_hidden_dependence else None
        self.gate_y_proj = None if self.gate_in_loop else nn.Linear(d, d, bias=False)
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Mamba-1's A_log (S4D-real: log 1..n in every channel), D, dt_proj (weight uniform in +-rank^-0.5, bias the
        inverse softplus of a log-uniform dt), and the y-projections at zero (the iteration starts as Mamba-1 plus
        the mixer and the norm). Used by `reset_parameters` here and by the transformers model's `_init_weights`."""
        c = self.settings
        d, r = self.d_inner, self.time_step_rank
        dt = torch.exp(torch.rand(d) * (math.log(c.time_step_max) - math.log(c.time_step_min))
                       + math.log(c.time_step_min)).clamp(min=c.time_step_floor)
        values = {
            "A_log": torch.log(torch.arange(1, self.ssm_state_size + 1, dtype=torch.float32)).expand(d, -1).clone(),
            "D": torch.ones(d),
            "dt_proj.weight": (torch.rand(d, r) * 2 - 1) * r**-0.5,
            "dt_proj.bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
        }
        for proj in ("bc_y_proj", "dt_y_proj", "gate_y_proj"):
            if getattr(self, proj) is not None:
                values[f"{proj}.weight"] = torch.zeros_like(getattr(self, proj).weight)
        return values

    def init_weights(self, init: Any) -> None:
        mamba_init_weights(init, self.conv1d, self.out_proj)

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    # ------------------------------------------------------------------------ conversion from MambaForCausalLM
    source_model = "MambaForCausalLM"
    added_parameters = ("channel_mixer.", "norm.", "bc_y_proj.", "dt_y_proj.", "gate_y_proj.")

    @classmethod
    def config_from_source(cls, source: nn.Module) -> dict[str, Any]:
        """MambaConfig's fields under our names; B/C not normalised and no in-loop norm (Mamba-1 has neither)."""
        src = source.config
        if src.hidden_act != "silu":
            raise ValueError(f"from_mamba: only hidden_act='silu' Mamba models convert, got {src.hidden_act!r}")
        if src.intermediate_size != src.expand * src.hidden_size:
            raise ValueError("from_mamba: intermediate_size must equal expand * hidden_size")
        return dict(
            backbone="mamba1", vocab_size=src.vocab_size, hidden_size=src.hidden_size,
            num_hidden_layers=src.num_hidden_layers, state_size=src.state_size, expand=src.expand,
            conv_kernel=src.conv_kernel, use_bias=src.use_bias, use_conv_bias=src.use_conv_bias,
            layer_norm_epsilon=src.layer_norm_epsilon, residual_in_fp32=src.residual_in_fp32,
            time_step_rank=int(src.time_step_rank), time_step_min=src.time_step_min,
            time_step_max=src.time_step_max, time_step_floor=src.time_step_floor,
            rescale_prenorm_residual=src.rescale_prenorm_residual, tie_word_embeddings=src.tie_word_embeddings,
            pad_token_id=src.pad_token_id, bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id,
            bc_norm=False, mamba1_norm="none",
        )

    @torch.no_grad()
    def start_as_source(self) -> None:
        """Mixer gain 0 (Q = I; its random directions stay, so fine-tuning can grow it), y-projections 0. A LayerNorm
        (in or after the loop) cannot compute Mamba-1's output: refused."""
        if self.norm is not None:
            raise ValueError(f"from_mamba: a LayerNorm (mamba1_norm={self.settings.mamba1_norm!r}) changes Mamba-1's "
                             "output, so the converted model would not compute its source; convert with "
                             "mamba1_norm='none'")
        if self.channel_mixer.proj is not None:
            self.channel_mixer.gain.zero_()
        for proj in (self.bc_y_proj, self.dt_y_proj, self.gate_y_proj):
            if proj is not None:
                proj.weight.zero_()

    # --------------------------------------------------------------------- parts of the map that read y_{t-1}
    def dt(self, dt_low: torch.Tensor, y_prev: torch.Tensor | None) -> torch.Tensor:
        """dt (..., d) fp32 from the time-step part of x_proj, dt_low (..., rank), and (with dt_hidden_dependence)
        the shifted iterate y_{t-1} (..., d)."""
        if self.dt_y_proj is not None:  # called, not read as a weight: a wrapped (e.g. LoRA) projection takes part
            dt_low = dt_low + self.dt_y_proj(y_prev.to(self.dt_y_proj.weight.dtype)).to(dt_low.dtype)
        dt = F.softplus(acc(self.dt_proj(dt_low.to(self.dt_proj.weight.dtype))))
        lo, hi = self.settings.time_step_limit
        return dt.clamp(lo, hi) if (lo > 0.0 or hi != float("inf")) else dt

    def bc(self, Bx: torch.Tensor, Cx: torch.Tensor, y_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B, C (..., n) from their x-parts and the shifted iterate y_{t-1} (..., d) (not read without
        bc_hidden_dependence)."""
        B, C = Bx, Cx
        if self.bc_y_proj is not None:
            By, Cy = acc(self.bc_y_proj(y_prev.to(self.bc_y_proj.weight.dtype))).split(self.ssm_state_size, -1)
            B, C = Bx + By, Cx + Cy
        if self.settings.bc_norm:
            B, C = F.normalize(B, dim=-1, eps=1e-6), F.normalize(C, dim=-1, eps=1e-6)
        return B, C

    def readout(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The map's value (..., d) fp32 from the scan output s and the gate input z (..., d)."""
        gate = F.silu(z) if self.gate_in_loop else None
        weight, bias = self._in_loop_norm()
        return mamba1_readout(s, gate, weight, bias, self.settings.layer_norm_epsilon)

    def _in_loop_norm(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The LayerNorm's weight and bias where the map applies it, else (None, None)."""
        return (self.norm.weight, self.norm.bias) if self.norm_in_loop else (None, None)

    def _conv(self, x: torch.Tensor, window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv + SiLU over x (b, T, d), continuing from `window` (b, d, k).
        Returns (conv output (b, T, d), new window (b, d, k)). Without the short conv (use_short_conv False): x as
        it is and an empty window (b, d, 0)."""
        if self.conv1d is None:
            return x, x.new_zeros(x.shape[0], self.d_inner, 0)
        k = self.conv_kernel_size
        seq = x.transpose(1, 2)
        past = window.to(seq.dtype) if window is not None else seq.new_zeros(*seq.shape[:2], k)
        history = torch.cat([past, seq], dim=-1)
        out = F.conv1d(history[..., 1:], self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        return F.silu(out).transpose(1, 2), history[..., -k:]

    # ------------------------------------------------------------------------------------ backbone interface
    def prelude(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, state: Mamba1State | None):
        b = hidden_states.shape[0]
        dtype = hidden_states.dtype
        if mask is not None:
            hidden_states = hidden_states * mask[..., None].to(dtype)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x, window = self._conv(x, None if state is None else state.conv)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        n = self.ssm_state_size
        dt_low, Bx, Cx = self.x_proj(x).split([self.time_step_rank, n, n], dim=-1)
        x = acc(x)
        zeros = x.new_zeros(b, self.d_inner)
        return Mamba1Prelude(
            x=x, z=acc(z), x_part=self.channel_mixer.precompute(x), Bx=acc(Bx), Cx=acc(Cx), dt_low=dt_low,
            dt=self.dt(dt_low, None) if self.dt_y_proj is None else None, A=-torch.exp(acc(self.A_log)),
            y_prev0=zeros if state is None else acc(state.y_prev),
            y_out_prev0=zeros if state is None or state.y_out_prev is None else acc(state.y_out_prev),
            H0=None if state is None else state.ssm, mask=mask, window=window, dtype=dtype,
        )

    def initial_iterate(self, prelude: Mamba1Prelude) -> torch.Tensor:
        return torch.zeros_like(prelude.x)

    def iteration_map(self, prelude: Mamba1Prelude, settings: SolverSettings) -> Mamba1Map:
        return Mamba1Map(self, prelude)

    def map_reads_iterate(self) -> bool:
        """f reads y through the mixer and the y-projections of B, C (and dt): see `reads_iterate_through`. (The
        after-loop gate's W_zy reads f(y*), outside the map.)"""
        return self.reads_iterate_through(self.channel_mixer, self.y_projections())

    def y_projections(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self.bc_y_proj, self.dt_y_proj

    def decode_token(self, pre: Mamba1Prelude, settings: SolverSettings) -> DecodeResult:
        """One token per row through `decode_steps.selective_decode_step` (inference: no autograd through its loop)."""
        y_prev = pre.y_prev0
        factors = self.channel_mixer.factors(None if pre.x_part is None else pre.x_part[:, 0], y_prev)
        B, C = self.bc(pre.Bx[:, 0], pre.Cx[:, 0], y_prev)
        dt = pre.dt[:, 0] if pre.dt is not None else self.dt(pre.dt_low[:, 0], y_prev)
        gate = F.silu(pre.z[:, 0]) if self.gate_in_loop else None
        weight, bias = self._in_loop_norm()
        return selective_decode_step(pre.x[:, 0], dt, pre.A, B, C, self.D, pre.H0, factors, gate, weight, bias,
                                     self.settings.layer_norm_epsilon, settings, self.layer_idx)

    def output(self, y_out: torch.Tensor, prelude: Mamba1Prelude) -> torch.Tensor:
        """out_proj(n(y_out)), or with the gate after the loop out_proj(SiLU(z + W_zy shift(y_out)) * n(y_out)),
        where n is the after-loop LayerNorm (or nothing) and shift(y_out) starts from the previous call's last f(y*)
        (the raw f(y*), as the state carries it)."""
        normed = y_out
        if self.norm is not None and not self.norm_in_loop:
            normed = F.layer_norm(y_out, (self.d_inner,), acc(self.norm.weight), acc(self.norm.bias),
                                  self.settings.layer_norm_epsilon)
        if self.gate_in_loop:
            return self.out_proj(normed.to(prelude.dtype))
        shifted = torch.cat([prelude.y_out_prev0[:, None], y_out[:, :-1]], dim=1)
        w = self.gate_y_proj.weight
        gate = F.silu(prelude.z + acc(self.gate_y_proj(shifted.to(w.dtype))))
        return self.out_proj((gate * normed).to(prelude.dtype))

    def pack_state(self, state: Mamba1State) -> tuple[torch.Tensor, torch.Tensor]:
        """y*_{t-1} (and f(y*)_{t-1} for the after-loop gate) ride in the recurrent state as extra columns:
        (b, d_inner, state + 1 [+ 1]), fp32."""
        extra = [state.y_prev] if state.y_out_prev is None else [state.y_prev, state.y_out_prev]
        return state.conv, torch.cat([acc(state.ssm), *(acc(v)[..., None] for v in extra)], dim=-1)

    def unpack_state(self, conv: torch.Tensor, recurrent: torch.Tensor) -> Mamba1State:
        n = self.ssm_state_size
        y_out_prev = None if self.gate_in_loop else recurrent[..., n + 1]
        return Mamba1State(conv=conv, ssm=recurrent[..., :n], y_prev=recurrent[..., n], y_out_prev=y_out_prev)

    def next_state(self, prelude: Mamba1Prelude, y_star: torch.Tensor, y_out: torch.Tensor, aux: tuple) -> Mamba1State:
        (H,) = aux
        y_out_prev = None if self.gate_in_loop else y_out[:, -1].detach()
        return Mamba1State(prelude.window, H.detach(), y_star[:, -1].detach(), y_out_prev)
