"""The chunked SSD scan equals the token-by-token recurrence (the spec), over awkward shapes."""

import pytest
import torch
from fpmamba_core.ops.ssd_scan_reference import ssd_scan_chunked, ssd_scan_decay, ssd_scan_sequential
from hypothesis import given, settings
from hypothesis import strategies as st


def _inputs(b, T, h, p, g, n, dtype=torch.float64, with_state=True, pad=0):
    x = torch.randn(b, T, h, p, dtype=dtype)
    dt = torch.rand(b, T, h, dtype=dtype) * 0.5
    A = -torch.rand(h, dtype=dtype) * 2
    B = torch.randn(b, T, g, n, dtype=dtype)
    C = torch.randn(b, T, g, n, dtype=dtype)
    D = torch.randn(h, dtype=dtype)
    H0 = torch.randn(b, h, p, n, dtype=dtype) if with_state else None
    mask = torch.ones(b, T, dtype=torch.bool)
    mask[0, : min(pad, T)] = False
    return x, dt, A, B, C, D, H0, mask


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3), T=st.integers(1, 70), heads_per_group=st.integers(1, 3), g=st.integers(1, 2),
    p=st.integers(1, 5), n=st.integers(1, 6), chunk=st.integers(1, 33), with_state=st.booleans(),
    pad=st.integers(0, 5),
)
def test_chunked_equals_sequential(b, T, heads_per_group, g, p, n, chunk, with_state, pad):
    args = _inputs(b, T, heads_per_group * g, p, g, n, with_state=with_state, pad=pad)
    y1, s1 = ssd_scan_sequential(*args)
    y2, s2 = ssd_scan_chunked(*args, chunk_size=chunk)
    torch.testing.assert_close(y2, y1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s2, s1, rtol=1e-9, atol=1e-9)


def test_padding_leaves_state_untouched():
    """Left-padded positions neither decay nor feed the state: a padded row equals the row run alone."""
    x, dt, A, B, C, D, H0, _ = _inputs(1, 12, 2, 3, 1, 4, with_state=False)
    y_alone, s_alone = ssd_scan_sequential(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], D)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, :4] = False
    y_pad, s_pad = ssd_scan_chunked(x, dt, A, B, C, D, mask=mask, chunk_size=5)
    torch.testing.assert_close(y_pad[:, 4:], y_alone)
    torch.testing.assert_close(s_pad, s_alone)


def test_final_state_continues_the_scan():
    """Scanning [a; b] equals scanning a, then b from a's final state."""
    x, dt, A, B, C, D, H0, _ = _inputs(2, 40, 4, 3, 2, 5)
    y, s = ssd_scan_chunked(x, dt, A, B, C, D, H0, chunk_size=16)
    ya, sa = ssd_scan_chunked(x[:, :17], dt[:, :17], A, B[:, :17], C[:, :17], D, H0, chunk_size=16)
    yb, sb = ssd_scan_chunked(x[:, 17:], dt[:, 17:], A, B[:, 17:], C[:, 17:], D, sa, chunk_size=16)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y)
    torch.testing.assert_close(sb, s)


@pytest.mark.parametrize("T, chunk, pad", [(1, 4, 0), (13, 4, 3), (16, 8, 0), (30, 64, 5)], ids=str)
def test_a_precomputed_decay_gives_the_same_scan_for_every_row_subset(T, chunk, pad):
    """The dt-only part computed once (`ssd_scan_decay`) and gathered for a subset of rows, as a layer call reuses
    it across iterations, gives the scan computed from dt."""
    x, dt, A, B, C, D, H0, mask = _inputs(3, T, 4, 3, 2, 5, pad=pad)
    decay = ssd_scan_decay(dt, A, mask, chunk)
    for rows in (torch.arange(3), torch.tensor([0, 2]), torch.tensor([1])):
        args = (x[rows], dt[rows], A, B[rows], C[rows], D, H0[rows], mask[rows])
        y1, s1 = ssd_scan_chunked(*args, chunk_size=chunk)
        y2, s2 = ssd_scan_chunked(*args, chunk_size=chunk, decay=decay.select(rows))
        torch.testing.assert_close(y2, y1, rtol=0, atol=0)
        torch.testing.assert_close(s2, s1, rtol=0, atol=0)
