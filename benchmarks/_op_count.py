"""Counting aten ops and host syncs with a TorchDispatchMode (exact counts, no timing).

A host sync is a call that copies a tensor value to Python (`aten._local_scalar_dense`, behind `.item()`, `int(t)`,
`bool(t)`; `aten.item` counted too in case it reaches the dispatcher). Ops whose output shape depends on tensor
values (nonzero, boolean-mask indexing, ...) are counted apart: on a GPU they sync as well.
Ops are attributed to "layers" while a hooked module (a decoder block) is running.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.item}
DATA_DEPENDENT_OPS = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive}


def _has_bool_index(args: tuple) -> bool:
    """aten.index / index_put with a boolean mask among the indices (a nonzero inside)."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class OpCounter(TorchDispatchMode):
    """Counts every aten op run under it: `counts[(scope, kind)]` with scope "all" / "layers" and kind "ops" /
    "syncs" / "data_dependent"; `by_name` per op name (all scopes)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.by_name: Counter[str] = Counter()
        self.in_layer = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        kinds = ["ops"]
        if packet in SYNC_OPS:
            kinds.append("syncs")
        if packet in DATA_DEPENDENT_OPS or (packet in (aten.index, aten.index_put, aten.index_put_)
                                            and _has_bool_index(args)):
            kinds.append("data_dependent")
        for kind in kinds:
            self.counts[("all", kind)] += 1
            if self.in_layer:
                self.counts[("layers", kind)] += 1
        self.by_name[str(packet)] += 1
        return func(*args, **(kwargs or {}))

    @contextmanager
    def scoped(self, layers: list[nn.Module]) -> Iterator["OpCounter"]:
        """Count under this mode, attributing ops run inside `layers` to the "layers" scope."""

        def enter(*_):
            self.in_layer += 1

        def leave(*_):
            self.in_layer -= 1

        handles = [h for m in layers for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            with self:
                yield self
        finally:
            for h in handles:
                h.remove()
