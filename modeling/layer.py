"""FPMambaMixer: the FP-Mamba layer on a Mamba-2 backbone (parameter names as transformers' Mamba2Mixer).

Whole sequence (prefill / training), iterating on y (batch, T, d_inner) from y^0 = 0 (docs/method.md, "The layer"):
    y_{t-1}  = shift(y), with the cached y* of the previous call (or 0) at t = 0
    x~       = y + Q_t (x - y)                                   Q_t from the mixer on (x_t, y_{t-1})
    B_t, C_t = l2norm(B^x_t + W_B^y y_{t-1}), l2norm(C^x_t + W_C^y y_{t-1})     (per group, if bc_norm)
    dt_t     = softplus(dt^x_t [+ W_dt^y y_{t-1}] + dt_bias)
    yhat     = RMSNorm((SSD_scan(x~, dt, A, B, C) + D x~) * SiLU(z))
then out = out_proj(f(y*)). One decode token (T = 1 with a state): the per-token loop of `ops.decode_step`.
With Q = I and the y-projections at zero the map does not depend on y: the layer IS Mamba-2's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import decode_step, fused_iteration, fused_iteration_supported, gated_rms_norm, ssd_scan
from .checkpointing import FixedPointReplay
from .fixed_point import SOLVERS, ContinueSync, SolverSettings, implicit_output, one_step_output, solve
from .mixers import MIXER_INPUTS, MIXER_KINDS, ChannelMixer, apply_mixer, is_plain_linear
from .ops.reference import acc

FP_BACKWARDS = ("one_step", "implicit")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# One check per field annotation of FPMambaLayerConfig (the annotations are strings under postponed evaluation).
_TYPE_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "tuple[float, float]": lambda v: isinstance(v, tuple) and len(v) == 2 and all(_is_number(x) for x in v),
}


@dataclass
class FPMambaLayerConfig:
    """Every knob of one FP-Mamba layer. `validate()` raises ValueError naming the offending field."""

    hidden_size: int = 256
    state_size: int = 64
    head_dim: int = 64
    expand: int = 2
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 64
    use_bias: bool = False
    use_conv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    norm_per_group: bool = True
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] = (0.0, float("inf"))
    initializer_range: float = 0.02
    mixer_type: str = "householder"
    mixer_rank: int = 2
    mixer_input: str = "concat"
    mixer_reflection_scale: float = 1.0
    mixer_activation: str = "silu"
    mixer_alpha_init: float = 0.1
    bc_norm: bool = True
    dt_hidden_dependence: bool = False
    fp_max_iter: int = 16
    fp_max_iter_eval: int = 64
    fp_tol: float = 1e-2
    fp_damping: float = 1.0
    fp_damping_decay: float = 0.9
    fp_damping_patience: int = 5
    fp_train_quantile: float = 0.9
    fp_solver: str = "picard"
    fp_anderson_m: int = 5
    fp_backward: str = "one_step"
    fp_backward_steps: int = 1
    fp_backward_max_iter: int = 32
    fp_backward_tol: float = 1e-4

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        return self.d_inner // self.head_dim

    def validate(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"FPMamba config: invalid {name}={getattr(self, name)!r}: {why}")

        for f in fields(self):  # types first: a string "false" must not pass as a true bool
            if not _TYPE_CHECKS[f.type](getattr(self, f.name)):
                bad(f.name, f"must be of type {f.type}")
        lo, hi = self.time_step_limit
        if not 0.0 <= lo <= hi:
            bad("time_step_limit", "must be a (low, high) pair with 0 <= low <= high")

        for name in ("hidden_size", "state_size", "head_dim", "expand", "n_groups", "conv_kernel", "chunk_size",
                     "mixer_rank", "fp_max_iter", "fp_max_iter_eval", "fp_backward_steps", "fp_backward_max_iter",
                     "fp_damping_patience", "fp_anderson_m"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "must be a positive integer")
        if self.d_inner % self.head_dim:
            bad("head_dim", f"must divide d_inner = expand * hidden_size = {self.d_inner}")
        if self.num_heads % self.n_groups:
            bad("n_groups", f"must divide the number of heads ({self.num_heads})")
        if self.mixer_type not in MIXER_KINDS:
            bad("mixer_type", f"unknown mixer; choose one of {MIXER_KINDS}")
        if self.mixer_input not in MIXER_INPUTS:
            bad("mixer_input", f"choose one of {MIXER_INPUTS}")
        if self.mixer_reflection_scale not in (1, 2):
            bad("mixer_reflection_scale", "must be 1 (paper) or 2 (official code)")
        if self.mixer_activation not in ("silu", "identity", "tanh", "relu"):
            bad("mixer_activation", "choose one of silu, identity, tanh, relu")
        if not 0.0 < self.mixer_alpha_init < 1.0:
            bad("mixer_alpha_init", "must lie in (0, 1)")
        if self.fp_solver not in SOLVERS:
            bad("fp_solver", f"choose one of {SOLVERS}")
        if self.fp_backward not in FP_BACKWARDS:
            bad("fp_backward", f"choose one of {FP_BACKWARDS}")
        for name in ("fp_tol", "fp_backward_tol", "layer_norm_epsilon", "time_step_min", "time_step_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                bad(name, "must be a finite number > 0")
        if not 0.0 < self.fp_damping <= 1.0:
            bad("fp_damping", "must lie in (0, 1]")
        if not 0.0 < self.fp_damping_decay <= 1.0:
            bad("fp_damping_decay", "must lie in (0, 1]")
        if not 0.0 < self.fp_train_quantile <= 1.0:
            bad("fp_train_quantile", "must lie in (0, 1]")
        if self.time_step_min > self.time_step_max:
            bad("time_step_min", "must not exceed time_step_max")


@dataclass
class LayerState:
    """What a layer carries between calls. conv: (b, conv_dim, conv_kernel) last pre-conv inputs;
    ssm: (b, heads, head_dim, state) fp32 H; y_prev: (b, d_inner) fp32 y* of the last token."""

    conv: torch.Tensor
    ssm: torch.Tensor
    y_prev: torch.Tensor


@dataclass
class MixerOutput:
    """out: (b, T, hidden); state: the new LayerState (if asked for); iterations, residual: (b,)."""

    out: torch.Tensor
    state: LayerState | None
    iterations: torch.Tensor
    residual: torch.Tensor


class GatedRMSNorm(nn.Module):
    """RMSNorm(s * SiLU(z)) per group of channels; parameter `weight` as in Mamba-2."""

    def __init__(self, d: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size = group_size
        self.variance_epsilon = eps

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(s, z, self.weight, self.variance_epsilon, self.group_size)


class FPMambaMixer(nn.Module):
    """One FP-Mamba layer. forward(hidden_states (b, T, hidden)) -> MixerOutput."""

    def __init__(self, config: FPMambaLayerConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.layer_idx = layer_idx
        c = config
        self.d_inner = c.d_inner
        self.num_heads = c.num_heads
        self.head_dim = c.head_dim
        self.n_groups = c.n_groups
        self.ssm_state_size = c.state_size
        self.conv_kernel_size = c.conv_kernel
        self.conv_dim = c.d_inner + 2 * c.n_groups * c.state_size
        self.in_proj = nn.Linear(c.hidden_size, c.d_inner + self.conv_dim + self.num_heads, bias=c.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.conv_kernel, groups=self.conv_dim,
                                padding=c.conv_kernel - 1, bias=c.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        group = c.d_inner // c.n_groups if c.norm_per_group else c.d_inner
        self.norm = GatedRMSNorm(c.d_inner, group, c.layer_norm_epsilon)
        self.out_proj = nn.Linear(c.d_inner, c.hidden_size, bias=c.use_bias)
        # FP-Mamba's additions: the channel mixer and the hidden-state dependence of B, C (and dt).
        self.mixer = ChannelMixer(c.mixer_type, c.d_inner, c.mixer_input, c.mixer_rank, c.mixer_reflection_scale,
                                  c.mixer_activation, c.mixer_alpha_init, c.initializer_range)
        self.bc_y_proj = nn.Linear(c.d_inner, 2 * c.n_groups * c.state_size, bias=False)
        self.dt_y_proj = nn.Linear(c.d_inner, self.num_heads, bias=False) if c.dt_hidden_dependence else None
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial values of the parameters this layer initialises specially, by name: Mamba-2's A_log, D and
        dt_bias, and the y-projections at zero (the iteration starts as Mamba-2 plus the mixer). Used by
        `reset_parameters` here and by the transformers model's `_init_weights`."""
        c = self.config
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(c.time_step_max) - math.log(c.time_step_min))
                       + math.log(c.time_step_min)).clamp(min=c.time_step_floor)
        values = {
            "A_log": torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)),
            "D": torch.ones(self.num_heads),
            "dt_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
            "bc_y_proj.weight": torch.zeros_like(self.bc_y_proj.weight),
        }
        if self.dt_y_proj is not None:
            values["dt_y_proj.weight"] = torch.zeros_like(self.dt_y_proj.weight)
        return values

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, value in self.initial_values().items():
            self.get_parameter(name).copy_(value)
        self.mixer.reset_parameters()

    # ----------------------------------------------------------------------------------------------- helpers
    def _settings(self, max_iter: int | None, tol: float | None) -> SolverSettings:
        c = self.config
        if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"fp_max_iter must be a positive integer, got {max_iter!r}")
        if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"fp_tol must be a finite number > 0, got {tol!r}")
        default_cap = c.fp_max_iter if self.training else c.fp_max_iter_eval
        return SolverSettings(
            max_iter=max_iter if max_iter is not None else default_cap,
            tol=float(tol if tol is not None else c.fp_tol),
            damping=c.fp_damping, damping_decay=c.fp_damping_decay, damping_patience=c.fp_damping_patience,
            train_quantile=c.fp_train_quantile, solver=c.fp_solver, anderson_m=c.fp_anderson_m,
        )

    def _dt(self, dt_raw: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        """dt (..., h) from its x-part dt_raw (..., h) and the shifted iterate y_{t-1} (..., d_inner)."""
        pre = acc(dt_raw)
        if self.dt_y_proj is not None:  # called, not read as a weight: a wrapped (e.g. LoRA) projection takes part
            pre = pre + acc(self.dt_y_proj(y_prev.to(self.dt_y_proj.weight.dtype)))
        dt = F.softplus(pre + acc(self.dt_bias))
        lo, hi = self.config.time_step_limit
        return dt.clamp(lo, hi) if (lo > 0.0 or hi != float("inf")) else dt

    def _bc(self, Bx: torch.Tensor, Cx: torch.Tensor, y_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B, C (..., g, n) from their x-parts and the shifted iterate y_{t-1} (..., d_inner)."""
        gn = self.n_groups * self.ssm_state_size
        By, Cy = acc(self.bc_y_proj(y_prev.to(self.bc_y_proj.weight.dtype))).split(gn, -1)
        B = Bx + By.view(Bx.shape)
        C = Cx + Cy.view(Cx.shape)
        if self.config.bc_norm:
            B, C = F.normalize(B, dim=-1, eps=1e-6), F.normalize(C, dim=-1, eps=1e-6)
        return B, C

    def _conv(self, xBC: torch.Tensor, window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv + SiLU over xBC (b, T, conv_dim), continuing from `window` (b, conv_dim, k).
        Returns (conv output (b, T, conv_dim), new window (b, conv_dim, k))."""
        k = self.conv_kernel_size
        seq = xBC.transpose(1, 2)
        past = window.to(seq.dtype) if window is not None else seq.new_zeros(*seq.shape[:2], k)
        history = torch.cat([past, seq], dim=-1)
        out = F.conv1d(history[..., 1:], self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)
        return F.silu(out).transpose(1, 2), history[..., -k:]

    def _finish(self, f, y_star: torch.Tensor, plain: tuple | None):
        """The output f(y*) and aux. With autograd: differentiable according to fp_backward. Without: the solver's
        own f(y*) (`plain`), or computed when there is none (a checkpoint replay) or when training uses several
        one-step applications (so a checkpoint's no-grad first forward yields the value its recompute
        differentiates)."""
        c = self.config
        grad = torch.is_grad_enabled()
        if grad and c.fp_backward == "implicit":
            adj = SolverSettings(max_iter=c.fp_backward_max_iter, tol=c.fp_backward_tol)
            return implicit_output(f, y_star, adj, self.layer_idx)
        steps = c.fp_backward_steps if (grad or self.training) and c.fp_backward == "one_step" else 1
        if grad or plain is None or steps > 1:
            return one_step_output(f, y_star, steps)
        return plain

    def _fused_inputs(self, x, x_part, Bx, Cx, dt_raw, z, y_prev0, H0, mask, A, settings: SolverSettings):
        """The per-call inputs of the fused iteration kernels (`ops.fused_iteration`), or None where they do
        not apply (reference backend, fp64, the kronecker mixer, a wrapped projection such as a LoRA layer,
        whose weight alone the kernels would read, or kernels that failed their self-check in this configuration,
        see `ops.selfcheck`): then every iteration runs the composed map."""
        c = self.config
        plain = all(is_plain_linear(m) for m in (self.mixer.proj, self.bc_y_proj, self.dt_y_proj) if m is not None)
        if not plain or not fused_iteration_supported(x, c.mixer_type):
            return None
        from .ops.fused_iteration_triton import FusedIterationInputs

        with torch.no_grad():
            weights = [w for w in (self.mixer.y_weight(), self.bc_y_proj.weight,
                                   None if self.dt_y_proj is None else self.dt_y_proj.weight) if w is not None]
            weight_y = torch.cat([w.to(self.bc_y_proj.weight.dtype) for w in weights])
            strength = self.mixer.strength().detach() if self.mixer.proj is not None else x.new_zeros(())
        inputs = FusedIterationInputs(
            x=x, x_part=x_part, Bx=Bx, Cx=Cx, dt_raw=dt_raw, z=z, y_prev0=y_prev0, H0=H0, mask=mask,
            weight_y=weight_y, A=A.detach(), D=self.D.detach(), dt_bias=self.dt_bias.detach(), strength=strength,
            norm_weight=self.norm.weight.detach(), norm_eps=self.norm.variance_epsilon,
            norm_group_size=self.norm.group_size, mixer_kind=c.mixer_type, mixer_rank=c.mixer_rank,
            mixer_activation=c.mixer_activation, mixer_reads_y=self.mixer.y_weight() is not None,
            dt_reads_y=self.dt_y_proj is not None, bc_norm=c.bc_norm, dt_limit=tuple(c.time_step_limit),
            chunk_size=c.chunk_size, head_dim=self.head_dim, residual_eps=settings.eps,
        )
        return inputs if fused_iteration_supported(x, c.mixer_type, inputs) else None

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: LayerState | None = None,
        return_state: bool = False,
        fp_max_iter: int | None = None,
        fp_tol: float | None = None,
        sync: ContinueSync | None = None,
        replay: FixedPointReplay | None = None,
    ) -> MixerOutput:
        """hidden_states (b, T, hidden); attention_mask (b, T) with 1 for real tokens (left padding only);
        state: the LayerState of the previous call (continues the sequence). T = 1 with a state is a decode step.
        sync: makes data-parallel ranks agree to continue each iteration (see fixed_point.solve).
        replay: activation checkpointing; an empty one records y*, a filled one is applied instead of solving."""
        b, T, _ = hidden_states.shape
        dtype = hidden_states.dtype
        settings = self._settings(fp_max_iter, fp_tol)
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        if mask is not None:
            hidden_states = hidden_states * mask[..., None].to(dtype)
        z, xBC, dt_raw = self.in_proj(hidden_states).split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        xBC, window = self._conv(xBC, None if state is None else state.conv)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)
        gn = self.n_groups * self.ssm_state_size
        x, Bx, Cx = acc(xBC).split([self.d_inner, gn, gn], dim=-1)
        Bx = Bx.view(b, T, self.n_groups, self.ssm_state_size)
        Cx = Cx.view(b, T, self.n_groups, self.ssm_state_size)
        z = acc(z)
        A = -torch.exp(acc(self.A_log))
        y_prev0 = acc(state.y_prev) if state is not None else x.new_zeros(b, self.d_inner)
        x_part = self.mixer.precompute(x)

        # The per-token solve runs without autograd; a token that needs gradients takes the parallel path below,
        # which handles T = 1 with a state exactly.
        if state is not None and T == 1 and not torch.is_grad_enabled():
            return self._decode(x, z, Bx, Cx, dt_raw, A, x_part, state, window, settings, dtype, return_state)

        H0 = state.ssm if state is not None else None
        maskf = None if mask is None else mask.to(x.dtype)
        fused = self._fused_inputs(x, x_part, Bx, Cx, dt_raw, z, y_prev0, H0, mask, A, settings)

        def f(y: torch.Tensor, rows: torch.Tensor):
            if fused is not None and not torch.is_grad_enabled():
                return fused_iteration(fused, y, rows)
            # Gather the rows still iterating; while all are (the common case) use the tensors as they are.
            take = (lambda t: t) if rows.numel() == b else (lambda t: None if t is None else t[rows])  # noqa: E731
            ys = torch.cat([take(y_prev0)[:, None], y[:, :-1]], dim=1)
            xr = take(x)
            factors = self.mixer.factors(take(x_part), ys)
            B, C = self._bc(take(Bx), take(Cx), ys)
            dt = self._dt(take(dt_raw), ys)
            # The projections above may run in bf16/fp16 under autocast (matmul inputs only, results upcast);
            # the iterate, the scan's state and its accumulation stay fp32.
            with torch.autocast(y.device.type, enabled=False):
                xt = y + apply_mixer(factors, xr - y)
                s, H = ssd_scan(
                    xt.view(-1, T, self.num_heads, self.head_dim), dt, A, B, C, self.D,
                    take(H0), take(mask), self.config.chunk_size,
                )
                yhat = self.norm(s.reshape(-1, T, self.d_inner), take(z))
            if maskf is not None:
                yhat = yhat * take(maskf)[:, :, None]
            return yhat, (H,)

        if replay is not None and replay.filled:
            y_star, iterations, residual, plain = replay.y_star, replay.iterations, replay.residual, None
        else:
            res = solve(f, x.new_zeros(b, T, self.d_inner), settings, self.training, self.layer_idx, sync)
            y_star, iterations, residual, plain = res.y_star, res.iterations, res.residual, (res.y_out, res.aux)
            if replay is not None:
                replay.record(y_star, iterations, residual)
        y_out, (H,) = self._finish(f, y_star, plain)
        out = self.out_proj(y_out.to(dtype))
        new_state = LayerState(window, H.detach(), y_star[:, -1].detach()) if return_state else None
        return MixerOutput(out, new_state, iterations, residual)

    def _decode(self, x, z, Bx, Cx, dt_raw, A, x_part, state, window, settings, dtype, return_state) -> MixerOutput:
        """One token per row through `ops.decode_step` (inference: no autograd through the inner loop)."""
        b = x.shape[0]
        y_prev = acc(state.y_prev)
        factors = self.mixer.factors(None if x_part is None else x_part[:, 0], y_prev)
        B, C = self._bc(Bx[:, 0], Cx[:, 0], y_prev)
        dt = self._dt(dt_raw[:, 0], y_prev)
        y_out, y_star, H, iterations, residual = decode_step(
            x[:, 0].view(b, self.num_heads, self.head_dim), z[:, 0], dt, A, B, C,
            self.D, state.ssm, factors, self.norm.weight, self.norm.variance_epsilon, self.norm.group_size,
            settings, self.layer_idx,
        )
        out = self.out_proj(y_out[:, None].to(dtype))
        new_state = LayerState(window, H, y_star) if return_state else None
        return MixerOutput(out, new_state, iterations, residual)
