"""Mamba2Layer layer timings and training memory (d_model 768, 24 heads x 64, d_state 128, householder r=2, bf16).

    python benchmarks/bench_layer.py [--lengths 512 2048 8192] [--batch 8] [--fp32-matmul highest|high]

Per backend (triton, reference): forward (eval, no grad) at 1 / 4 / 16 fixed-point iterations (tolerance 1e-12,
so every iteration runs), the cost of one whole iteration derived as (t16 - t1) / 15, and one training step
(forward + backward, fp_backward one_step) at 1 and 16 iterations with its peak CUDA memory.
The layer feeds the scan fp32 tensors, so the kernels' dot precision follows torch.set_float32_matmul_precision.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fpmamba_core.backbones import Mamba2Layer  # noqa: E402

from benchmarks._common import median_ms, peak_mib, report  # noqa: E402
from fpmamba_hf.configuration_fpmamba import FPMambaConfig  # noqa: E402
from fpmamba_hf.core_settings import fixed_point_settings, layer_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fp32-matmul", default="high", choices=["highest", "high"])
    ap.add_argument("--reference-max-len", type=int, default=2048)
    ap.add_argument("--backends", nargs="+", default=["triton", "reference"])
    args = ap.parse_args()
    torch.set_float32_matmul_precision(args.fp32_matmul)
    torch.manual_seed(0)
    cfg = FPMambaConfig(hidden_size=768, state_size=128, head_dim=64, expand=2, n_groups=1,
                             mixer_type="householder", mixer_rank=2, fp_tol=1e-12, fp_train_quantile=1.0)
    layer = Mamba2Layer(layer_settings(cfg), fixed_point_settings(cfg), 0).cuda().to(torch.bfloat16)
    rows = []
    for T in args.lengths:
        hs = torch.randn(args.batch, T, 768, device="cuda", dtype=torch.bfloat16)
        for backend in args.backends:
            if backend == "reference" and T > args.reference_max_len:
                continue
            os.environ["FPMAMBA_KERNELS"] = backend
            row = {"T": T, "backend": backend}
            layer.eval()
            with torch.no_grad():
                for k in (1, 4, 16):
                    row[f"fwd_{k}it_ms"] = median_ms(lambda: layer(hs, fp_max_iter=k, fp_tol=1e-12))
            row["per_iter_ms"] = (row["fwd_16it_ms"] - row["fwd_1it_ms"]) / 15
            layer.train()
            for k in (1, 16):
                def step():
                    out = layer(hs, fp_max_iter=k, fp_tol=1e-12).out
                    out.float().square().mean().backward()
                    layer.zero_grad(set_to_none=True)

                row[f"train_{k}it_ms"] = median_ms(step, warmup_ms=20, rep_ms=100)
                row[f"train_{k}it_peak_MiB"] = peak_mib(step)
            rows.append(row)
            print(row, flush=True)
            torch.cuda.empty_cache()
    os.environ.pop("FPMAMBA_KERNELS", None)
    report(f"Mamba2Layer layer, batch {args.batch}, d_model 768, householder r=2, bf16 weights, "
           f"fp32 matmul precision '{args.fp32_matmul}'", rows,
           ["T", "backend", "fwd_1it_ms", "fwd_4it_ms", "fwd_16it_ms", "per_iter_ms", "train_1it_ms",
            "train_16it_ms", "train_1it_peak_MiB", "train_16it_peak_MiB"])


if __name__ == "__main__":
    main()
