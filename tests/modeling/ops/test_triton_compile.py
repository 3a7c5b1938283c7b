"""Every Triton kernel compiles for the H100/H200 architecture (sm_90) with the installed Triton, no GPU needed:
`benchmarks/compile_check.py` calls the kernels' wrappers at the reference shape (bf16 and fp32) with launches
replaced by ahead-of-time compilation. Catches what the interpreter accepts but the compiler rejects (types,
layouts, shared memory over the architecture's budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KERNELS = {"_fwd_kernel", "_bwd_kernel", "_diag_bwd_kernel", "_diag_fwd_kernel", "_mix_kernel", "_norm_kernel",
           "_prep_kernel", "_selective_bwd_kernel", "_selective_fwd_kernel", "_solve_kernel", "_update_kernel"}


def test_every_kernel_compiles_for_sm90() -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FPMAMBA_KERNELS")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--arch", "90"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"compile check failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["kernels"]) == KERNELS, summary
