"""Core settings for the core's tests, which build layers without the transformers model.

The values are the model config's defaults (FPMambaConfig; tests/fpmamba_hf/test_core_settings.py checks that they
are), taken under the config's flat names so that a test states its overrides as a model user would: `fp_<name>`
for the solver's, `mixer_type` / `mixer_<name>` for the mixer's (a kind's options included), the rest the layer's.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

from fpmamba_core.backbones import BACKBONES
from fpmamba_core.fixed_point import SolverSettings
from fpmamba_core.layer import FixedPointLayer
from fpmamba_core.mixers import mixer_kind
from fpmamba_core.settings import FixedPointSettings, LayerSettings, MixerSettings

LAYER = dict(
    hidden_size=256, expand=2, state_size=64, head_dim=64, n_groups=1, conv_kernel=4, chunk_size=64,
    use_short_conv=True, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5, norm_per_group=True,
    bc_hidden_dependence=True, dt_hidden_dependence=False, bc_norm=True, time_step_min=0.001, time_step_max=0.1,
    time_step_floor=1e-4, time_step_limit=(0.0, math.inf), time_step_rank="auto", mamba1_gate="in_loop",
    mamba1_norm="layernorm_after_loop",
)
MIXER = dict(mixer_type="householder", mixer_input="concat", mixer_rank=2, mixer_reflection_scale=1.0,
             mixer_activation="silu", mixer_alpha_init=0.1, initializer_range=0.02, mixer_proj_rank=0,
             mixer_kron_norm="frobenius")
SOLVER = dict(
    fp_max_iter=16, fp_max_iter_eval=64, fp_max_iter_gamma_shape=0.0, fp_max_iter_gamma_scale=1.0, fp_tol=1e-2,
    fp_damping=1.0, fp_damping_decay=0.9, fp_damping_patience=5, fp_train_quantile=0.9, fp_solver="picard",
    fp_anderson_m=5, fp_decode_solver="picard", fp_backward="one_step", fp_backward_steps=1,
    fp_backward_max_iter=32, fp_backward_tol=1e-4, fp_solve_chunk=0, fp_compile=False,
    fp_jacobian_reg=0.0,
)


def _split(overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
    unknown = set(overrides) - set(LAYER) - set(MIXER) - set(SOLVER)
    if unknown:
        raise TypeError(f"no core setting named {sorted(unknown)}")
    pick = lambda table: {k: overrides.get(k, v) for k, v in table.items()}  # noqa: E731
    return pick(LAYER), pick(MIXER), pick(SOLVER)


def mixer_settings(**overrides: Any) -> MixerSettings:
    """The mixer's settings under the config's names (`mixer_type`, `mixer_rank`, ..., its kind's options)."""
    m = _split(overrides)[1]
    kind = mixer_kind(m["mixer_type"])
    return MixerSettings(
        kind=m["mixer_type"], input_mode=m["mixer_input"], rank=m["mixer_rank"],
        reflection_scale=m["mixer_reflection_scale"], activation=m["mixer_activation"],
        alpha_init=m["mixer_alpha_init"], initializer_range=m["initializer_range"], proj_rank=m["mixer_proj_rank"],
        options={name: m[f"mixer_{name}"] for name in kind.options},
    )


def layer_settings(**overrides: Any) -> LayerSettings:
    layer, _, _ = _split(overrides)
    return LayerSettings(**layer, mixer=mixer_settings(**overrides))


def fixed_point_settings(**overrides: Any) -> FixedPointSettings:
    solver = _split(overrides)[2]
    return FixedPointSettings(**{f.name: solver[f"fp_{f.name}"] for f in fields(FixedPointSettings)})


def build_layer(backbone: str | type[FixedPointLayer], layer_idx: int = 0, **overrides: Any) -> FixedPointLayer:
    """A layer of `backbone` (a BACKBONES name or a layer class) with the config's defaults and `overrides`."""
    cls = BACKBONES[backbone] if isinstance(backbone, str) else backbone
    return cls(layer_settings(**overrides), fixed_point_settings(**overrides), layer_idx)


def solver_settings(max_iter: int, tol: float, **overrides: Any) -> SolverSettings:
    """One solve's settings: the config's defaults of the solver knobs, the cap and tolerance, and `overrides`
    (SolverSettings field names)."""
    return replace(fixed_point_settings().solve_settings(max_iter, tol), **overrides)
