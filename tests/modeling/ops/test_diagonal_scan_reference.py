"""The chunked diagonal scan equals the token-by-token recurrence (the spec), values and gradients, in fp64."""

import pytest
import torch
from fpmamba_core.kernels import diag_scan
from fpmamba_core.ops.diagonal_scan_reference import diag_scan_chunked, diag_scan_sequential

# (batch, T, d, chunk, lambda in (-1, 1), left padding of row 0, initial state): T not a multiple of the chunk,
# T below it, T = 1, a chunk of 1, a chunk that is not a power of two with negative decays.
SHAPES = [
    (2, 17, 5, 4, False, 3, True),
    (1, 1, 3, 8, False, 0, False),
    (3, 6, 2, 16, False, 2, True),
    (2, 33, 4, 1, False, 0, True),
    (2, 23, 3, 6, True, 5, False),
]


def _inputs(b: int, T: int, d: int, negative: bool, pad: int, with_state: bool):
    """lam (b, T, d) in (0, 1) (or (-1, 1)), u (b, T, d), h0 (b, d) | None, mask (b, T) with row 0 left-padded."""
    lam = torch.rand(b, T, d, dtype=torch.float64)
    if negative:
        lam = 2 * lam - 1
    u = torch.randn(b, T, d, dtype=torch.float64)
    h0 = torch.randn(b, d, dtype=torch.float64) if with_state else None
    mask = torch.ones(b, T, dtype=torch.bool)
    mask[0, :pad] = False
    return lam, u, h0, mask


@pytest.mark.parametrize("b, T, d, chunk, negative, pad, with_state", SHAPES,
                         ids=[f"b{s[0]}-T{s[1]}-d{s[2]}-chunk{s[3]}{'-neg' * s[4]}" for s in SHAPES])
def test_chunked_equals_sequential_forward_and_backward(b, T, d, chunk, negative, pad, with_state):
    lam, u, h0, mask = _inputs(b, T, d, negative, pad, with_state)
    leaves = [t.requires_grad_() for t in (lam, u, h0) if t is not None]
    weights = torch.randn(b, T, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    results = []
    for scan in (diag_scan_sequential, lambda *a: diag_scan_chunked(*a, chunk_size=chunk)):
        h, final = scan(lam, u, h0, mask)
        loss = (h * weights[0]).sum() + (final * weights[1]).sum()
        results.append((h, final, torch.autograd.grad(loss, leaves)))
    (h1, f1, g1), (h2, f2, g2) = results
    torch.testing.assert_close(h2, h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f2, f1, rtol=1e-12, atol=1e-12)
    for a, b_ in zip(g2, g1):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)


def test_padding_leaves_the_state_untouched_and_the_public_op_continues_a_scan():
    """A left-padded row equals the row alone; scanning [a; b] equals a, then b from a's final state."""
    lam, u, h0, _ = _inputs(2, 12, 3, False, 0, True)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, :4] = False
    padded, padded_final = diag_scan(lam, u, h0, mask, chunk_size=5)
    alone, alone_final = diag_scan_sequential(lam[:, 4:], u[:, 4:], h0)
    torch.testing.assert_close(padded[:, 4:], alone)
    torch.testing.assert_close(padded[:, :4], h0[:, None].expand(2, 4, 3))
    torch.testing.assert_close(padded_final, alone_final)
    first, mid = diag_scan(lam[:, :7], u[:, :7], h0, chunk_size=4)
    second, end = diag_scan(lam[:, 7:], u[:, 7:], mid, chunk_size=4)
    whole, whole_end = diag_scan(lam, u, h0, chunk_size=4)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(end, whole_end)
