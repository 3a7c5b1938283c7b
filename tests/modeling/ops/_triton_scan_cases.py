"""Kernel-vs-reference checks of the SSD scan, executed under TRITON_INTERPRET=1 (see _triton_interp.py)."""

from __future__ import annotations

import torch

from modeling.ops import reference
from modeling.ops.ssd_scan_triton import ssd_scan_triton


def check_scan(b: int, T: int, h: int, p: int, g: int, n: int, chunk: int, h0: bool, masked: bool,
               use_D: bool = True, final_grad: bool = True, tol: float = 1e-4) -> None:
    """Forward outputs and the gradients of every input agree with the sequential reference (fp32)."""
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
    for fn, kw in ((reference.ssd_scan_sequential, {}), (ssd_scan_triton, {"chunk_size": chunk})):
        y, hT = fn(x, dt, A, B, C, D, H0, mask, **kw)
        loss = (y * gy).sum() + ((hT * gh).sum() if final_grad else 0.0)
        results.append((y, hT) + torch.autograd.grad(loss, inputs))
    names = ["y", "final_state", "dx", "ddt", "dA", "dB", "dC"] + (["dD"] if use_D else []) + (["dh0"] if h0 else [])
    for name, ref, out in zip(names, *results):
        assert out.dtype == torch.float32 and out.shape == ref.shape, name
        err = float((out - ref).abs().max() / (ref.abs().max() + 1e-6))
        assert err < tol, f"{name}: relative max error {err:.2e}"
