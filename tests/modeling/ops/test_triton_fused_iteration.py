"""Fused fixed-point iteration (`ops.fused_iteration`) == the layer's composed map under TRITON_INTERPRET=1 (fp32,
tiny shapes): every mixer the kernels cover, every mixer input, hidden-dependent dt, time-step limits, no B/C
norm, one and several norm groups, left padding, a carried state and y*, strict row subsets (frozen rows), T = 1
and lengths across the chunk; whole-layer solves with equal per-row iteration counts (with damping); a training
step's gradients; a NaN reported with the layer's name."""

from __future__ import annotations

from _triton_interp import run_interpreted

MAP_CASES = [
    # seed, b, T, masked, with_state, overrides
    (0, 3, 20, True, False, {}),
    (1, 3, 17, False, True, dict(mixer_type="dplr", mixer_rank=3, dt_hidden_dependence=True, mixer_activation="tanh")),
    (2, 1, 1, False, False, dict(mixer_type="none", norm_per_group=False)),
    (3, 3, 40, True, True, dict(mixer_input="sum", mixer_activation="relu", bc_norm=False,
                                time_step_limit=(0.01, 0.5))),
    (4, 3, 9, False, False, dict(mixer_input="x", mixer_activation="identity", mixer_rank=1, n_groups=1)),
]


def test_fused_map_equals_composed_map() -> None:
    code = "import torch\ntorch.set_num_threads(1)\n"
    code += "from tests.modeling.ops._triton_fused_cases import check_fused_map\n"
    code += "".join(f"check_fused_map({s}, {b}, {T}, {m}, {w}, **{o!r})\n" for s, b, T, m, w, o in MAP_CASES)
    run_interpreted(code)


def test_fused_layer_solve_and_training_step() -> None:
    code = """
import torch
torch.set_num_threads(1)
from tests.modeling.ops._triton_fused_cases import check_layer_solve, check_layer_training_step, check_nan_reported
check_layer_solve(5)
check_layer_solve(6, mixer_type="dplr", fp_damping=0.8, fp_damping_patience=2)
check_layer_training_step(7)
check_nan_reported()
"""
    run_interpreted(code)
