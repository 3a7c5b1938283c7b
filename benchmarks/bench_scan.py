"""SSD scan timings (forward, forward+backward) at the reference shape: ours (Triton), the PyTorch reference,
and fla's chunk_simple_gla (the same recurrence with per-head B/C) when fla-core is installed.

    python benchmarks/bench_scan.py [--lengths 512 2048 8192] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fpmamba_core.ops.ssd_scan_reference import ssd_scan_chunked  # noqa: E402
from fpmamba_core.ops.ssd_scan_triton import ssd_scan_triton  # noqa: E402

from benchmarks._common import median_ms, report  # noqa: E402


def inputs(b: int, T: int, h: int, p: int, g: int, n: int, dtype: torch.dtype, grad: bool):
    """Random scan inputs on the GPU (B, C l2-normalised as in the layer)."""
    dev = "cuda"
    x = torch.randn(b, T, h, p, device=dev, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, T, h, device=dev) - 2).to(dtype)
    A = -torch.rand(h, device=dev) * 4 - 0.5
    B = torch.nn.functional.normalize(torch.randn(b, T, g, n, device=dev), dim=-1).to(dtype)
    C = torch.nn.functional.normalize(torch.randn(b, T, g, n, device=dev), dim=-1).to(dtype)
    D = torch.randn(h, device=dev)
    ts = [x, dt, A, B, C, D]
    if grad:
        for t in ts:
            t.requires_grad_(True)
    return ts


def time_scan(fn, ts, backward: bool) -> float:
    if not backward:
        with torch.no_grad():
            return median_ms(lambda: fn(*ts))
    y, hT = fn(*ts)
    gy = torch.randn_like(y)

    def step():
        y, _ = fn(*ts)
        torch.autograd.grad(y, [t for t in ts if t.requires_grad], gy)

    return median_ms(step)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reference-lengths", type=int, nargs="*", default=[2048])
    ap.add_argument("--fla-backward", action="store_true",
                    help="also time fla fwd+bwd (fla 0.6.0 refuses it on Hopper with Triton < 3.7.1)")
    args = ap.parse_args()
    h, p, n, g = 24, 64, 128, 1
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        chunk_simple_gla = None
    rows = []
    for T in args.lengths:
        for bwd in (False, True):
            row = {"T": T, "pass": "fwd+bwd" if bwd else "fwd"}
            ts = inputs(args.batch, T, h, p, g, n, torch.bfloat16, bwd)
            ours = lambda x, dt, A, B, C, D: ssd_scan_triton(x, dt, A, B, C, D)  # noqa: E731
            row["ours_ms"] = time_scan(ours, ts, bwd)
            if T in args.reference_lengths:
                ref = lambda x, dt, A, B, C, D: ssd_scan_chunked(x, dt, A, B, C, D)  # noqa: E731
                row["reference_ms"] = time_scan(ref, ts, bwd)
            if chunk_simple_gla is not None and (not bwd or args.fla_backward):
                x, dt, A, B, C, D = ts
                # Same recurrence in fla's layout: q = C, k = B (per head), v = x dt, log-decay g = dt A.
                q = C.detach().expand(-1, -1, h, -1).contiguous().requires_grad_(bwd)
                k = B.detach().expand(-1, -1, h, -1).contiguous().requires_grad_(bwd)
                v = (x.detach() * dt.detach()[..., None]).contiguous().requires_grad_(bwd)
                lg = (dt.detach().float() * A.detach()).contiguous().requires_grad_(bwd)

                def fla(q, k, v, lg):
                    return chunk_simple_gla(q, k, v, g=lg, scale=1.0, output_final_state=True)

                try:
                    row["fla_chunk_simple_gla_ms"] = time_scan(fla, [q, k, v, lg], bwd)
                except RuntimeError as e:  # fla refuses its gated backward on Triton < 3.7.1 + Hopper
                    row["fla_chunk_simple_gla_ms"] = "refused: " + str(e).split("(")[0].strip()[:60]
            rows.append(row)
            print(row, flush=True)
            del ts
            torch.cuda.empty_cache()
    report("SSD scan, batch %d, 24 heads x 64, d_state 128, n_groups 1, bf16" % args.batch, rows,
           ["T", "pass", "ours_ms", "fla_chunk_simple_gla_ms", "reference_ms"])


if __name__ == "__main__":
    main()
