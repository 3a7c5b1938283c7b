"""Data-parallel agreement on the fixed-point loop.

Each rank stops its solve on its own data, so ranks may run different numbers of iterations. That is harmless for
DDP (the loop runs without autograd and without collectives) but not for sharded training: if parameters used inside
the loop were gathered per call (FSDP units finer than one block), ranks would issue different numbers of
all-gathers and deadlock. With the agreement every rank runs the same number of iterations: after each one, ranks
all-reduce MAX of their "not yet done" flag, and a rank that is done keeps evaluating f on no rows
(`fpmamba_core.fixed_point.solve`). Cost: one all-reduce of one integer per iteration and layer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from fpmamba_core.fixed_point import ContinueSync


def distributed_world() -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def continue_sync(device: torch.device, group: dist.ProcessGroup | None = None) -> ContinueSync:
    """A ContinueSync for `solve`: continue while any rank of `group` wants to. `device` selects the backend's
    tensor device (CUDA for NCCL, CPU for gloo): pass the device of the layer's activations."""

    def agree(local_continue: bool) -> bool:
        flag = torch.tensor([int(local_continue)], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    return agree


def training_sync(enabled: bool, training: bool, device: torch.device) -> ContinueSync | None:
    """The sync the model wires into its layers: on when `enabled` (config.fp_sync_ranks), the model is training
    and a multi-rank process group exists; None otherwise."""
    if enabled and training and distributed_world():
        return continue_sync(device)
    return None
