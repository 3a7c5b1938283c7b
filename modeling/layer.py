"""FixedPointLayer: the backbone-agnostic half of an FP-RNN layer (docs/architecture.md, docs/method.md).

A layer call computes y* = f(y*) for the whole input, where f is the backbone's iteration map, then out = g(f(y*)).
This class owns everything that is the same for every backbone:
  * the solver settings of the call (config caps/tolerance, per-call overrides, train vs eval cap);
  * the solve (modeling/fixed_point.py), or its replay under activation checkpointing;
  * the finish: f(y*) differentiable as the config's fp_backward says (one-step or implicit gradient);
  * the per-token decode contract: one token with a state and no autograd is solved by the backbone's decode step;
  * the telemetry every call returns (iterations and residual per row).
A backbone subclasses it and implements the interface below (`prelude`, `iteration_map`, `decode_token`, `output`,
`next_state`, `initial_values`); its parameters live on the subclass, so their names are the source model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn

from .checkpointing import FixedPointReplay
from .fixed_point import (
    ContinueSync,
    IterationMap,
    SOLVERS,
    MapOutput,
    SolverSettings,
    implicit_output,
    one_step_output,
    solve,
)
from .mixers import MIXER_INPUTS, MIXER_KINDS
from .ops.reference import DecodeResult

FP_BACKWARDS = ("one_step", "implicit")


@dataclass
class LayerOutput:
    """out: (b, T, hidden); state: the backbone's state after the call (if asked for); iterations, residual: (b,)."""

    out: torch.Tensor
    state: Any
    iterations: torch.Tensor
    residual: torch.Tensor


class FixedPointLayer(nn.Module):
    """One FP-RNN layer. forward(hidden_states (b, T, hidden)) -> LayerOutput. Abstract: see the module docstring.

    config: any object with the model config's fields (FPMambaConfig); the solver knobs (fp_*) are read at every
    call, so an edit of them takes effect at the next one.
    """

    def __init__(self, config: Any, layer_idx: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx

    # ------------------------------------------------------------------------------------- backbone interface
    def prelude(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, state: Any) -> Any:
        """Everything of the call that does not depend on the iterate (projections of x, conv, decays, ...).
        hidden_states (b, T, hidden); mask (b, T) bool (True = real token) or None; state: the previous call's."""
        raise NotImplementedError

    def initial_iterate(self, prelude: Any) -> torch.Tensor:
        """y^0 (b, T, d) fp32 of the solve."""
        raise NotImplementedError

    def iteration_map(self, prelude: Any, settings: SolverSettings) -> IterationMap:
        """The map f of this call, an object: f(y, rows) -> MapOutput(yhat, aux)."""
        raise NotImplementedError

    def decode_token(self, prelude: Any, settings: SolverSettings) -> DecodeResult:
        """One token per row (T = 1, a state, no autograd): its inner solve and the new recurrent state."""
        raise NotImplementedError

    def output(self, y_out: torch.Tensor, prelude: Any) -> torch.Tensor:
        """The layer's output (b, T, hidden) in the input's dtype from f(y*) (b, T, d)."""
        raise NotImplementedError

    def next_state(self, prelude: Any, y_star: torch.Tensor, y_out: torch.Tensor, aux: tuple) -> Any:
        """The state to continue from: y_star, y_out (b, T, d) of this call, aux: the map's aux at y*."""
        raise NotImplementedError

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial values of the parameters this layer initialises specially, by name."""
        raise NotImplementedError

    def init_weights(self, init: Any) -> None:
        """The random initialisation of the backbone's own weights (e.g. its conv), through `init`: transformers'
        guarded helpers (`transformers.initialization`), which leave loaded weights alone."""
        raise NotImplementedError

    # The converter from the transformers source model (`FPMambaForCausalLM.from_<source>`): the source's class
    # name in transformers, its config mapped onto ours, and what makes the layer compute the source exactly.
    source_model: str

    @classmethod
    def config_from_source(cls, source: nn.Module) -> dict[str, Any]:
        """The FP config values of a converted `source` model (its transformers `*ForCausalLM`); raises ValueError
        for a source that cannot convert exactly."""
        raise NotImplementedError

    added_parameters: tuple[str, ...] = ()  # name prefixes of the parameters the source model does not have

    def start_as_source(self) -> None:
        """Make the layer compute its source backbone's output exactly (e.g. Q = I, y-projections at zero), keeping
        a gradient path so that fine-tuning can grow the fixed-point part."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- the solve
    def solver_settings(self, max_iter: int | None = None, tol: float | None = None) -> SolverSettings:
        """The settings of one call: the config's, with the per-call cap / tolerance if given."""
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

    def finish(self, f: IterationMap, y_star: torch.Tensor, plain: MapOutput | None) -> MapOutput:
        """f(y*) and its aux. With autograd: differentiable according to fp_backward. Without: the solver's own f(y*)
        (`plain`), or computed when there is none (a checkpoint replay) or when training uses several one-step
        applications (so a checkpoint's no-grad first forward yields the value its recompute differentiates)."""
        c = self.config
        grad = torch.is_grad_enabled()
        if grad and c.fp_backward == "implicit":
            adj = SolverSettings(max_iter=c.fp_backward_max_iter, tol=c.fp_backward_tol)
            return implicit_output(f, y_star, adj, self.layer_idx)
        steps = c.fp_backward_steps if (grad or self.training) and c.fp_backward == "one_step" else 1
        if grad or plain is None or steps > 1:
            return one_step_output(f, y_star, steps)
        return plain

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: Any = None,
        return_state: bool = False,
        fp_max_iter: int | None = None,
        fp_tol: float | None = None,
        sync: ContinueSync | None = None,
        replay: FixedPointReplay | None = None,
    ) -> LayerOutput:
        """hidden_states (b, T, hidden); attention_mask (b, T) with 1 for real tokens (left padding only);
        state: the previous call's (continues the sequence). T = 1 with a state and no autograd is a decode step;
        a token that needs gradients takes the parallel path, which handles T = 1 with a state exactly.
        sync: makes data-parallel ranks agree to continue each iteration (see fixed_point.solve).
        replay: activation checkpointing; an empty one records y*, a filled one is applied instead of solving."""
        settings = self.solver_settings(fp_max_iter, fp_tol)
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        pre = self.prelude(hidden_states, mask, state)

        if state is not None and hidden_states.shape[1] == 1 and not torch.is_grad_enabled():
            step = self.decode_token(pre, settings)
            y_star, y_out = step.y_star[:, None], step.y_out[:, None]
            new_state = self.next_state(pre, y_star, y_out, (step.state,)) if return_state else None
            return LayerOutput(self.output(y_out, pre), new_state, step.iterations, step.residual)

        f = self.iteration_map(pre, settings)
        if replay is not None and replay.filled:
            y_star, iterations, residual, plain = replay.y_star, replay.iterations, replay.residual, None
        else:
            res = solve(f, self.initial_iterate(pre), settings, self.training, self.layer_idx, sync)
            y_star, iterations, residual = res.y_star, res.iterations, res.residual
            plain = MapOutput(res.y_out, res.aux)
            if replay is not None:
                replay.record(y_star, iterations, residual)
        fin = self.finish(f, y_star, plain)
        new_state = self.next_state(pre, y_star.detach(), fin.yhat.detach(), fin.aux) if return_state else None
        return LayerOutput(self.output(fin.yhat, pre), new_state, iterations, residual)


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
