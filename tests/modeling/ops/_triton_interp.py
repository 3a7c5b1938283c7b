"""Run a snippet in a fresh Python under TRITON_INTERPRET=1 (Triton reads the variable when it and a kernel module are
imported). Kept only for tests/modeling/test_anderson.py: the tests of this folder run case by case through
conftest.py instead. Delete it with `_triton_fused_cases.py` once that test is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_interpreted(code: str, timeout: int = 600) -> str:
    """Executes `code` with the repo on sys.path and TRITON_INTERPRET=1; fails the test with its output."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", FPMAMBA_KERNELS="", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"interpreted check failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
