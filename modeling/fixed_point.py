"""The fixed-point solver: y* = f(y*) for a batch of sequences, each row stopping on its own.

Rule (docs/method.md, "The solver"), per row b, iteration k = 1, 2, ...:
    yhat = f(y^{k-1});  r_b = max_t ||yhat_t - y^{k-1}_t||_inf / (||yhat_t||_inf + eps)
    r_b < tol  ->  row b is done: y*_b = y^{k-1}_b and its output is f(y*_b) = yhat_b (no extra call)
    otherwise     y^k = delta_b yhat + (1 - delta_b) y^{k-1}; delta_b shrinks by `damping_decay` after
                  `damping_patience` iterations without a new best residual.
    With solver "anderson" the step mixes the last `anderson_m` evaluations instead (modeling/anderson.py);
    everything else (stopping rule, freezing, caps, damping schedule, telemetry, gradients) is the same.
    With solver "newton" (decoding's per-token solve only: one token per row, see `SolverSettings.per_token`) the
    step after the first NEWTON_AFTER is Newton's, y^k = y^{k-1} + delta_b (I - J_b)^{-1} (yhat - y^{k-1}) with
    J_b = df/dy (d x d) of row b at y^{k-1} (`newton_step`); the rest is again the same.
A done row is frozen: it is no longer evaluated, so its result never depends on the rest of the batch.
At the cap every remaining row stops the same way (y* = last iterate, output f(y*)). In training the whole
batch may stop once a fraction `train_quantile` of rows is done (iteration counts are heavy-tailed).
A non-finite value raises FloatingPointError naming the layer: no silent NaN.

Gradients (memory independent of the iteration count; the loop itself runs without autograd):
    "one_step": `backward_steps` applications of f from the detached y*, with autograd (the paper's practice);
    "implicit": one application with autograd, whose output gradient is replaced by the adjoint fixed point
                g = dL/dy + J^T g (J = df/dy at y*), solved with vector-Jacobian products of that application.
                If that solve does not converge within its cap (or turns non-finite), the backward falls back to
                the one-step gradient and warns (ImplicitGradientFallback): never a silently exploding gradient.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch

from .anderson import AndersonHistory
from .precision import all_finite

SOLVERS = ("picard", "anderson")  # the step of a solve (fp_solver)
DECODE_SOLVERS = ("picard", "newton")  # the step of decoding's per-token solve (fp_decode_solver)
# The damped Picard steps a Newton solve takes before its first Newton step (see `newton_step`).
NEWTON_AFTER = 2
RESIDUAL_EPS = 1e-6  # the eps of the relative residual's denominator


@dataclass
class MapOutput:
    """One application of an iteration map to the rows `rows` of a batch. yhat (rows, ...): the map's value;
    aux: per-row tensors (rows first) produced alongside it, e.g. the scan's final state; residual (rows,): the
    rows' relative residual when the map computes it itself (a fused kernel has yhat and y at hand), else None."""

    yhat: torch.Tensor
    aux: tuple[torch.Tensor, ...] = ()
    residual: torch.Tensor | None = None


class IterationMap(Protocol):
    """y -> f(y) on the rows `rows` (LongTensor) of the batch: a backbone's map for one layer call, built once per
    call from everything that does not depend on the iterate (docs/architecture.md). A map object may set
    `compile_friendly = False` to keep its evaluations out of torch.compile (modeling/compiled.py)."""

    def __call__(self, y: torch.Tensor, rows: torch.Tensor) -> MapOutput: ...


# Optional hook that makes all data-parallel ranks agree to continue: (local_continue: bool) -> bool.
ContinueSync = Callable[[bool], bool]


@dataclass
class SolverSettings:
    """Stopping rule, caps, damping and step of one solve (a layer derives it from its FixedPointSettings per call;
    the knobs have no defaults here, the model's config declares them). solver: the step, one of SOLVERS, or
    "newton" for a solve of one token per row (decoding's, through `per_token`); anderson_m: Anderson's memory;
    decode_solver: one of DECODE_SOLVERS, the step `per_token` gives decoding's per-token solve; min_damping: the
    floor of the damping schedule; eps: the relative residual's."""

    max_iter: int
    tol: float
    damping: float
    damping_decay: float
    damping_patience: int
    train_quantile: float
    solver: str
    anderson_m: int
    decode_solver: str
    min_damping: float = 1e-3
    eps: float = RESIDUAL_EPS
    # Raise at once on a non-finite iterate where no stopping decision needs a host sync (a solve capped at one
    # evaluation, a constant map). False when the caller checks its outputs' finiteness itself (the model's stage
    # flags, read once per forward or generate call): such a solve then takes no host sync at all. An iterating
    # solve always checks, in the sync its stopping decision takes anyway.
    raise_non_finite: bool = True

    def __post_init__(self) -> None:
        if self.solver not in (*SOLVERS, "newton"):
            raise ValueError(f"solver must be one of {(*SOLVERS, 'newton')}, got {self.solver!r}")
        if self.decode_solver not in DECODE_SOLVERS:
            raise ValueError(f"decode_solver must be one of {DECODE_SOLVERS}, got {self.decode_solver!r}")
        if self.solver == "anderson" and (not isinstance(self.anderson_m, int) or self.anderson_m < 1):
            raise ValueError(f"anderson_m must be a positive integer, got {self.anderson_m!r}")

    def per_token(self) -> SolverSettings:
        """The settings of decoding's per-token solve: Newton's step where decode_solver is "newton", else these
        (the step of every other solve, fp_solver's)."""
        return replace(self, solver="newton") if self.decode_solver == "newton" else self


@dataclass
class DecodeResult:
    """One decode token of every row (a backbone's `decode_token`): y_out = f(y*) (b, d), y* (b, d), the new recurrent
    state (fp32, the backbone's layout), and the inner solve's iterations (b,) and relative residual (b,)."""

    y_out: torch.Tensor
    y_star: torch.Tensor
    state: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor


@dataclass
class SolveResult:
    """Outcome of a solve. y_star: the fixed point found; y_out = f(y_star); aux: f's aux at y_star;
    iterations: (batch,) evaluations of f per row; residual: (batch,) the last relative residual per row."""

    y_star: torch.Tensor
    y_out: torch.Tensor
    aux: tuple[torch.Tensor, ...]
    iterations: torch.Tensor
    residual: torch.Tensor


def relative_residual(new: torch.Tensor, old: torch.Tensor, eps: float) -> torch.Tensor:
    """max over tokens of ||new_t - old_t||_inf / (||new_t||_inf + eps). new, old: (b, [T,] d) -> (b,)."""
    diff = (new - old).abs().amax(-1)
    scale = new.abs().amax(-1) + eps
    return (diff / scale).reshape(new.shape[0], -1).amax(-1)


def evaluate(f: IterationMap, y: torch.Tensor, rows: torch.Tensor, eps: float) -> MapOutput:
    """f on the rows `rows`, with the residual (rows,) filled in: the map's own, else `relative_residual(yhat, y)`."""
    out = f(y, rows)
    if out.residual is None:
        out.residual = relative_residual(out.yhat, y, eps) if rows.numel() else out.yhat.new_zeros(0)
    return out


def check_finite(t: torch.Tensor, layer_idx: int | None, iteration: int) -> None:
    if not bool(all_finite(t)):
        where = f"layer {layer_idx}" if layer_idx is not None else "a layer"
        raise FloatingPointError(
            f"FP-Mamba fixed-point iteration diverged in {where} at iteration {iteration}: non-finite values "
            "(NaN/inf). Lower the learning rate, use fp32, or enable damping (fp_damping < 1)."
        )


@torch.no_grad()
def solve(
    f: IterationMap,
    y0: torch.Tensor,
    settings: SolverSettings,
    training: bool = False,
    layer_idx: int | None = None,
    sync: ContinueSync | None = None,
) -> SolveResult:
    """Iterate y <- f(y) from y0 (batch, [T,] d) under the stopping rule of the module docstring. The iteration
    counts are evaluations of f; with solver "newton" an iteration also costs f's Jacobian at the iterate
    (`newton_step`). Solver "newton" is refused for more than one token per row (ValueError)."""
    tokens = math.prod(y0.shape[1:-1])
    if settings.solver == "newton" and tokens > 1:
        raise ValueError(
            f"fixed_point.solve: the Newton step (fp_decode_solver='newton') is for decoding's per-token solve, one "
            f"token per row, but this solve has {tokens} tokens per row: its Jacobian would be (T d) x (T d). A "
            f"whole-sequence solve takes fp_solver's step, one of {SOLVERS}."
        )
    batch = y0.shape[0]
    device = y0.device
    if settings.max_iter == 1 and sync is None:
        # One evaluation and no decision to take: the cap's rule (y* = y0, output f(y0)) without the row bookkeeping.
        out = evaluate(f, y0, torch.arange(batch, device=device), settings.eps)
        if settings.raise_non_finite:
            check_finite(out.residual, layer_idx, 1)
        iterations = torch.ones(batch, dtype=torch.long, device=device)
        return SolveResult(y0.clone(), out.yhat, tuple(out.aux), iterations, out.residual)
    y = y0.clone()
    y_star = y0.clone()
    y_out = torch.empty_like(y0)
    aux_out: list[torch.Tensor] | None = None
    iterations = torch.zeros(batch, dtype=torch.long, device=device)
    residual = torch.full((batch,), float("inf"), device=device, dtype=y0.dtype)
    delta = torch.full((batch,), float(settings.damping), device=device, dtype=y0.dtype)
    best = torch.full((batch,), float("inf"), device=device, dtype=y0.dtype)
    stall = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)
    anderson = AndersonHistory(y0, settings.anderson_m) if settings.solver == "anderson" else None
    n_done = 0
    k = 0
    while True:
        k += 1
        y_act = y if active.numel() == batch else y[active]  # no gather while every row iterates
        # With `sync`, a rank whose rows are all done still evaluates f (on no rows) so that every rank runs
        # the same number of iterations, and so issues the same collectives.
        out = evaluate(f, y_act, active, settings.eps)
        yhat, aux, r = out.yhat, out.aux, out.residual
        if aux_out is None:
            aux_out = [torch.empty((batch, *a.shape[1:]), dtype=a.dtype, device=device) for a in aux]
        if active.numel() > 0:
            iterations[active] = k
            residual[active] = r
        done = r < settings.tol
        # The one host sync of an iteration: the rows done, or -1 when a row turned non-finite (a non-finite yhat
        # makes its row's residual NaN, so checking (rows,) values is checking yhat).
        n_new = int(torch.where(torch.isfinite(r).all(), done.sum(), -1))
        if n_new < 0:
            check_finite(r, layer_idx, k)
        go_on = k < settings.max_iter and n_done + n_new < batch
        if training and n_done + n_new >= settings.train_quantile * batch:
            go_on = False
        if sync is not None:
            go_on = sync(go_on)
        if not go_on:
            done = torch.ones_like(done)
            n_new = done.numel()
        if n_new:
            rows = active[done]
            y_star[rows] = y_act[done]
            y_out[rows] = yhat[done]
            for dst, src in zip(aux_out, aux):
                dst[rows] = src[done]
            n_done += n_new
            keep = ~done
            active = active[keep]
            r, yhat, y_act = r[keep], yhat[keep], y_act[keep]
        if not go_on:
            break
        if active.numel() == 0:
            continue
        # Damping with patience on the rows still running.
        d = delta[active]
        improved = r < best[active]
        best[active] = torch.where(improved, r, best[active])
        st = torch.where(improved, torch.zeros_like(stall[active]), stall[active] + 1)
        shrink = st >= settings.damping_patience
        restart = torch.zeros_like(shrink)
        if anderson is not None:
            # A stalled Anderson row has failed (it can stagnate, or head for another fixed point, where Picard
            # iteration converges): it restarts from y0 as a Picard row, its damping schedule from the start, and
            # so ends where Picard iteration does.
            restart = shrink & anderson.mixing[active]
            shrink = shrink & ~restart
            best[active] = torch.where(restart, torch.inf, best[active])
            d = torch.where(restart, float(settings.damping), d)
        delta[active] = torch.where(shrink, (d * settings.damping_decay).clamp_min(settings.min_damping), d)
        stall[active] = torch.where(shrink | restart, torch.zeros_like(st), st)
        dd = d.view(-1, *([1] * (yhat.dim() - 1)))
        stepped = dd * yhat + (1 - dd) * y_act
        if anderson is not None:
            stepped = anderson.step(active, y_act, yhat, d, stepped)
            anderson.stop(active, restart)
            start = y0 if active.numel() == batch else y0[active]
            stepped = torch.where(restart.view(-1, *([1] * (yhat.dim() - 1))), start, stepped)
        elif settings.solver == "newton" and k > NEWTON_AFTER:
            stepped = newton_step(f, active, y_act, yhat, d, stepped)
        if active.numel() == batch:
            y = stepped
        else:
            y[active] = stepped
    assert aux_out is not None
    return SolveResult(y_star, y_out, tuple(aux_out), iterations, residual)


def newton_step(
    f: IterationMap,
    rows: torch.Tensor,
    y: torch.Tensor,
    yhat: torch.Tensor,
    damping: torch.Tensor,
    picard: torch.Tensor,
) -> torch.Tensor:
    """Newton's step on f(y) - y = 0 for the rows `rows` of a one-token map, at their iterates y (rows, [1,] d) with
    yhat = f(y): y + damping_b (I - J_b)^{-1} (yhat_b - y_b), J_b = df_b/dy_b (d x d), per row. The Jacobians are
    taken in forward mode, d tangents in one vectorised evaluation of f (no autograd graph, so it also runs under
    no_grad and inference_mode). A row whose linear solve fails (a singular I - J_b, or a non-finite step) takes
    its damped Picard step `picard` instead. damping: (rows,).

    `solve` takes this step after NEWTON_AFTER damped Picard steps. A per-token map can have more than one fixed
    point, and Newton's method, blind to whether a fixed point attracts, converges to the one whose Newton basin it
    starts in. Picard's first steps from the zero start bring the iterate near the fixed point that Picard iteration,
    and so the whole-sequence solve, selects. On the 4862 per-token problems of a trained S3 model's decoding
    (reflection scale 2, Householder mixer), solved to 1e-6, Newton after one Picard step reached another fixed
    point than Picard's for 11 rows (enough to cost accuracy), after two Picard steps for 1, each row in at most 10
    evaluations."""
    n = y.shape[0]
    flat = y.reshape(n, -1)
    d = flat.shape[1]

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda v: f(v.reshape(y.shape), rows).yhat.reshape(n, d), (flat,), (tangent,))[1]

    eye = torch.eye(d, dtype=flat.dtype, device=flat.device)
    # Tangent j is e_j in every row; its pushforward is column j of every row's Jacobian, as the map reads each row
    # alone. (d, n, d) -> (n, d, d): [b, i, j] = d f_b,i / d y_b,j.
    jac = torch.func.vmap(column)(eye[:, None, :].expand(d, n, d)).permute(1, 2, 0)
    delta, info = torch.linalg.solve_ex(eye - jac, (yhat - y).reshape(n, d))
    ok = (info == 0) & torch.isfinite(delta).all(-1)
    newton = flat + damping[:, None] * delta
    return torch.where(ok[:, None], newton, picard.reshape(n, d)).reshape(y.shape)


@torch.no_grad()
def solve_constant(
    f: IterationMap, y0: torch.Tensor, settings: SolverSettings, layer_idx: int | None = None
) -> SolveResult:
    """The solve of a map that does not depend on its argument (the caller knows it from the parameters, e.g. Q = I
    and zero y-projections): its value at y0 is the fixed point, found in one evaluation with residual 0, where
    `solve` would spend a second evaluation to see the residual vanish. Of `settings` only raise_non_finite applies."""
    batch = y0.shape[0]
    out = f(y0, torch.arange(batch, device=y0.device))
    if settings.raise_non_finite:
        check_finite(out.yhat, layer_idx, 1)
    iterations = torch.ones(batch, dtype=torch.long, device=y0.device)
    return SolveResult(out.yhat, out.yhat, tuple(out.aux), iterations, y0.new_zeros(batch))


def one_step_output(f: IterationMap, y_star: torch.Tensor, steps: int) -> MapOutput:
    """`steps` applications of f from the detached fixed point, with autograd."""
    rows = torch.arange(y_star.shape[0], device=y_star.device)
    out = MapOutput(y_star.detach())
    for _ in range(steps):
        out = f(out.yhat, rows)
    return out


class ImplicitGradientFallback(RuntimeWarning):
    """The implicit gradient's adjoint solve did not converge; that backward used the one-step gradient."""


def implicit_output(
    f: IterationMap, y_star: torch.Tensor, max_iter: int, tol: float, layer_idx: int | None = None
) -> MapOutput:
    """One application of f with autograd whose incoming gradient is mapped to the adjoint fixed point, solved to the
    relative residual `tol` within `max_iter` vector-Jacobian products."""
    rows = torch.arange(y_star.shape[0], device=y_star.device)
    y_in = y_star.detach().requires_grad_(True)
    out = f(y_in, rows)
    y_out = out.yhat
    if not y_out.requires_grad:
        return out

    solving = False

    def adjoint(grad: torch.Tensor) -> torch.Tensor:
        nonlocal solving
        if solving:  # the vector-Jacobian products below flow through y_out too: leave those alone
            return grad
        solving = True
        try:
            g, r = grad, float("inf")
            for _ in range(max_iter):
                (jt_g,) = torch.autograd.grad(y_out, y_in, g, retain_graph=True)
                g_new = grad + jt_g
                r = float(relative_residual(g_new, g, RESIDUAL_EPS).max())  # NaN when g_new is not finite
                if not math.isfinite(r):
                    break
                g = g_new
                if r < tol:
                    return g
        finally:
            solving = False
        # Not converged (J^T is not contractive at y*, e.g. a non-contractive DPLR mixer at reflection scale 2): the
        # partial sums grow without bound, so return the one-step gradient (the incoming one) instead, and say so.
        where = f"layer {layer_idx}" if layer_idx is not None else "a layer"
        warnings.warn(
            f"FP-Mamba implicit gradient: the adjoint fixed point of {where} did not converge within "
            f"fp_backward_max_iter={max_iter} (relative residual {r:.3g} > fp_backward_tol={tol:g}); "
            "this backward uses the one-step gradient instead.",
            ImplicitGradientFallback,
            stacklevel=2,
        )
        return grad

    y_out.register_hook(adjoint)
    return out
