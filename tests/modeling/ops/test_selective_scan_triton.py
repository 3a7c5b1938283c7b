"""Triton selective scan (Mamba-1) == PyTorch reference, forward and backward, under Triton's interpreter (fp32, tiny
shapes; see conftest.py). One case per shape.

Shapes straddle the kernel's chunk (the tokens between two stored states): T = 1, T not a multiple of it, a chunk
longer than T; channels beyond one block (32); initial/final states; left-padding masks; no D.
"""

from __future__ import annotations

import pytest
import torch

from tests.closeness import assert_close

pytestmark = pytest.mark.triton_interpreter


def _case(b, T, d, n, chunk, h0, masked, use_D=True, final_grad=True):
    flags = [name for name, on in (("h0", h0), ("masked", masked), ("noD", not use_D),
                                   ("nofinalgrad", not final_grad)) if on]
    case_id = "-".join([f"b{b}", f"T{T}", f"d{d}", f"n{n}", f"chunk{chunk}"] + flags)
    return pytest.param(b, T, d, n, chunk, h0, masked, use_D, final_grad, id=case_id)


CASES = [
    # b, T, d, n, chunk, h0, masked, use_D, final_grad
    _case(2, 1, 8, 4, 4, True, False),
    _case(2, 11, 6, 3, 4, False, True),
    _case(1, 16, 70, 16, 8, True, True),
    _case(2, 9, 5, 4, 32, True, True, use_D=False, final_grad=False),
]


@pytest.mark.parametrize("b, T, d, n, chunk, h0, masked, use_D, final_grad", CASES)
def test_selective_scan_matches_reference_forward_and_backward(b, T, d, n, chunk, h0, masked, use_D, final_grad):
    """Forward outputs and the gradients of every input: kernel == chunked PyTorch form == sequential reference
    (fp32)."""
    from fpmamba_core.ops.selective_scan_reference import selective_scan_chunked, selective_scan_sequential
    from fpmamba_core.ops.selective_scan_triton import selective_scan_triton

    gen = torch.Generator().manual_seed(T * 31 + d)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = r(b, T, d).requires_grad_()
    dt = (torch.rand(b, T, d, generator=gen) * 0.5 + 0.05).requires_grad_()
    A = (-torch.rand(d, n, generator=gen) - 0.2).requires_grad_()
    B, C = r(b, T, n).requires_grad_(), r(b, T, n).requires_grad_()
    D = r(d).requires_grad_() if use_D else None
    H0 = r(b, d, n).requires_grad_() if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool)
        mask[0, : T // 2] = False  # left padding of the first row
    inputs = [t for t in (x, dt, A, B, C, D, H0) if t is not None]
    gy, gh = r(b, T, d), r(b, d, n)
    results = []
    for fn, kw in ((selective_scan_sequential, {}), (selective_scan_chunked, {}),
                   (selective_scan_triton, {"chunk_size": chunk})):
        y, hT = fn(x, dt, A, B, C, D, H0, mask, **kw)
        loss = (y * gy).sum() + ((hT * gh).sum() if final_grad else 0.0)
        results.append((y.detach(), hT.detach()) + torch.autograd.grad(loss, inputs))
    names = ["y", "final_state", "dx", "ddt", "dA", "dB", "dC"] + (["dD"] if use_D else []) + (["dh0"] if h0 else [])
    for name, ref, chunked, out in zip(names, *results, strict=True):
        assert_close(f"chunked {name}", chunked, ref, 1e-4, dtype=torch.float32)
        assert_close(f"triton {name}", out, ref, 1e-4, dtype=torch.float32)


def test_dispatch_uses_triton_when_forced(monkeypatch):
    """FPMAMBA_KERNELS=triton routes kernels.selective_scan to the kernel; fp64 stays on the reference."""
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    import fpmamba_core.ops.selective_scan_triton as k
    from fpmamba_core import kernels
    from fpmamba_core.ops.selective_scan_reference import selective_scan_sequential

    calls = []
    orig = k.selective_scan_triton
    monkeypatch.setattr(k, "selective_scan_triton", lambda *a: calls.append(1) or orig(*a))
    x, dt = torch.randn(1, 5, 3), torch.rand(1, 5, 3)
    A, B = -torch.rand(3, 2), torch.randn(1, 5, 2)
    y, h = kernels.selective_scan(x, dt, A, B, B)
    kernels.selective_scan(x.double(), dt.double(), A.double(), B.double(), B.double())
    assert calls == [1]
    yr, hr = selective_scan_sequential(x, dt, A, B, B)
    assert_close("y", y, yr, 1e-5, atol=1e-5)
    assert_close("final_state", h, hr, 1e-5, atol=1e-5)
