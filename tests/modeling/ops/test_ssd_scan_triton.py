"""Triton SSD scan == PyTorch reference, forward and backward, under Triton's interpreter (fp32, tiny shapes; see
conftest.py). One case per shape.

Shapes straddle the chunk (16 here): T = 1, 15, 63 and 40; initial/final states; left-padding masks;
n_groups > 1 (B/C shared by several heads); no D.
"""

from __future__ import annotations

import pytest
import torch

from tests.closeness import assert_close

pytestmark = pytest.mark.triton_interpreter


def _case(b, T, h, p, g, n, chunk, h0, masked, use_D=True, final_grad=True):
    flags = [name for name, on in (("h0", h0), ("masked", masked), ("noD", not use_D),
                                   ("nofinalgrad", not final_grad)) if on]
    case_id = "-".join([f"b{b}", f"T{T}", f"h{h}", f"p{p}", f"g{g}", f"n{n}", f"chunk{chunk}"] + flags)
    return pytest.param(b, T, h, p, g, n, chunk, h0, masked, use_D, final_grad, id=case_id)


CASES = [
    # b, T, h, p, g, n, chunk, h0, masked, use_D, final_grad
    _case(2, 1, 2, 8, 1, 16, 16, True, False, True, True),
    _case(2, 15, 4, 8, 2, 16, 16, False, True, True, True),
    _case(1, 63, 2, 16, 1, 8, 16, True, True, True, True),
    _case(2, 40, 4, 8, 2, 16, 16, True, True, False, False),
    _case(1, 40, 3, 20, 3, 24, 32, False, False, True, True),
]


@pytest.mark.parametrize("b, T, h, p, g, n, chunk, h0, masked, use_D, final_grad", CASES)
def test_scan_matches_reference_forward_and_backward(b, T, h, p, g, n, chunk, h0, masked, use_D, final_grad):
    """Forward outputs and the gradients of every input agree with the sequential reference (fp32)."""
    from fpmamba_core.ops.ssd_scan_reference import ssd_scan_sequential
    from fpmamba_core.ops.ssd_scan_triton import ssd_scan_triton

    gen = torch.Generator().manual_seed(T * 31 + h * 7 + g)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = r(b, T, h, p).requires_grad_()
    dt = (torch.rand(b, T, h, generator=gen) * 0.5 + 0.05).requires_grad_()
    A = (-torch.rand(h, generator=gen) - 0.2).requires_grad_()
    B = r(b, T, g, n).requires_grad_()
    C = r(b, T, g, n).requires_grad_()
    D = r(h).requires_grad_() if use_D else None
    H0 = r(b, h, p, n).requires_grad_() if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool)
        mask[0, : T // 2] = False  # left padding of the first row
    inputs = [t for t in (x, dt, A, B, C, D, H0) if t is not None]
    gy = r(b, T, h, p)
    gh = r(b, h, p, n)
    results = []
    for fn, kw in ((ssd_scan_sequential, {}), (ssd_scan_triton, {"chunk_size": chunk})):
        y, hT = fn(x, dt, A, B, C, D, H0, mask, **kw)
        loss = (y * gy).sum() + ((hT * gh).sum() if final_grad else 0.0)
        results.append((y, hT) + torch.autograd.grad(loss, inputs))
    names = ["y", "final_state", "dx", "ddt", "dA", "dB", "dC"] + (["dD"] if use_D else []) + (["dh0"] if h0 else [])
    for name, ref, out in zip(names, *results, strict=True):
        assert_close(name, out, ref, 1e-4, dtype=torch.float32)


def test_dispatch_uses_triton_when_forced(monkeypatch):
    """FPMAMBA_KERNELS=triton routes kernels.ssd_scan to the kernel (and keeps kernels.ssd_scan a function)."""
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    import fpmamba_core.ops.ssd_scan_triton as k
    from fpmamba_core import kernels
    from fpmamba_core.ops.ssd_scan_reference import ssd_scan_sequential

    calls = []
    orig = k.ssd_scan_triton
    monkeypatch.setattr(k, "ssd_scan_triton", lambda *a: calls.append(1) or orig(*a))
    x = torch.randn(1, 5, 2, 16)
    dt = torch.rand(1, 5, 2)
    A = -torch.rand(2)
    B = torch.randn(1, 5, 1, 16)
    y, h = kernels.ssd_scan(x, dt, A, B, B, None, None, None, 16)
    y2, h2 = kernels.ssd_scan(x, dt, A, B, B, None, None, None, 16)
    assert calls == [1, 1] and callable(kernels.ssd_scan)
    yr, hr = ssd_scan_sequential(x, dt, A, B, B)
    assert_close("y", y, yr, 1e-5, atol=1e-5)
    assert_close("final_state", h, hr, 1e-5, atol=1e-5)
