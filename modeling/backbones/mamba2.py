"""The Mamba-2 backbone of FP-Mamba (parameter names as transformers' Mamba2Mixer; docs/method.md, "The layer").

Whole sequence (prefill / training), iterating on y (batch, T, d_inner) from y^0 = 0:
    y_{t-1}  = shift(y), with the cached y* of the previous call (or 0) at t = 0
    x~       = y + Q_t (x - y)                                   Q_t from the mixer on (x_t, y_{t-1})
    B_t, C_t = l2norm(B^x_t + W_B^y y_{t-1}), l2norm(C^x_t + W_C^y y_{t-1})     (per group, if bc_norm)
    dt_t     = softplus(dt^x_t [+ W_dt^y y_{t-1}] + dt_bias)
    yhat     = RMSNorm((SSD_scan(x~, dt, A, B, C) + D x~) * SiLU(z))
then out = out_proj(f(y*)). One decode token (T = 1 with a state): the per-token loop of `kernels.decode_step`.
With Q = I and the y-projections at zero the map does not depend on y: the layer IS Mamba-2's.
The prelude (in_proj, conv, the mixer's x-part, A) is computed once per call; the map (`Mamba2Map`) holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fixed_point import DecodeResult, MapOutput, SolverSettings
from ..kernels import backend_for, decode_step, fused_iteration, fused_iteration_supported, ssd_scan
from ..layer import FixedPointLayer
from ..mixers import ChannelMixer, MixerFactors, apply_mixer, is_plain_linear
from ..norms import GatedRMSNorm
from ..ops.ssd_scan_reference import ScanDecay, ssd_scan_decay
from ..precision import acc
from ..settings import FixedPointSettings, LayerSettings
from .mamba_init import mamba_init_weights

if TYPE_CHECKING:
    from ..ops.fused_iteration_triton import FusedIterationInputs


@dataclass
class LayerState:
    """What a Mamba-2 layer carries between calls. conv: (b, conv_dim, conv_kernel) last pre-conv inputs;
    ssm: (b, heads, head_dim, state) fp32 H; y_prev: (b, d_inner) fp32 y* of the last token."""

    conv: torch.Tensor
    ssm: torch.Tensor
    y_prev: torch.Tensor


@dataclass
class Mamba2Prelude:
    """Everything of one call that does not depend on the iterate. x, z (b, T, d) fp32; x_part: the mixer's
    x-part (`ChannelMixer.precompute`); Bx, Cx (b, T, g, n) fp32; dt_raw (b, T, h); A (h,) fp32; y_prev0 (b, d):
    y* before t = 0; H0 (b, h, p, n) | None; mask (b, T) bool | None; window: the new conv window; dtype: the
    input's."""

    x: torch.Tensor
    z: torch.Tensor
    x_part: torch.Tensor | None
    Bx: torch.Tensor
    Cx: torch.Tensor
    dt_raw: torch.Tensor
    A: torch.Tensor
    y_prev0: torch.Tensor
    H0: torch.Tensor | None
    mask: torch.Tensor | None
    window: torch.Tensor
    dtype: torch.dtype


class Mamba2Map:
    """f(y) of one Mamba-2 layer call on the rows `rows`: the composed PyTorch map, or the fused Triton kernels
    (`fused`, when they serve this call) for the no-autograd iterations. Returns MapOutput(yhat, (H,))."""

    def __init__(self, layer: "Mamba2Layer", pre: Mamba2Prelude, fused: "FusedIterationInputs | None",
                 constant: bool = False) -> None:
        self.layer = layer
        self.pre = pre
        self.fused = fused
        self.constant = constant  # Q = I and zero y-projections (`map_reads_iterate` is False)
        self._fixed_dt: dict[bool, tuple[torch.Tensor, ScanDecay | None]] = {}
        self.compile_friendly = fused is None  # the fused Triton iteration is already one kernel chain

    def _dt_and_decay(self, ys: torch.Tensor | None, take) -> tuple[torch.Tensor, ScanDecay | None]:
        """dt of the rows and, on the PyTorch scan, the scan's dt-only part. When dt does not read y they are the
        same at every iteration: computed once per call and autograd mode (the finish needs them with their graph),
        then only gathered for the rows still iterating."""
        layer, pre = self.layer, self.pre
        if layer.dt_y_proj is not None and ys is not None:
            return layer.dt(take(pre.dt_raw), ys), None
        grad = torch.is_grad_enabled()
        if grad not in self._fixed_dt:
            dt = layer.dt(pre.dt_raw, None)
            decay = (ssd_scan_decay(dt, pre.A, pre.mask, layer.settings.chunk_size)
                     if backend_for(pre.x) == "reference" else None)
            self._fixed_dt[grad] = dt, decay
        dt, decay = self._fixed_dt[grad]
        return take(dt), None if decay is None else take(decay)

    def __call__(self, y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        if self.fused is not None and not torch.is_grad_enabled():
            return fused_iteration(self.fused, y, rows)
        layer, pre = self.layer, self.pre
        b, T = pre.x.shape[:2]
        # Gather the rows still iterating; while all are (the common case) use the tensors as they are.
        take = (lambda t: t) if rows.numel() == b else (  # noqa: E731
            lambda t: None if t is None else t.select(rows) if isinstance(t, ScanDecay) else t[rows])
        # A constant map skips what cannot change its value: the mixer (Q = I) and the y-projections (zero), unless
        # autograd must give them gradients (the gain's and the projections' are what lets training leave Q = I).
        skip_y = self.constant and not (torch.is_grad_enabled() and layer.iterate_gradients_wanted())
        ys = None if skip_y else torch.cat([take(pre.y_prev0)[:, None], y[:, :-1]], dim=1)
        B, C = layer.bc(take(pre.Bx), take(pre.Cx), ys)
        dt, decay = self._dt_and_decay(ys, take)
        mask = take(pre.mask)
        # The projections above may run in bf16/fp16 under autocast (matmul inputs only, results upcast);
        # the iterate, the scan's state and its accumulation stay fp32.
        with torch.autocast(y.device.type, enabled=False):
            if skip_y:
                xt = take(pre.x)
            else:
                xt = y + apply_mixer(layer.channel_mixer.factors(take(pre.x_part), ys), take(pre.x) - y)
            s, H = ssd_scan(xt.view(-1, T, layer.num_heads, layer.head_dim), dt, pre.A, B, C, layer.D,
                            take(pre.H0), mask, layer.settings.chunk_size, decay)
            yhat = layer.norm(s.reshape(-1, T, layer.d_inner), take(pre.z))
        if mask is not None:
            yhat = yhat * mask[:, :, None].to(yhat.dtype)
        return MapOutput(yhat, (H,))


class Mamba2Layer(FixedPointLayer):
    """FP-Mamba on a Mamba-2 backbone. forward(hidden_states (b, T, hidden)) -> LayerOutput (see FixedPointLayer)."""

    def __init__(self, settings: LayerSettings, solver: FixedPointSettings, layer_idx: int | None = None) -> None:
        super().__init__(settings, solver, layer_idx)
        c = settings
        self.d_inner = c.expand * c.hidden_size
        self.head_dim = c.head_dim
        self.num_heads = self.d_inner // c.head_dim
        self.n_groups = c.n_groups
        self.ssm_state_size = c.state_size
        self.conv_kernel_size = c.conv_kernel
        self.conv_dim = self.d_inner + 2 * c.n_groups * c.state_size
        self.in_proj = nn.Linear(c.hidden_size, self.d_inner + self.conv_dim + self.num_heads, bias=c.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.conv_kernel, groups=self.conv_dim,
                                padding=c.conv_kernel - 1, bias=c.use_conv_bias) if c.use_short_conv else None
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        group = self.d_inner // c.n_groups if c.norm_per_group else self.d_inner
        self.norm = GatedRMSNorm(self.d_inner, group, c.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.d_inner, c.hidden_size, bias=c.use_bias)
        # FP-Mamba's additions: the channel mixer and the hidden-state dependence of B, C (and dt).
        self.channel_mixer = ChannelMixer(c.mixer, self.d_inner)
        self.bc_y_proj = (nn.Linear(self.d_inner, 2 * c.n_groups * c.state_size, bias=False)
                          if c.bc_hidden_dependence else None)
        self.dt_y_proj = nn.Linear(self.d_inner, self.num_heads, bias=False) if c.dt_hidden_dependence else None
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Mamba-2's A_log, D and dt_bias, and the y-projections at zero (the iteration starts as Mamba-2 plus the
        mixer). Used by `reset_parameters` here and by the transformers model's `_init_weights`."""
        c = self.settings
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(c.time_step_max) - math.log(c.time_step_min))
                       + math.log(c.time_step_min)).clamp(min=c.time_step_floor)
        values = {
            "A_log": torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)),
            "D": torch.ones(self.num_heads),
            "dt_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
        }
        for proj in ("bc_y_proj", "dt_y_proj"):
            if getattr(self, proj) is not None:
                values[f"{proj}.weight"] = torch.zeros_like(getattr(self, proj).weight)
        return values

    def init_weights(self, init: Any) -> None:
        mamba_init_weights(init, self.conv1d, self.out_proj)

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    # ---------------------------------------------------------------------- conversion from Mamba2ForCausalLM
    source_model = "Mamba2ForCausalLM"
    added_parameters = ("channel_mixer.", "bc_y_proj.", "dt_y_proj.")

    @classmethod
    def config_from_source(cls, source: nn.Module) -> dict[str, Any]:
        """Mamba2Config's fields under our names; B/C not normalised (Mamba-2 does not), the norm per group as the
        source's."""
        src = source.config
        if src.hidden_act != "silu":
            raise ValueError(f"from_mamba2: only hidden_act='silu' Mamba-2 models convert, got {src.hidden_act!r}")
        if src.num_heads * src.head_dim != src.expand * src.hidden_size:
            raise ValueError("from_mamba2: num_heads * head_dim must equal expand * hidden_size")
        d_inner = src.expand * src.hidden_size
        first_norm = source.backbone.layers[0].mixer.norm
        return dict(
            backbone="mamba2", vocab_size=src.vocab_size, hidden_size=src.hidden_size,
            num_hidden_layers=src.num_hidden_layers, state_size=src.state_size, head_dim=src.head_dim,
            expand=src.expand, n_groups=src.n_groups, conv_kernel=src.conv_kernel, chunk_size=src.chunk_size,
            use_bias=src.use_bias, use_conv_bias=src.use_conv_bias, layer_norm_epsilon=src.layer_norm_epsilon,
            residual_in_fp32=src.residual_in_fp32, time_step_min=src.time_step_min,
            time_step_max=src.time_step_max, time_step_floor=src.time_step_floor,
            time_step_limit=tuple(src.time_step_limit), rescale_prenorm_residual=src.rescale_prenorm_residual,
            tie_word_embeddings=src.tie_word_embeddings, pad_token_id=src.pad_token_id,
            bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id,
            norm_per_group=getattr(first_norm, "group_size", d_inner) != d_inner, bc_norm=False,
        )

    @torch.no_grad()
    def start_as_source(self) -> None:
        """Mixer gain 0 (Q = I; its random directions stay, so fine-tuning can grow it), y-projections 0."""
        if self.channel_mixer.proj is not None:
            self.channel_mixer.gain.zero_()
        for proj in (self.bc_y_proj, self.dt_y_proj):
            if proj is not None:
                proj.weight.zero_()

    # --------------------------------------------------------------------- parts of the map that read y_{t-1}
    def dt(self, dt_raw: torch.Tensor, y_prev: torch.Tensor | None) -> torch.Tensor:
        """dt (..., h) from its x-part dt_raw (..., h) and the shifted iterate y_{t-1} (..., d_inner); y_prev None:
        the y-projection is known to be zero (a constant map)."""
        pre = acc(dt_raw)
        # Called, not read as a weight: a wrapped (e.g. LoRA) projection takes part.
        if self.dt_y_proj is not None and y_prev is not None:
            pre = pre + acc(self.dt_y_proj(y_prev.to(self.dt_y_proj.weight.dtype)))
        dt = F.softplus(pre + acc(self.dt_bias))
        lo, hi = self.settings.time_step_limit
        return dt.clamp(lo, hi) if (lo > 0.0 or hi != float("inf")) else dt

    def bc(self, Bx: torch.Tensor, Cx: torch.Tensor, y_prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """B, C (..., g, n) from their x-parts and the shifted iterate y_{t-1} (..., d_inner); y_prev None: the
        y-projection is known to be zero (a constant map) or absent (bc_hidden_dependence False)."""
        B, C = Bx, Cx
        if y_prev is not None and self.bc_y_proj is not None:
            gn = self.n_groups * self.ssm_state_size
            By, Cy = acc(self.bc_y_proj(y_prev.to(self.bc_y_proj.weight.dtype))).split(gn, -1)
            B = Bx + By.view(Bx.shape)
            C = Cx + Cy.view(Cx.shape)
        if self.settings.bc_norm:
            B, C = F.normalize(B, dim=-1, eps=1e-6), F.normalize(C, dim=-1, eps=1e-6)
        return B, C

    def _conv(self, xBC: torch.Tensor, window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv + SiLU over xBC (b, T, conv_dim), continuing from `window` (b, conv_dim, k).
        Returns (conv output (b, T, conv_dim), new window (b, conv_dim, k)). Without the short conv
        (use_short_conv False): xBC as it is and an empty window (b, conv_dim, 0)."""
        if self.conv1d is None:
            return xBC, xBC.new_zeros(xBC.shape[0], self.conv_dim, 0)
        k = self.conv_kernel_size
        seq = xBC.transpose(1, 2)
        past = window.to(seq.dtype) if window is not None else seq.new_zeros(*seq.shape[:2], k)
        history = torch.cat([past, seq], dim=-1)
        out = F.conv1d(history[..., 1:], self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)
        return F.silu(out).transpose(1, 2), history[..., -k:]

    # ------------------------------------------------------------------------------------ backbone interface
    def prelude(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, state: LayerState | None):
        b, T, _ = hidden_states.shape
        dtype = hidden_states.dtype
        if mask is not None:
            hidden_states = hidden_states * mask[..., None].to(dtype)
        z, xBC, dt_raw = self.in_proj(hidden_states).split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        xBC, window = self._conv(xBC, None if state is None else state.conv)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)
        gn = self.n_groups * self.ssm_state_size
        x, Bx, Cx = acc(xBC).split([self.d_inner, gn, gn], dim=-1)
        # The mixer's x-part is needed unless Q = I is known and no gradient of it is wanted (see Mamba2Map).
        needs_mixer = self.map_reads_iterate() or (torch.is_grad_enabled() and self.iterate_gradients_wanted())
        return Mamba2Prelude(
            x=x, z=acc(z), x_part=self.channel_mixer.precompute(x) if needs_mixer else None,
            Bx=Bx.view(b, T, self.n_groups, self.ssm_state_size), Cx=Cx.view(b, T, self.n_groups, self.ssm_state_size),
            dt_raw=dt_raw, A=-torch.exp(acc(self.A_log)),
            y_prev0=acc(state.y_prev) if state is not None else x.new_zeros(b, self.d_inner),
            H0=None if state is None else state.ssm, mask=mask, window=window, dtype=dtype,
        )

    def initial_iterate(self, prelude: Mamba2Prelude) -> torch.Tensor:
        return torch.zeros_like(prelude.x)

    def iteration_map(self, prelude: Mamba2Prelude, settings: SolverSettings) -> Mamba2Map:
        if not self.map_reads_iterate():  # one cheap evaluation, no fused kernels needed
            return Mamba2Map(self, prelude, None, constant=True)
        fused = self.fused_inputs(prelude, settings)
        if fused is not None and not fused_iteration_supported(prelude.x, self.settings.mixer.kind, fused):
            fused = None
        return Mamba2Map(self, prelude, fused)

    def fused_inputs(self, pre: Mamba2Prelude, settings: SolverSettings) -> "FusedIterationInputs | None":
        """The per-call inputs of the fused iteration kernels (`kernels.fused_iteration`), or None where they cannot
        apply: the backend, dtype or mixer kind is not one the kernels serve, or a projection is wrapped (e.g. a LoRA
        layer, whose weight alone the kernels would read). Whether they passed their self-check in this
        configuration is `iteration_map`'s question (`kernels.fused_iteration_supported`)."""
        c = self.settings
        y_projections = [m for m in (self.bc_y_proj, self.dt_y_proj) if m is not None]
        plain = self.channel_mixer.plain() and all(is_plain_linear(m) for m in y_projections)
        if not plain or not fused_iteration_supported(pre.x, c.mixer.kind):
            return None
        from ..ops.fused_iteration_triton import FusedIterationInputs

        with torch.no_grad():
            dtype = self.out_proj.weight.dtype
            # Without bc_hidden_dependence the kernels get B's and C's y-weight as exact zeros (their layout).
            bc_w = (self.bc_y_proj.weight if self.bc_y_proj is not None
                    else pre.x.new_zeros(2 * self.n_groups * self.ssm_state_size, self.d_inner, dtype=dtype))
            weights = [w for w in (self.channel_mixer.y_weight(), bc_w,
                                   None if self.dt_y_proj is None else self.dt_y_proj.weight) if w is not None]
            weight_y = torch.cat([w.to(dtype) for w in weights])
            mixer = self.channel_mixer
            strength = mixer.strength().detach() if mixer.proj is not None else pre.x.new_zeros(())
        return FusedIterationInputs(
            x=pre.x, x_part=pre.x_part, Bx=pre.Bx, Cx=pre.Cx, dt_raw=pre.dt_raw, z=pre.z, y_prev0=pre.y_prev0,
            H0=pre.H0, mask=pre.mask, weight_y=weight_y, A=pre.A.detach(), D=self.D.detach(),
            dt_bias=self.dt_bias.detach(), strength=strength, norm_weight=self.norm.weight.detach(),
            norm_eps=self.norm.variance_epsilon, norm_group_size=self.norm.group_size, mixer_kind=c.mixer.kind,
            mixer_rank=c.mixer.rank, mixer_activation=c.mixer.activation,
            mixer_reads_y=self.channel_mixer.y_weight() is not None, dt_reads_y=self.dt_y_proj is not None,
            bc_norm=c.bc_norm, dt_limit=tuple(c.time_step_limit), chunk_size=c.chunk_size, head_dim=self.head_dim,
            residual_eps=settings.eps,
        )

    def map_reads_iterate(self) -> bool:
        """f reads y through the mixer and the y-projections of B, C (and dt): see `reads_iterate_through`."""
        return self.reads_iterate_through(self.channel_mixer, self.y_projections())

    def y_projections(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self.bc_y_proj, self.dt_y_proj

    def decode_token(self, pre: Mamba2Prelude, settings: SolverSettings) -> DecodeResult:
        """One token per row through `kernels.decode_step` (inference: no autograd through the inner loop)."""
        b = pre.x.shape[0]
        if self.map_reads_iterate():
            y_prev = pre.y_prev0
            factors = self.channel_mixer.factors(None if pre.x_part is None else pre.x_part[:, 0], y_prev)
        else:  # Q = I and zero y-projections: nothing reads y_{t-1}
            y_prev, factors = None, MixerFactors("none")
        B, C = self.bc(pre.Bx[:, 0], pre.Cx[:, 0], y_prev)
        dt = self.dt(pre.dt_raw[:, 0], y_prev)
        return decode_step(
            pre.x[:, 0].view(b, self.num_heads, self.head_dim), pre.z[:, 0], dt, pre.A, B, C,
            self.D, pre.H0, factors, self.norm.weight, self.norm.variance_epsilon, self.norm.group_size,
            settings, self.layer_idx,
        )

    def output(self, y_out: torch.Tensor, prelude: Mamba2Prelude) -> torch.Tensor:
        return self.out_proj(y_out.to(prelude.dtype))

    def pack_state(self, state: LayerState) -> tuple[torch.Tensor, torch.Tensor]:
        """y*_{t-1} rides in the recurrent state as an extra column: (b, heads, head_dim, state + 1), fp32."""
        b, h, p, _ = state.ssm.shape
        return state.conv, torch.cat([acc(state.ssm), acc(state.y_prev).reshape(b, h, p, 1)], dim=-1)

    def store_state(self, state: LayerState, conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        """In place, the SSM state and y* into their slices of the recurrent tensor: no concatenated copy per token."""
        b, h, p, _ = recurrent.shape
        conv.copy_(state.conv)
        recurrent[..., :-1].copy_(state.ssm)
        recurrent[..., -1].copy_(state.y_prev.reshape(b, h, p))

    def unpack_state(self, conv: torch.Tensor, recurrent: torch.Tensor) -> LayerState:
        b, h, p, _ = recurrent.shape
        return LayerState(conv=conv, ssm=recurrent[..., :-1], y_prev=recurrent[..., -1].reshape(b, h * p))

    def next_state(self, prelude: Mamba2Prelude, y_star: torch.Tensor, y_out: torch.Tensor, aux: tuple) -> LayerState:
        (H,) = aux
        return LayerState(prelude.window, H.detach(), y_star[:, -1].detach())
