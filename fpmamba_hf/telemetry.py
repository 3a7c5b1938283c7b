"""What a call reports besides its logits: fixed-point iterations and residuals, and the checks that nothing
non-finite or unconverged passes silently.

Every forward collects, without a host sync, per layer the iterations and the relative residual each row stopped
at, and one finiteness flag per stage of the stack (embeddings, each block, final norm, LM head). A plain forward
reads them back once at its end (`check_forward`); inside `generate()` the call's decode runner
(fpmamba_hf/decoding.py) instead appends them to the call's own `GenerationLog` (kept per call, so nested and
concurrent calls never mix), which is read back once when the call ends. Either way:
  - a non-finite value raises FloatingPointError naming the first stage that produced one (and any non-finite
    parameter, the usual cause);
  - in eval / generation, rows that stopped at the iteration cap above the tolerance give ONE warning per call
    naming the layers and how far they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fpmamba_core.precision import largest_magnitude
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Per-call fixed-point keywords of forward() and generate() (also read from generation_config).
FP_CALL_KEYS = ("fp_max_iter", "fp_tol", "fp_solve_chunk")


def check_call_keywords(kwargs: dict) -> None:
    """Refuse misspelled fixed-point keywords (e.g. `fp_maxiter=1`) instead of running with the defaults."""
    unknown = sorted(k for k in kwargs if k.startswith("fp_") and k not in FP_CALL_KEYS)
    if unknown:
        raise TypeError(f"unknown fixed-point keyword(s) {unknown}; the per-call ones are {list(FP_CALL_KEYS)}")


@dataclass
class StageFlags:
    """Finiteness of each stage's output in one forward (no host sync to build): per stage its largest magnitude, a
    0-dim tensor that is finite exactly when the output is; `stacked()` turns them into flags at read time, once."""

    names: list[str] = field(default_factory=list)
    magnitudes: list[torch.Tensor] = field(default_factory=list)

    def add(self, name: str, t: torch.Tensor) -> None:
        self.names.append(name)
        self.magnitudes.append(largest_magnitude(t))

    def stacked(self) -> torch.Tensor:
        """(stages,) bool: whether each stage's output was finite."""
        return torch.isfinite(torch.stack(self.magnitudes))


@dataclass
class GenerationLog:
    """Telemetry of one generate() call: one entry per forward (step), kept as the device tensors the forward made
    (the comparisons happen once, in `check_generation`). iterations, residual: (rows, layers); magnitudes:
    (stages,) the largest magnitude of each stage's output (finite exactly when the output is)."""

    iterations: list[torch.Tensor] = field(default_factory=list)
    residual: list[torch.Tensor] = field(default_factory=list)
    magnitudes: list[torch.Tensor] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)
    tol: float = float("nan")

    def record(self, iterations: torch.Tensor, residual: torch.Tensor, stage_names: list[str],
               magnitudes: torch.Tensor, tol: float) -> None:
        self.iterations.append(iterations)
        self.residual.append(residual)
        self.magnitudes.append(magnitudes)
        self.stage_names, self.tol = stage_names, tol


def non_finite_error(model: nn.Module, where: str) -> FloatingPointError:
    """The error for a non-finite value first seen at `where`, listing the model's non-finite parameters."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    cause = f"; non-finite parameters: {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}" if bad else ""
    return FloatingPointError(
        f"FP-Mamba produced non-finite values (NaN/inf); they first appeared in {where}{cause}. "
        "Check the weights, lower the learning rate, use fp32, or enable damping (fp_damping < 1)."
    )


def first_bad_stage(names: list[str], finite: list[bool]) -> str | None:
    return next((name for name, ok in zip(names, finite) if not ok), None)


def _warn_unconverged(counts: list[float], worst: list[float], total: int, unit: str, tol: float, what: str) -> None:
    layers = [i for i, n in enumerate(counts) if n > 0]
    if not layers:
        return
    detail = ", ".join(f"layer {i}: {int(counts[i])}/{total} {unit}, residual up to {worst[i]:.3g}" for i in layers)
    logger.warning(
        f"FP-Mamba {what}: the fixed point was not reached within the iteration cap (relative residual above "
        f"fp_tol={tol:g}) in {detail}. Those outputs are the last iterate; raise fp_max_iter "
        "(per call or config.fp_max_iter_eval) or fp_tol. `fp_residual` on the output holds every value."
    )


def check_forward(model: nn.Module, stages: StageFlags, residual: torch.Tensor, tol: float, warn: bool) -> None:
    """One host sync at the end of a forward: raise on a non-finite stage; warn (if `warn`) about layers with
    rows above the tolerance. residual: (batch, layers)."""
    over = residual >= tol
    stats = torch.cat([stages.stacked().float(), over.sum(0).float(), residual.amax(0).float()]).tolist()
    n_stages, n_layers = len(stages.names), residual.shape[1]
    bad = first_bad_stage(stages.names, [s > 0 for s in stats[:n_stages]])
    if bad is not None:
        raise non_finite_error(model, bad)
    if warn:
        counts = stats[n_stages:n_stages + n_layers]
        _warn_unconverged(counts, stats[n_stages + n_layers:], residual.shape[0], "rows", tol, "forward")


def check_generation(model: nn.Module, log: GenerationLog) -> None:
    """One host sync when a generate() call ends: the same checks as `check_forward`, over all its steps."""
    if not log.magnitudes:
        return
    finite = torch.isfinite(torch.stack(log.magnitudes))  # (steps, stages)
    steps_ok = finite.all(1)
    residual = torch.stack(log.residual)  # (steps, rows, layers)
    unconverged = residual >= log.tol
    stats = torch.cat([steps_ok.float(), finite.float().flatten(), unconverged.sum((0, 1)).float(),
                       residual.amax((0, 1)).float()]).tolist()
    n_steps, n_stages, n_layers = finite.shape[0], finite.shape[1], residual.shape[2]
    flat = stats[n_steps:n_steps + n_steps * n_stages]
    for step in range(n_steps):
        if not stats[step]:
            where = first_bad_stage(log.stage_names, [f > 0 for f in flat[step * n_stages:(step + 1) * n_stages]])
            raise non_finite_error(model, f"{where} at generation step {step}")
    counts = stats[n_steps + n_steps * n_stages:][:n_layers]
    worst = stats[n_steps + n_steps * n_stages + n_layers:]
    total = residual.shape[0] * residual.shape[1]
    _warn_unconverged(counts, worst, total, "token steps (rows x steps)", log.tol, "generate")
