"""FixedPointLayer: the backbone-agnostic half of an FP-RNN layer (docs/architecture.md, docs/method.md).

A layer call computes y* = f(y*) for the whole input, where f is the backbone's iteration map, then out = g(f(y*)).
This class owns everything that is the same for every backbone:
  * the solver settings of the call (`solver`'s caps and tolerance, per-call overrides, train vs eval cap);
  * the solve (modeling/fixed_point.py), or its replay under activation checkpointing;
  * the finish: f(y*) differentiable as `solver.backward` says (one-step or implicit gradient);
  * the per-token decode contract: one token with a state and no autograd is solved by the backbone's decode step;
  * the telemetry every call returns (iterations and residual per row).
A backbone subclasses it and implements the interface below (`prelude`, `iteration_map`, `decode_token`, `output`,
`next_state`, `initial_values`, ...); its parameters live on the subclass, so their names are the source model's.
The base reads a backbone's modules only through that interface (`channel_mixer`, `y_projections`,
`output_projection`): it names no attribute of theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
import torch.nn as nn

from .checkpointing import FixedPointReplay
from .compiled import compiled_map
from .fixed_point import (
    ContinueSync,
    DecodeResult,
    IterationMap,
    MapOutput,
    SolveResult,
    SolverSettings,
    check_finite,
    implicit_output,
    one_step_output,
    solve,
    solve_constant,
)
from .jacobian_penalty import jacobian_penalty
from .kernels import backend_for
from .mixers import ChannelMixer, is_plain_linear
from .precision import acc
from .settings import FP_BACKWARDS, FixedPointSettings, LayerSettings, check_call_budget

__all__ = ["FP_BACKWARDS", "ChunkedSolve", "FixedPointLayer", "LayerOutput"]


def _load_former_mixer_names(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """A state dict written before the channel mixer was named `channel_mixer` holds it as `mixer.*` (what
    transformers' save_pretrained still writes: fpmamba_hf maps the names back on save): load those keys into it."""
    former = prefix + "mixer."
    for key in [k for k in state_dict if k.startswith(former)]:
        state_dict[prefix + "channel_mixer." + key[len(former):]] = state_dict.pop(key)


@dataclass
class LayerOutput:
    """out: (b, T, hidden); state: the backbone's state after the call (if asked for); iterations, residual: (b,);
    jacobian_penalty: (b,) the Jacobian penalty at y* (`jacobian_penalty`), in a training forward with autograd and
    solver.jacobian_reg > 0 only, else None."""

    out: torch.Tensor
    state: Any
    iterations: torch.Tensor
    residual: torch.Tensor
    jacobian_penalty: torch.Tensor | None = None


@dataclass
class ChunkedSolve:
    """A chunk-by-chunk solve of one call (`FixedPointLayer.solve_in_chunks`). y_star (b, T, d) or out (b, T, hidden):
    the fixed point, or the layer's output where the chunks produced it; state: the state after the last chunk;
    iterations (b,): map evaluations per token, rounded up (the chunks' iterations weighted by their lengths: what a
    whole-sequence solve's count means, its cost per token); residual (b,): the largest chunk residual, so a row
    stopped at a chunk's cap above the tolerance is reported as by a whole-sequence solve."""

    y_star: torch.Tensor | None
    out: torch.Tensor | None
    state: Any
    iterations: torch.Tensor
    residual: torch.Tensor


class FixedPointLayer(nn.Module):
    """One FP-RNN layer. forward(hidden_states (b, T, hidden)) -> LayerOutput. Abstract: see the module docstring.

    settings: the layer's shape and switches (fixed once built); solver: the solver knobs, read at every call, so a
    model that replaces `layer.solver` (e.g. after an edit of its config's fp_* fields) changes the next call.
    A backbone sets `channel_mixer`, its Q_t (a ChannelMixer; kind "none" where it has no mixing).
    """

    channel_mixer: ChannelMixer

    def __init__(self, settings: LayerSettings, solver: FixedPointSettings, layer_idx: int | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.solver = solver
        self.layer_idx = layer_idx
        self.register_load_state_dict_pre_hook(_load_former_mixer_names)

    # ------------------------------------------------------------------------------------- backbone interface
    def prelude(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, state: Any) -> Any:
        """Everything of the call that does not depend on the iterate (projections of x, conv, decays, ...).
        hidden_states (b, T, hidden); mask (b, T) bool (True = real token) or None; state: the previous call's."""
        raise NotImplementedError

    def initial_iterate(self, prelude: Any) -> torch.Tensor:
        """y^0 (b, T, d) fp32 of the solve."""
        raise NotImplementedError

    def iteration_map(self, prelude: Any, settings: SolverSettings) -> IterationMap:
        """The map f of this call, an object: f(y, rows) -> MapOutput(yhat, aux)."""
        raise NotImplementedError

    def map_reads_iterate(self) -> bool:
        """Whether f can depend on the iterate with the current parameters. False (e.g. Q = I and the y-projections at
        zero: a converted source model) lets the layer take f's first evaluation as the fixed point."""
        raise NotImplementedError

    def y_projections(self) -> Sequence[nn.Module | None]:
        """The linear projections through which f reads the iterate besides the mixer (None: absent); none by
        default."""
        return ()

    def iterate_gradients_wanted(self) -> bool:
        """Whether autograd must see f read the iterate: a parameter of the mixer or of the y-projections requires a
        gradient. When none does and f cannot read y (`map_reads_iterate` False: a converted source model fine-tuned
        with those parts frozen, e.g. under LoRA adapters elsewhere), a training call is one evaluation with
        autograd, the source model's own cost."""
        modules = [self.channel_mixer, *(m for m in self.y_projections() if m is not None)]
        return any(p.requires_grad for m in modules for p in m.parameters())

    def decode_token(self, prelude: Any, settings: SolverSettings) -> DecodeResult:
        """One token per row (T = 1, a state, no autograd): its inner solve and the new recurrent state."""
        raise NotImplementedError

    def reads_iterate_through(self, mixer: ChannelMixer, y_projections: Sequence[nn.Module | None]) -> bool:
        """The verdict of `map_reads_iterate` for a map that reads y through the mixed input x~ = Q x + (I - Q) y
        (unless Q = I: no mixer, or strength c * g = 0; whatever the mixer's own input) and the linear
        `y_projections` (None: absent). A projection wrapped by an adapter is assumed to read it. The verdict costs
        one host sync and is kept until a parameter it looked at changes (its tensor or its in-place version
        counter), so a model that is not being trained pays it once."""
        if torch.compiler.is_compiling():
            # A traced step (e.g. a compiled decode step) cannot read versions or sync: it uses the verdict of the
            # last eager call (the prefill), or assumes the map reads y (always correct, only slower).
            return getattr(self, "_reads_iterate", True)
        projections = [m for m in y_projections if m is not None]
        weights = [m.weight for m in projections]
        watched = weights if mixer.proj is None else [mixer.gain, *weights]
        key = tuple((id(p), p._version) for p in watched)
        if getattr(self, "_reads_iterate_key", None) == key:
            return self._reads_iterate
        if not all(is_plain_linear(m) for m in projections):
            reads = True
        else:
            with torch.no_grad():
                terms = [acc(w.detach()).abs().amax() for w in weights]
                if mixer.proj is not None:
                    terms.append(mixer.strength().detach().abs())
                reads = bool(torch.stack(terms).amax() > 0) if terms else False
        self._reads_iterate_key, self._reads_iterate = key, reads
        return reads

    def output(self, y_out: torch.Tensor, prelude: Any) -> torch.Tensor:
        """The layer's output (b, T, hidden) in the input's dtype from f(y*) (b, T, d)."""
        raise NotImplementedError

    def next_state(self, prelude: Any, y_star: torch.Tensor, y_out: torch.Tensor, aux: tuple) -> Any:
        """The state to continue from: y_star, y_out (b, T, d) of this call, aux: the map's aux at y*."""
        raise NotImplementedError

    def pack_state(self, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The state as the two tensors of a transformers linear-attention cache layer: (conv_states,
        recurrent_states), batch first, so that the stock cache's beam reordering and batch expansion carry it."""
        raise NotImplementedError

    def store_state(self, state: Any, conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        """Write `state` into a cache's two tensors in place (their layout is `pack_state`'s). By default through
        `pack_state`; a backbone whose layout has parts writes them straight into slices (no packed copy)."""
        packed_conv, packed = self.pack_state(state)
        conv.copy_(packed_conv)
        recurrent.copy_(packed)

    def unpack_state(self, conv: torch.Tensor, recurrent: torch.Tensor) -> Any:
        """The inverse of `pack_state` (views of the cache's tensors)."""
        raise NotImplementedError

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial values of the parameters this layer initialises specially, by name."""
        raise NotImplementedError

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Set the parameters of `initial_values` and reset the channel mixer."""
        for name, value in self.initial_values().items():
            self.get_parameter(name).copy_(value)
        self.channel_mixer.reset_parameters()

    def init_weights(self, init: Any) -> None:
        """The random initialisation of the backbone's own weights, through `init`: transformers' guarded helpers
        (`transformers.initialization`), which leave loaded weights alone."""
        raise NotImplementedError

    def output_projection(self) -> nn.Linear:
        """The projection into the residual stream, whose initial weight rescale_prenorm_residual divides by
        sqrt(num_hidden_layers)."""
        raise NotImplementedError

    # The converter from the transformers source model (`FPMambaForCausalLM.from_<source>`): the source's class
    # name in transformers, its config mapped onto ours, and what makes the layer compute the source exactly.
    source_model: str

    @classmethod
    def config_from_source(cls, source: nn.Module) -> dict[str, Any]:
        """The FP config values of a converted `source` model (its transformers `*ForCausalLM`); raises ValueError
        for a source that cannot convert exactly."""
        raise NotImplementedError

    added_parameters: tuple[str, ...] = ()  # name prefixes of the parameters the source model does not have

    def start_as_source(self) -> None:
        """Make the layer compute its source backbone's output exactly (e.g. Q = I, y-projections at zero), keeping
        a gradient path so that fine-tuning can grow the fixed-point part."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- the solve
    def solver_settings(self, max_iter: int | None = None, tol: float | None = None) -> SolverSettings:
        """The settings of one call: `solver`'s, with the per-call cap / tolerance if given (`check_call_budget`)."""
        max_iter, tol, _ = check_call_budget(max_iter, tol)
        if max_iter is None:
            max_iter = self.training_cap() if self.training else self.solver.max_iter_eval
        return self.solver.solve_settings(max_iter, self.solver.tol if tol is None else tol)

    def training_cap(self) -> int:
        """The iteration cap of a training call: solver.max_iter, or with max_iter_gamma_shape k > 0 a random cap
        min(max_iter, ceil(Gamma(k, max_iter_gamma_scale))), at least 1, drawn anew at every call from torch's
        default CPU generator (the paper's Fig. 6, l_max ~ Gamma(4, 1))."""
        s = self.solver
        if not s.max_iter_gamma_shape:
            return s.max_iter
        rate = torch.tensor(1.0 / s.max_iter_gamma_scale, dtype=torch.float64)
        shape = torch.tensor(float(s.max_iter_gamma_shape), dtype=torch.float64)
        draw = torch.distributions.Gamma(shape, rate).sample()
        return max(1, min(s.max_iter, math.ceil(float(draw))))

    def finish(self, f: IterationMap, y_star: torch.Tensor, plain: MapOutput | None) -> MapOutput:
        """f(y*) and its aux. With autograd: differentiable according to fp_backward. Without: the solver's own f(y*)
        (`plain`), or computed when there is none (a checkpoint replay) or when training uses several one-step
        applications (so a checkpoint's no-grad first forward yields the value its recompute differentiates)."""
        s = self.solver
        grad = torch.is_grad_enabled()
        if grad and s.backward == "implicit":
            return implicit_output(f, y_star, s.backward_max_iter, s.backward_tol, self.layer_idx)
        steps = s.backward_steps if (grad or self.training) and s.backward == "one_step" else 1
        if grad or plain is None or steps > 1:
            return one_step_output(f, y_star, steps)
        return plain

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: Any = None,
        return_state: bool = False,
        fp_max_iter: int | None = None,
        fp_tol: float | None = None,
        sync: ContinueSync | None = None,
        replay: FixedPointReplay | None = None,
        finite_checked: bool = False,
        fp_solve_chunk: int | None = None,
    ) -> LayerOutput:
        """hidden_states (b, T, hidden); attention_mask (b, T) with 1 for real tokens (padding before and/or after
        a row's real tokens: masked positions leave the state untouched); state: the previous call's (continues the
        sequence). T = 1 with a state and no autograd is a decode step; a token that needs
        gradients takes the parallel path, which handles T = 1 with a state exactly.
        sync: makes data-parallel ranks agree to continue each iteration (see fixed_point.solve).
        replay: activation checkpointing; an empty one records y*, a filled one is applied instead of solving.
        finite_checked: the caller checks the output's finiteness itself (the model's stage flags), so a solve with no
        stopping decision to take (one evaluation) raises nothing and takes no host sync.
        fp_solve_chunk: solve the sequence chunk by chunk (`solve_in_chunks`); None: solver.solve_chunk.
        fp_max_iter, fp_tol, fp_solve_chunk follow `check_call_budget`'s rules."""
        fp_max_iter, fp_tol, fp_solve_chunk = check_call_budget(fp_max_iter, fp_tol, fp_solve_chunk)
        settings = self.solver_settings(fp_max_iter, fp_tol)
        chunk = self.solver.solve_chunk if fp_solve_chunk is None else fp_solve_chunk
        if finite_checked:
            settings = replace(settings, raise_non_finite=False)
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        T = hidden_states.shape[1]
        constant = not self.map_reads_iterate()
        # Under `sync` every rank takes the chunked protocol, whatever its own length (ranks agree on chunk counts).
        chunked = (chunk > 0 and (T > chunk or sync is not None) and not constant
                   and not (replay is not None and replay.filled))
        if chunked and not torch.is_grad_enabled():
            # Without autograd the chunks' own outputs are the layer's: no whole-sequence pass at all.
            sol = self.solve_in_chunks(hidden_states, mask, state, settings, chunk, sync, outputs=True)
            return LayerOutput(sol.out, sol.state if return_state else None, sol.iterations, sol.residual)
        pre = self.prelude(hidden_states, mask, state)

        if state is not None and T == 1 and not torch.is_grad_enabled():
            if constant:  # one evaluation is the fixed point: y* = f(0) exactly, residual 0
                step = self.decode_token(pre, replace(settings, max_iter=1))
                res = SolveResult(step.y_out[:, None], step.y_out[:, None], (step.state,), step.iterations,
                                  torch.zeros_like(step.residual))
            else:
                res = self.decode_solve(pre, settings)
            new_state = self.next_state(pre, res.y_star, res.y_out, res.aux) if return_state else None
            return LayerOutput(self.output(res.y_out, pre), new_state, res.iterations, res.residual)

        f = self.iteration_map(pre, settings)
        if constant and replay is None and torch.is_grad_enabled() and not self.iterate_gradients_wanted():
            # f(y0) with autograd is the fixed point and every gradient wanted (J = 0 and nothing that reads y
            # trains): one evaluation instead of a no-grad solve and the finish.
            y0 = self.initial_iterate(pre)
            fin = f(y0, torch.arange(y0.shape[0], device=y0.device))
            if settings.raise_non_finite:
                check_finite(fin.yhat, self.layer_idx, 1)
            batch = y0.shape[0]
            iterations = torch.ones(batch, dtype=torch.long, device=y0.device)
            new_state = (self.next_state(pre, fin.yhat.detach(), fin.yhat.detach(), fin.aux) if return_state
                         else None)
            return LayerOutput(self.output(fin.yhat, pre), new_state, iterations, y0.new_zeros(batch))
        if replay is not None and replay.filled:
            y_star, iterations, residual, plain = replay.y_star, replay.iterations, replay.residual, None
        else:
            if chunked:  # with autograd: the chunks find y*, one whole-sequence application below differentiates it
                sol = self.solve_in_chunks(hidden_states, mask, state, settings, chunk, sync, outputs=False)
                y_star, iterations, residual, plain = sol.y_star, sol.iterations, sol.residual, None
            else:
                res = self.solve_map(f, pre, settings, constant, sync)
                y_star, iterations, residual = res.y_star, res.iterations, res.residual
                plain = MapOutput(res.y_out, res.aux)
            if replay is not None:
                replay.record(y_star, iterations, residual)
        # Also for a constant map: with autograd f is applied at y* = f(0), not at y0, since the gradients of the
        # mixer gain and of the y-projections depend on where it is applied (they are what lets training leave Q = I).
        fin = self.finish(f, y_star, plain)
        new_state = self.next_state(pre, y_star.detach(), fin.yhat.detach(), fin.aux) if return_state else None
        return LayerOutput(self.output(fin.yhat, pre), new_state, iterations, residual,
                           self.jacobian_penalty_at(f, y_star))

    def jacobian_penalty_at(self, f: IterationMap, y_star: torch.Tensor) -> torch.Tensor | None:
        """(b,) the Jacobian penalty of f at y* (modeling/jacobian_penalty.py) in a training forward with autograd
        and solver.jacobian_reg > 0, else None. It differentiates f twice, which the Triton kernels cannot: refused
        where a kernel would run the map."""
        if not (self.training and torch.is_grad_enabled() and self.solver.jacobian_reg > 0):
            return None
        if backend_for(y_star) == "triton":
            raise NotImplementedError(
                "fp_jacobian_reg > 0 differentiates the fixed-point map twice, which the Triton kernels cannot: "
                "train with the PyTorch path (FPMAMBA_KERNELS=reference) or fp_jacobian_reg=0")
        rows = torch.arange(y_star.shape[0], device=y_star.device)
        return jacobian_penalty(lambda y: f(y, rows).yhat, y_star)[1]

    def solve_map(self, f: IterationMap, pre: Any, settings: SolverSettings, constant: bool,
                  sync: ContinueSync | None) -> SolveResult:
        """The no-autograd solve of one call's map f from the backbone's initial iterate."""
        y0 = self.initial_iterate(pre)
        g = compiled_map(f) if self.solver.compile else f  # the no-autograd evaluations
        if constant:
            return solve_constant(g, y0, settings, self.layer_idx)
        return solve(g, y0, settings, self.training, self.layer_idx, sync)

    def decode_solve(self, pre: Any, settings: SolverSettings) -> SolveResult:
        """The per-token solve of one token per row that continues a state (`decode_token`, with the step
        fp_decode_solver names), as a SolveResult of T = 1 whose aux is the new state."""
        step = self.decode_token(pre, settings.per_token())
        return SolveResult(step.y_star[:, None], step.y_out[:, None], (step.state,), step.iterations, step.residual)

    @torch.no_grad()
    def solve_in_chunks(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None,
        state: Any,
        settings: SolverSettings,
        chunk: int,
        sync: ContinueSync | None,
        outputs: bool,
    ) -> ChunkedSolve:
        """The block-sequential solve: tokens [s, s + chunk) are solved with the state the converged chunk before
        them left (conv window, scan state, y*_{s-1}), so a token's iterations are its chunk's, not the slowest
        token's of the whole sequence, and the cap applies per chunk. Concatenated, the chunks' fixed points are a
        fixed point of the whole sequence's map (each chunk's map is that map's restriction given the state before
        it), with a residual no larger than the largest chunk's.

        outputs: return the chunks' own layer outputs and the final state (a call without autograd); else y* for
        the caller's differentiable whole-sequence finish. Data-parallel ranks (`sync`) agree on the number of
        chunk solves: a rank out of chunks takes part in the others' iterations with evaluations on no rows
        (`fixed_point.solve` on an empty batch). Chunks of one real token per row that continue a state are
        decoded (`decode_solve`: the per-token solve, its step and kernels; the same fixed point) unless ranks sync."""
        T = hidden_states.shape[1]
        ys, outs, res = [], [], []
        evaluations = None  # (b,) token evaluations so far
        f = pre = None
        for s in range(0, T, chunk):
            pre = self.prelude(hidden_states[:, s:s + chunk], None if mask is None else mask[:, s:s + chunk], state)
            if sync is not None:
                sync(True)  # one more chunk solve on this rank: tells the ranks that have none left
            decode = chunk == 1 and sync is None and state is not None and (mask is None or bool(mask[:, s].all()))
            if decode:  # no map to build: the decode step's output is the token's, as in `forward`'s decode branch
                r = self.decode_solve(pre, settings)
                out = r.y_out
            else:
                f = self.iteration_map(pre, settings)
                r = self.solve_map(f, pre, settings, False, sync)
                out = self.finish(f, r.y_star, MapOutput(r.y_out, r.aux)).yhat if outputs else None
            state = self.next_state(pre, r.y_star, r.y_out, r.aux)
            cost = r.iterations * min(chunk, T - s)
            evaluations = cost if evaluations is None else evaluations + cost
            res.append(r.residual)
            if outputs:
                outs.append(self.output(out, pre))
            else:
                ys.append(r.y_star)
        while sync is not None and sync(False):  # a rank with more chunks: evaluate on no rows beside its solve
            solve(f, self.initial_iterate(pre)[:0], settings, self.training, self.layer_idx, sync)
        return ChunkedSolve(
            y_star=None if outputs else torch.cat(ys, 1), out=torch.cat(outs, 1) if outputs else None,
            state=state, iterations=(evaluations + T - 1) // T, residual=torch.stack(res, 1).amax(1),
        )
