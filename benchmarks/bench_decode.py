"""Decode ms/token of a 4-layer FP-Mamba (d_model 768, 24 heads x 64, d_state 128, householder r=2) with
adaptive fixed-point iterations, at batch 1 and 32, Triton vs reference decode step.

    python benchmarks/bench_decode.py [--new-tokens 64] [--dtype bf16]

ms/token = (time of generate() with N+1 new tokens - time with 1 new token) / N (greedy, prompt of 16 tokens,
so the prefill cost cancels). Uses fpmamba_hf.FPMambaForCausalLM; falls back to a single layer's decode step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import report  # noqa: E402


def wall_ms(fn, reps: int = 3) -> float:
    """Median wall time of fn (ms) after one warm-up, synchronised (generate() syncs on its own anyway)."""
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--fp-tol", type=float, default=1e-2)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

    torch.manual_seed(0)
    cfg = FPMambaConfig(vocab_size=50288, hidden_size=768, num_hidden_layers=4, state_size=128, head_dim=64,
                        mixer_type="householder", mixer_rank=2)
    model = FPMambaForCausalLM(cfg).cuda().to(dtype).eval()
    rows = []
    for b in args.batches:
        ids = torch.randint(0, 50288, (b, 16), device="cuda")
        for backend in ("triton", "reference"):
            os.environ["FPMAMBA_KERNELS"] = backend

            def gen(n: int):
                return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      fp_tol=args.fp_tol, return_dict_in_generate=True)

            with torch.no_grad():
                t1 = wall_ms(lambda: gen(1))
                tn = wall_ms(lambda: gen(args.new_tokens + 1))
                out = gen(args.new_tokens + 1)
            it = getattr(out, "fp_iterations", None)
            mean_it = float(it[:, 1:].float().mean()) if it is not None else float("nan")
            rows.append({"batch": b, "backend": backend, "ms_per_token": (tn - t1) / args.new_tokens,
                         "mean_iterations_per_layer": mean_it})
    os.environ.pop("FPMAMBA_KERNELS", None)
    report(f"Decode, 4-layer FP-Mamba (d_model 768, householder r=2, {args.dtype}), fp_tol {args.fp_tol}, "
           f"{args.new_tokens} tokens after a 16-token prompt", rows,
           ["batch", "backend", "ms_per_token", "mean_iterations_per_layer"])


if __name__ == "__main__":
    main()
