"""The core's typed settings: what a layer, its channel mixer and its solver are built and run with.

The core never reads a transformers config. The transformers model builds these from FPMambaConfig once
(`fpmamba_hf/core_settings.py`: the layer's and the mixer's when a layer is built, the solver's again whenever an
fp_* field changed), and a user of the core alone builds them directly. No field has a default here: the config is
the one place that declares the defaults, so a value here is always one somebody chose.

  LayerSettings        the shape and the switches of a layer (structural: fixed once the layer is built)
  MixerSettings        the channel mixer Q_t of a layer (structural)
  FixedPointSettings   the solver knobs of every call (the config's fp_* fields; a model may swap them between calls)
`SolverSettings` (fixed_point.py) is one solve's: a call derives it from FixedPointSettings and its own overrides.
The per-call overrides fp_max_iter / fp_tol / fp_solve_chunk have one rule set, `check_call_budget`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .fixed_point import DECODE_SOLVERS, SOLVERS, SolverSettings

FP_BACKWARDS = ("one_step", "implicit")  # the gradient of a layer call (FixedPointSettings.backward)


@dataclass(frozen=True)
class MixerSettings:
    """The channel mixer of a layer (docs/method.md, "Channel mixers").

    kind: a MIXERS name; input_mode: one of MIXER_INPUTS (p_t = [x ; y], x + y or x); rank: the number of rank-one
    terms (householder, dplr); reflection_scale: c in the strength c * g; activation: an ACTIVATIONS name;
    alpha_init: the gates' initial value in (0, 1); initializer_range: the std of the projection's initial weight;
    proj_rank: 0 (one full projection of p) or r > 0 (p -> r -> P); options: the kind's own options, exactly the
    names its `MixerKind.options` declares (e.g. Kronecker's kron_norm), read only by that kind.
    """

    kind: str
    input_mode: str
    rank: int
    reflection_scale: float
    activation: str
    alpha_init: float
    initializer_range: float
    proj_rank: int
    options: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))  # frozen all the way down


@dataclass(frozen=True)
class LayerSettings:
    """The shape and switches of one fixed-point layer; a backbone reads the fields that apply to it.

    Every backbone: hidden_size, expand (d_inner = expand * hidden_size), use_bias, layer_norm_epsilon, chunk_size
    (the scans' block length), mixer. Mamba backbones: state_size, conv_kernel, use_short_conv, use_conv_bias,
    bc_hidden_dependence, dt_hidden_dependence, bc_norm, time_step_min / max / floor (dt's initial range) and
    time_step_limit (dt's clamp). Mamba-2: head_dim, n_groups, norm_per_group. Mamba-1: time_step_rank ("auto" =
    ceil(hidden_size / 16)), mamba1_gate (one of MAMBA1_GATES), mamba1_norm (one of MAMBA1_NORMS).
    """

    hidden_size: int
    expand: int
    state_size: int
    head_dim: int
    n_groups: int
    conv_kernel: int
    chunk_size: int
    use_short_conv: bool
    use_bias: bool
    use_conv_bias: bool
    layer_norm_epsilon: float
    norm_per_group: bool
    bc_hidden_dependence: bool
    dt_hidden_dependence: bool
    bc_norm: bool
    time_step_min: float
    time_step_max: float
    time_step_floor: float
    time_step_limit: tuple[float, float]
    time_step_rank: str | int
    mamba1_gate: str
    mamba1_norm: str
    mixer: MixerSettings

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size


@dataclass(frozen=True)
class FixedPointSettings:
    """The solver knobs of every layer call (docs/method.md, "The solver"; the config's fp_* fields by these names
    without the prefix).

    max_iter / max_iter_eval: the cap in training / otherwise; max_iter_gamma_shape k > 0 draws a training cap
    min(max_iter, ceil(Gamma(k, max_iter_gamma_scale))) per call; tol: the relative residual that stops a row;
    damping, damping_decay, damping_patience: the damped step's schedule; train_quantile: the share of rows done at
    which a training solve stops; solver: one of SOLVERS; anderson_m: Anderson's memory; decode_solver: one of
    DECODE_SOLVERS; backward: one of FP_BACKWARDS, with backward_steps (one-step applications) and
    backward_max_iter / backward_tol (the implicit gradient's adjoint solve); solve_chunk: 0 (the whole sequence) or
    the chunk length of a chunked solve; compile: whether the solver's evaluations run through torch.compile;
    jacobian_reg: > 0 makes a training forward with autograd also return the Jacobian penalty at y*
    (modeling/jacobian_penalty.py; the model weighs it into the loss).
    """

    max_iter: int
    max_iter_eval: int
    max_iter_gamma_shape: float
    max_iter_gamma_scale: float
    tol: float
    damping: float
    damping_decay: float
    damping_patience: int
    train_quantile: float
    solver: str
    anderson_m: int
    decode_solver: str
    backward: str
    backward_steps: int
    backward_max_iter: int
    backward_tol: float
    solve_chunk: int
    compile: bool
    jacobian_reg: float

    def __post_init__(self) -> None:
        for name, choices in (("solver", SOLVERS), ("decode_solver", DECODE_SOLVERS), ("backward", FP_BACKWARDS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("max_iter", "max_iter_eval", "damping_patience", "anderson_m", "backward_steps",
                     "backward_max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.jacobian_reg, bool) or not (math.isfinite(self.jacobian_reg) and self.jacobian_reg >= 0):
            raise ValueError(f"jacobian_reg must be a finite number >= 0, got {self.jacobian_reg!r}")

    def solve_settings(self, max_iter: int, tol: float) -> SolverSettings:
        """One solve's settings: these knobs with the cap `max_iter` and the tolerance `tol`."""
        return SolverSettings(
            max_iter=max_iter, tol=float(tol), damping=self.damping, damping_decay=self.damping_decay,
            damping_patience=self.damping_patience, train_quantile=self.train_quantile, solver=self.solver,
            anderson_m=self.anderson_m, decode_solver=self.decode_solver,
        )


def check_call_budget(
    max_iter: Any, tol: Any, solve_chunk: Any = None
) -> tuple[int | None, float | None, int | None]:
    """The per-call overrides fp_max_iter, fp_tol, fp_solve_chunk as plain Python numbers (numpy scalars accepted;
    None stays None), or a ValueError naming the argument: fp_max_iter a positive integer, fp_tol a finite number
    > 0, fp_solve_chunk 0 (the whole sequence) or a positive integer. A bool is refused everywhere (True would run
    as 1). The one rule set of these arguments: the model and the layer both call it."""
    max_iter = _call_int(max_iter, 1, "fp_max_iter must be a positive integer")
    if tol is not None:
        value = None if isinstance(tol, bool) else _as_float(tol)
        if value is None or not (math.isfinite(value) and value > 0):
            raise ValueError(f"fp_tol must be a finite number > 0, got {tol!r}")
        tol = value
    solve_chunk = _call_int(solve_chunk, 0, "fp_solve_chunk must be 0 (the whole sequence) or a positive integer")
    return max_iter, tol, solve_chunk


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _call_int(value: Any, least: int, rule: str) -> int | None:
    """`value` as a Python int of at least `least` (None stays None), else ValueError(`rule`, value)."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{rule}, got {value!r}") from None
    if number < least:
        raise ValueError(f"{rule}, got {value!r}")
    return number
