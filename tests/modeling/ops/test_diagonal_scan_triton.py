"""Triton diagonal scan (the FP-RNN's h_t = lambda_t h_{t-1} + u_t) == sequential spec == chunked PyTorch form,
forward and backward, under Triton's interpreter (fp32, tiny shapes; see conftest.py). One case per shape.

Shapes straddle the kernel's chunk: T = 1, T not a multiple of it, T a multiple of it, a chunk longer than T;
d not a power of two and beyond one channel block (64); initial/final states; left-padding masks; lambda with
negative values and exact zeros.
"""

from __future__ import annotations

import pytest
import torch

from tests.closeness import assert_close

pytestmark = pytest.mark.triton_interpreter


def _case(b, T, d, chunk, h0, masked, zeros=False, final_grad=True):
    flags = [name for name, on in (("h0", h0), ("masked", masked), ("lamzeros", zeros),
                                   ("nofinalgrad", not final_grad)) if on]
    case_id = "-".join([f"b{b}", f"T{T}", f"d{d}", f"chunk{chunk}"] + flags)
    return pytest.param(b, T, d, chunk, h0, masked, zeros, final_grad, id=case_id)


CASES = [
    # b, T, d, chunk, h0, masked, zeros, final_grad
    _case(2, 1, 5, 16, True, False),
    _case(2, 37, 20, 16, True, True),
    _case(1, 32, 3, 16, False, False, zeros=True),
    _case(2, 11, 70, 32, True, True, final_grad=False),
    _case(3, 21, 6, 16, False, True),
]


@pytest.mark.parametrize("b, T, d, chunk, h0, masked, zeros, final_grad", CASES)
def test_diag_scan_matches_reference_forward_and_backward(b, T, d, chunk, h0, masked, zeros, final_grad):
    """Outputs and the gradients of lambda, u and the initial state: kernel == chunked == sequential (fp32)."""
    from fpmamba_core.ops.diagonal_scan_reference import diag_scan_chunked, diag_scan_sequential
    from fpmamba_core.ops.diagonal_scan_triton import diag_scan_triton

    gen = torch.Generator().manual_seed(T * 31 + d)
    lam = torch.rand(b, T, d, generator=gen) * 2.2 - 1.1  # |lambda| up to 1.1, negative values too
    if zeros:
        lam[:, ::5, ::2] = 0.0
    lam.requires_grad_()
    u = torch.randn(b, T, d, generator=gen).requires_grad_()
    H0 = torch.randn(b, d, generator=gen).requires_grad_() if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool)
        mask[0, : T // 2] = False  # left padding of the first row
        mask[-1, :1] = False
    inputs = [t for t in (lam, u, H0) if t is not None]
    gy, gh = torch.randn(b, T, d, generator=gen), torch.randn(b, d, generator=gen)
    results = []
    for fn, kw in ((diag_scan_sequential, {}), (diag_scan_chunked, {"chunk_size": chunk}),
                   (diag_scan_triton, {"chunk_size": chunk})):
        h, hT = fn(lam, u, H0, mask, **kw)
        loss = (h * gy).sum() + ((hT * gh).sum() if final_grad else 0.0)
        results.append((h.detach(), hT.detach()) + torch.autograd.grad(loss, inputs))
    names = ["h", "final_state", "dlam", "du"] + (["dh0"] if h0 else [])
    ref, chunked, kernel = results
    for name, r, c, k in zip(names, ref, chunked, kernel, strict=True):
        assert_close(f"chunked {name}", c, r, 1e-5, dtype=torch.float32)
        assert_close(f"triton {name}", k, r, 1e-5, dtype=torch.float32)


def test_diag_dispatch_uses_triton_when_forced(monkeypatch):
    """FPMAMBA_KERNELS=triton routes kernels.diag_scan to the kernel; fp64 stays on the chunked form; a chunk the
    kernel does not take is refused."""
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    import fpmamba_core.ops.diagonal_scan_triton as k
    from fpmamba_core import kernels
    from fpmamba_core.ops.diagonal_scan_reference import diag_scan_sequential

    calls = []
    orig = k.diag_scan_triton
    monkeypatch.setattr(k, "diag_scan_triton", lambda *a: calls.append(1) or orig(*a))
    lam, u = torch.rand(1, 5, 3), torch.randn(1, 5, 3)
    h, hT = kernels.diag_scan(lam, u, None, None, 16)
    kernels.diag_scan(lam.double(), u.double(), None, None, 16)
    assert calls == [1] and callable(kernels.diag_scan)
    with pytest.raises(ValueError, match="chunk_size"):
        kernels.diag_scan(lam, u, None, None, 12)
    hr, hTr = diag_scan_sequential(lam, u)
    assert_close("h", h, hr, 1e-5, atol=1e-6)
    assert_close("final_state", hT, hTr, 1e-5, atol=1e-6)
