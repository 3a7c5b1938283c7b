"""The chunked Mamba-1 selective scan equals the token-by-token recurrence (the spec): values and the gradients of
every input, in fp64, one case per shape. Shapes straddle the chunk: T = 1, T not a multiple of the chunk, a chunk
longer than T, the automatic chunk; with and without an initial state, D and left padding."""

from __future__ import annotations

import pytest
import torch
from fpmamba_core.kernels import selective_scan
from fpmamba_core.ops.selective_scan_reference import selective_scan_chunked, selective_scan_sequential


def _case(b, T, d, n, chunk, h0, masked, use_D=True):
    flags = [name for name, on in (("h0", h0), ("masked", masked), ("noD", not use_D)) if on]
    case_id = "-".join([f"b{b}", f"T{T}", f"d{d}", f"n{n}", f"chunk{chunk or 'auto'}"] + flags)
    return pytest.param(b, T, d, n, chunk, h0, masked, use_D, id=case_id)


CASES = [
    # b, T, d, n, chunk, h0, masked, use_D
    _case(2, 1, 4, 3, None, True, False),
    _case(2, 7, 5, 4, 3, False, True),
    _case(1, 16, 3, 2, 4, True, True),
    _case(3, 23, 4, 5, None, True, True),
    _case(2, 10, 6, 3, 16, False, False, use_D=False),
]


def _inputs(b, T, d, n, h0, masked, use_D, seed=0, dt_scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, B, C = r(b, T, d), r(b, T, n), r(b, T, n)
    dt = torch.rand(b, T, d, generator=gen, dtype=torch.float64) * dt_scale
    A = -torch.rand(d, n, generator=gen, dtype=torch.float64) * 2
    D = r(d) if use_D else None
    H0 = r(b, d, n) if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool)
        mask[0, : T // 2] = False  # left padding of the first row
    return x, dt, A, B, C, D, H0, mask


@pytest.mark.parametrize("b, T, d, n, chunk, h0, masked, use_D", CASES)
def test_chunked_equals_sequential_forward_and_backward(b, T, d, n, chunk, h0, masked, use_D):
    x, dt, A, B, C, D, H0, mask = _inputs(b, T, d, n, h0, masked, use_D)
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, D, H0) if t is not None]
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(b, T, d, generator=gen, dtype=torch.float64)
    gH = torch.randn(b, d, n, generator=gen, dtype=torch.float64)
    results = []
    for scan in (selective_scan_sequential, lambda *a: selective_scan_chunked(*a, chunk_size=chunk)):
        y, H = scan(x, dt, A, B, C, D, H0, mask)
        grads = torch.autograd.grad((y * gy).sum() + (H * gH).sum(), leaves)
        results.append((y, H, grads))
    (y1, H1, g1), (y2, H2, g2) = results
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(H2, H1, rtol=1e-10, atol=1e-10)
    for a, bb in zip(g1, g2):
        torch.testing.assert_close(bb, a, rtol=1e-9, atol=1e-10)


def test_padding_leaves_the_state_untouched():
    """Left-padded positions neither decay nor feed the state: a padded row equals the row run alone."""
    x, dt, A, B, C, D, _, _ = _inputs(1, 12, 3, 4, False, False, True)
    y_alone, H_alone = selective_scan_sequential(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], D)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, :4] = False
    y_pad, H_pad = selective_scan(x, dt, A, B, C, D, mask=mask, chunk_size=5)
    torch.testing.assert_close(y_pad[:, 4:], y_alone)
    torch.testing.assert_close(H_pad, H_alone)


def test_final_state_continues_the_scan():
    """Scanning [a; b] equals scanning a, then b from a's final state."""
    x, dt, A, B, C, D, H0, _ = _inputs(2, 30, 4, 3, True, False, True)
    y, H = selective_scan(x, dt, A, B, C, D, H0)
    ya, Ha = selective_scan(x[:, :11], dt[:, :11], A, B[:, :11], C[:, :11], D, H0)
    yb, Hb = selective_scan(x[:, 11:], dt[:, 11:], A, B[:, 11:], C[:, 11:], D, Ha)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y)
    torch.testing.assert_close(Hb, H)


def test_large_decays_stay_finite_and_exact_in_fp32():
    """dt |A| summed over a chunk far beyond fp32's exp range (here up to ~1e3): no ratio of decays is formed, so
    the chunked form stays finite and equal to the recurrence."""
    x, dt, A, B, C, D, H0, _ = _inputs(2, 40, 4, 3, True, False, True, dt_scale=20.0)
    args = [t.float() for t in (x, dt, A * 5, B, C, D, H0)]
    y1, H1 = selective_scan_sequential(*args)
    y2, H2 = selective_scan_chunked(*args, chunk_size=20)
    assert torch.isfinite(y2).all() and torch.isfinite(H2).all()
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(H2, H1, rtol=1e-5, atol=1e-5)
