"""Triton SSD scan == PyTorch reference, forward and backward, under TRITON_INTERPRET=1 (fp32, tiny shapes).

Shapes straddle the chunk (16 here): T = 1, 15, 63 and 40; initial/final states; left-padding masks;
n_groups > 1 (B/C shared by several heads); no D.
"""

from __future__ import annotations

from _triton_interp import run_interpreted

CASES = [
    # b, T, h, p, g, n, chunk, h0, masked, use_D, final_grad
    (2, 1, 2, 8, 1, 16, 16, True, False, True, True),
    (2, 15, 4, 8, 2, 16, 16, False, True, True, True),
    (1, 63, 2, 16, 1, 8, 16, True, True, True, True),
    (2, 40, 4, 8, 2, 16, 16, True, True, False, False),
    (1, 40, 3, 20, 3, 24, 32, False, False, True, True),
]


def test_scan_matches_reference_forward_and_backward() -> None:
    code = "from tests.modeling.ops._triton_scan_cases import check_scan\n" + "".join(
        f"check_scan(*{c})\n" for c in CASES
    )
    run_interpreted(code)


def test_dispatch_uses_triton_when_forced() -> None:
    """FPMAMBA_KERNELS=triton routes ops.ssd_scan to the kernel (and keeps ops.ssd_scan a function)."""
    code = """
import os, torch
os.environ["FPMAMBA_KERNELS"] = "triton"
from modeling import ops
from modeling.ops import reference
import modeling.ops.ssd_scan_triton as k
calls = []
orig = k.ssd_scan_triton
k.ssd_scan_triton = lambda *a: calls.append(1) or orig(*a)
x = torch.randn(1, 5, 2, 16); dt = torch.rand(1, 5, 2); A = -torch.rand(2); B = torch.randn(1, 5, 1, 16)
y, h = ops.ssd_scan(x, dt, A, B, B, None, None, None, 16)
y2, h2 = ops.ssd_scan(x, dt, A, B, B, None, None, None, 16)
assert calls == [1, 1] and callable(ops.ssd_scan)
yr, hr = reference.ssd_scan_sequential(x, dt, A, B, B)
assert torch.allclose(y, yr, atol=1e-5) and torch.allclose(h, hr, atol=1e-5)
"""
    run_interpreted(code)
