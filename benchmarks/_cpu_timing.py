"""Interleaved wall-clock timing on the CPU: the compared functions alternate within every repetition, so load
from other processes hits them alike; medians per function."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def interleaved_ms(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median milliseconds of each function over `reps` rounds; each round runs every function once, in an order
    that reverses from round to round (no function always runs first, after the same neighbour)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(reps):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
