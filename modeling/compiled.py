"""torch.compile where it pays (config.fp_compile), with an eager fallback.

The solver's evaluations run without autograd, many times per call, and on the PyTorch path each is a chain of
small elementwise ops around a few matmuls and the scan: what inductor fuses. A map class is compiled once per
process (fullgraph: the maps have no graph break, tests/modeling/test_compiled_map.py); new shapes (fewer rows
still iterating, another length) recompile with dynamic sizes. The finish (with autograd) stays eager. The
transformers model also compiles generate()'s per-token step with the same helper (fpmamba_hf/modeling_fpmamba.py).
Where compile is unavailable or fails (no C++ compiler for inductor, an unsupported op, a graph break in a
fullgraph step), one `CompileFallbackWarning` names what failed and the error, and it runs eagerly from then on.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any, Callable

import torch

from .fixed_point import IterationMap, MapOutput


class CompileFallbackWarning(RuntimeWarning):
    """torch.compile of a function failed; it runs eagerly from now on."""


class CompiledOrEager:
    """`fn` through `torch.compile(fn, **options)`, compiled at its first call; once that fails (at compile or at
    run time), one warning naming `what`, and `fn` itself from then on (an error of `fn` itself then raises from the
    eager call)."""

    def __init__(self, fn: Callable, what: str, **options: Any) -> None:
        self.fn, self.what, self.options = fn, what, options
        self.compiled: Callable | None = None
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.fn(*args, **kwargs)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, **self.options)
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 -- any compile failure: the eager function computes the same
            self.failed = True
            first_line = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"fp_compile: torch.compile of {self.what} failed ({type(err).__name__}: {first_line}); "
                          "it runs eagerly from now on.", CompileFallbackWarning, stacklevel=2)
            return self.fn(*args, **kwargs)


_lock = threading.Lock()
_map_calls: dict[type, CompiledOrEager] = {}


def compiled_map(f: IterationMap) -> IterationMap:
    """f with its evaluations compiled (one compiled `__call__` per map class), or f itself where it must stay eager:
    a plain function (not a map object), or a map that says `compile_friendly = False` (e.g. one running the fused
    Triton kernels)."""
    cls = type(f)
    if not inspect.isfunction(getattr(cls, "__call__", None)) or not getattr(f, "compile_friendly", True):
        return f
    with _lock:
        call = _map_calls.setdefault(cls, CompiledOrEager(cls.__call__, cls.__name__, fullgraph=True))
    if call.failed:
        return f

    def evaluate(y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        return call(f, y, rows)

    return evaluate
