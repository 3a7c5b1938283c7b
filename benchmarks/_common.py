"""Shared helpers of the benchmark scripts: timing, device description, JSON + markdown output."""

from __future__ import annotations

import json
import platform
import sys
from typing import Any, Callable

import torch


def median_ms(fn: Callable[[], Any], warmup_ms: int = 50, rep_ms: int = 300) -> float:
    """Median time of fn in milliseconds, CUDA events through triton.testing.do_bench."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def peak_mib(fn: Callable[[], Any]) -> float:
    """Peak CUDA memory allocated during fn (MiB), measured from a clean reset."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def environment() -> dict[str, str]:
    """Device and versions of this run."""
    import triton

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        env["fla-core"] = version("fla-core")
    except Exception:
        pass
    return env


def report(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as one JSON line and as a markdown table."""
    print(json.dumps({"benchmark": title, "env": environment(), "rows": rows}))
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = [f"{r.get(c):.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        print("| " + " | ".join(cells) + " |")
    print()
    sys.stdout.flush()
