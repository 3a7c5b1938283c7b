"""torch.compile of the iteration maps (config.fp_compile).

The solver's evaluations run without autograd, many times per call, and on the PyTorch path each is a chain of
small elementwise ops around a few matmuls and the scan: what inductor fuses. A map class is compiled once per
process (fullgraph: the maps have no graph break, tests/modeling/test_compiled_map.py); new shapes (fewer rows
still iterating, another length) recompile with dynamic sizes. The finish (with autograd) and the decode step stay
eager. Where compile is unavailable or fails (no C++ compiler for inductor, an unsupported op), one
`CompileFallbackWarning` names the map and the error, and that map class runs eagerly from then on.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Callable

import torch

from .fixed_point import IterationMap, MapOutput


class CompileFallbackWarning(RuntimeWarning):
    """torch.compile of an iteration map failed; that map runs eagerly from now on."""


_lock = threading.Lock()
_compiled: dict[type, Callable] = {}
_failed: set[type] = set()


def _compiled_call(cls: type) -> Callable:
    with _lock:
        if cls not in _compiled:
            _compiled[cls] = torch.compile(cls.__call__, fullgraph=True)
        return _compiled[cls]


def compiled_map(f: IterationMap) -> IterationMap:
    """f with its evaluations compiled, or f itself where it must stay eager (a map that says
    `compile_friendly = False`, e.g. one running the fused Triton kernels) or its class failed to compile before."""
    cls = type(f)
    if not inspect.isfunction(getattr(cls, "__call__", None)) or not getattr(f, "compile_friendly", True) \
            or cls in _failed:
        return f  # a plain function (not a map object), a map that stays eager, or a class that failed before

    def call(y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        if cls in _failed:
            return f(y, rows)
        try:
            return _compiled_call(cls)(f, y, rows)
        except Exception as err:  # noqa: BLE001 -- any compile failure: the eager map is the same function
            _failed.add(cls)
            warnings.warn(f"fp_compile: torch.compile of {cls.__name__} failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); it runs eagerly from now on.",
                          CompileFallbackWarning, stacklevel=2)
            return f(y, rows)  # an error of the map itself raises here again

    return call
