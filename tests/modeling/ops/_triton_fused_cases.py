"""Kept only for tests/modeling/test_anderson.py, which runs `check_layer_solve` with Anderson's step through
`_triton_interp.py`. Once that case is a parameter of `SOLVE_CASES` in test_triton_fused_iteration.py, e.g.
`pytest.param(5, dict(fp_solver="anderson", fp_anderson_m=3, fp_damping=0.8, fp_damping_patience=2),
id="householder-anderson-damped")`, delete that test, this file and `_triton_interp.py`."""

from tests.modeling.ops.test_triton_fused_iteration import check_layer_solve

__all__ = ["check_layer_solve"]
