"""The one closeness check of the kernel-vs-reference tests: a failure names the quantity, the measured error and
the test case it came from.

Two criteria, chosen by whether an absolute tolerance is given:
  * normwise (atol None): the relative max error  max|got - ref| / (max|ref| + 1e-6)  must stay below rtol. One
    scale for the whole tensor: a kernel's rounding scales with the largest values it handles, so small entries
    are not held to a relative bound they cannot meet;
  * elementwise (atol given): |got - ref| <= atol + rtol |ref| for every entry (torch.allclose).
Either way the shapes must match (and the dtype, when asked), and a NaN anywhere fails.
"""

from __future__ import annotations

import os

import torch

REL_EPS = 1e-6


def relative_max_error(got: torch.Tensor, ref: torch.Tensor, eps: float = REL_EPS) -> float:
    """max|got - ref| / (max|ref| + eps), as a float (NaN when either tensor holds a NaN)."""
    return float((got - ref).abs().max() / (ref.abs().max() + eps))


def current_case() -> str:
    """The running pytest case (its node id), or "" outside pytest."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


def _where(case: str) -> str:
    return f" [{case}]" if case else ""


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """got == ref within rtol (normwise) or within atol + rtol |ref| (elementwise, when atol is given)."""
    case = _where(current_case())
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}{case}"
    if dtype is not None:
        assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}{case}"
    if got.numel() == 0:
        return
    err = relative_max_error(got, ref)  # in the tensors' own dtype
    if atol is None:
        ok, bound = err < rtol, f"rtol {rtol:g} (normwise)"
    else:
        ok, bound = torch.allclose(got, ref, rtol=rtol, atol=atol), f"rtol {rtol:g}, atol {atol:g} (elementwise)"
    assert ok, f"{name}: {_detail(got, ref, err)}; not within {bound}{case}"


def _detail(got: torch.Tensor, ref: torch.Tensor, err: float) -> str:
    diff = (got.double() - ref.double()).abs()
    worst = tuple(int(i) for i in torch.unravel_index(torch.nan_to_num(diff, nan=float("inf")).argmax(), diff.shape))
    return (f"relative max error {err:.2e}, max abs error {float(diff.max()):.2e} at index {worst} "
            f"(got {float(got[worst]):.6g}, ref {float(ref[worst]):.6g}), max |ref| {float(ref.abs().max()):.3g}")

def assert_equal(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    """got == ref exactly (shape, dtype and every value), e.g. per-row iteration counts."""
    assert torch.equal(got, ref), f"{name}: {got.tolist()} != {ref.tolist()}{_where(current_case())}"
