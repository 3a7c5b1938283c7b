"""Activation checkpointing of a fixed-point layer: the recompute replays the forward's fixed point.

Under activation checkpointing the backward pass runs the layer's forward a second time. Solving again there would
be wrong in general: the stopping rule is data dependent, so the recompute may stop after a different number of
iterations (non-deterministic kernels, a tolerance met on one side of the threshold only, ranks that agree on a
count through a collective) and the gradient would belong to another y* than the one the forward used. It would also
cost the whole loop again and, when ranks synchronise the loop, issue collectives in the middle of the backward.

So the first forward records y* (detached, with its telemetry) in a `FixedPointReplay` that the checkpoint hands to
the recompute unchanged (it is a keyword argument bound once), and the recompute only applies the differentiable
part f(y*) to the recorded point: exactly the forward's iterations, O(1) in their number, no collective.
Cost: y* (batch, T, d_inner) is kept per checkpointed layer until its backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FixedPointReplay:
    """Slot for one layer's solve inside one checkpointed forward. Empty on the first forward; filled by it.

    y_star: (batch, T, d_inner) the fixed point, detached; iterations, residual: (batch,) its telemetry.
    """

    y_star: torch.Tensor | None = None
    iterations: torch.Tensor | None = None
    residual: torch.Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.y_star is not None

    def record(self, y_star: torch.Tensor, iterations: torch.Tensor, residual: torch.Tensor) -> None:
        if self.filled:
            raise RuntimeError("FixedPointReplay already holds a fixed point: use one replay per layer and forward")
        self.y_star, self.iterations, self.residual = y_star.detach(), iterations, residual
