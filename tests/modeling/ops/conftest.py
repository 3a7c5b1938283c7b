"""Kernel-vs-reference tests under Triton's CPU interpreter, reported case by case.

Triton picks its interpreter or its compiler when a `@triton.jit` function is defined, and the functions of its own
language library are defined when `triton` is first imported. In a whole-suite pytest process that happens while
collecting (transformers' Mamba-2 imports triton, and so does `import fpmamba_hf`), before anything here runs, so
the interpreter cannot be switched on in that process. The cases of the test modules marked `triton_interpreter`
therefore run in a child pytest started with TRITON_INTERPRET=1 (once per session, on the marked cases this
session selected, when the first marked module starts); each case here then reports the child's outcome of the
same case: pass, skip, or the child's failure text. So every case keeps its own id and result, and the interpreter
never reaches the rest of the suite. `test_triton_compile.py` is not marked: it compiles in a subprocess of its own.

In the child the tests run as written, with one torch thread (tiny shapes) and FPMAMBA_KERNELS emptied before every
test and restored after it (tests set it, directly in os.environ too, to pick the op backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
MARKER = "triton_interpreter"
RESULTS_ENV = "FPMAMBA_TEST_INTERPRETER_RESULTS"  # set in the child: where it writes the outcome of each case
IN_CHILD = bool(os.environ.get(RESULTS_ENV))

_results: dict[str, dict] | None = None  # parent: per node id, the child's outcome (None until the child ran)
_recorded: dict[str, dict] = {}  # child: per node id, its outcome


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}: runs under TRITON_INTERPRET=1 in a child pytest (see "
                                       "tests/modeling/ops/conftest.py)")


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter(request):
    """Parent: before the first marked module, runs the child pytest on every selected marked case. Child: one torch
    thread."""
    if request.node.get_closest_marker(MARKER) is None:
        yield
        return
    pytest.importorskip("triton")
    if IN_CHILD:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
        return
    global _results
    if _results is None:  # one child for every marked case this session selected (one start-up, not one per module)
        selected = [item.nodeid for item in request.session.items if item.get_closest_marker(MARKER) is not None]
        _results = _run_child(selected)
    yield


@pytest.fixture(autouse=True)
def _kernel_backend(monkeypatch):
    """Every test starts with FPMAMBA_KERNELS empty (the backend follows the device) and leaves it as it found it,
    also when it sets the variable directly in os.environ (monkeypatch restores the value it recorded)."""
    monkeypatch.setenv("FPMAMBA_KERNELS", "")


def _run_child(nodeids: list[str]) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        env = {k: v for k, v in os.environ.items() if k != "FPMAMBA_KERNELS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["TRITON_INTERPRET"] = "1"
        env[RESULTS_ENV] = str(out)
        # No plugin autoloading (hypothesis, anyio: about a second per child; these tests use none of them).
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodeids]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if not out.exists():
            crash = f"the interpreter child pytest reported nothing (exit {proc.returncode}):\n" \
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            return {nodeid: {"outcome": "failed", "text": crash, "summary": "the interpreter child pytest crashed"}
                    for nodeid in nodeids}
        return json.loads(out.read_text())


def pytest_pyfunc_call(pyfuncitem):
    """Parent: a marked case takes the outcome the child reported for it instead of running again."""
    if IN_CHILD or pyfuncitem.get_closest_marker(MARKER) is None:
        return None
    result = (_results or {}).get(pyfuncitem.nodeid)
    if result is None:
        pytest.fail(f"the interpreter child pytest did not report {pyfuncitem.nodeid}", pytrace=False)
    if result["outcome"] == "skipped":
        pytest.skip(result["text"])
    if result["outcome"] != "passed":
        pytest.fail(f"{result['summary']}\n\nin the child pytest under TRITON_INTERPRET=1:\n{result['text']}",
                    pytrace=False)
    return True


def pytest_runtest_logreport(report):
    """Child: record each case's outcome (the first phase that did not pass decides), for the parent."""
    if not IN_CHILD or report.nodeid in _recorded and _recorded[report.nodeid]["outcome"] != "passed":
        return
    if report.when == "call" or report.outcome != "passed":
        text = report.longreprtext
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            text = report.longrepr[2]
        crash = getattr(report.longrepr, "reprcrash", None)
        lines = text.strip().splitlines()
        summary = crash.message if crash is not None else (lines[-1] if lines else report.outcome)
        _recorded[report.nodeid] = {"outcome": report.outcome, "text": text, "summary": summary}
        Path(os.environ[RESULTS_ENV]).write_text(json.dumps(_recorded))
