"""FPMambaConfig: the transformers configuration of FP-Mamba (model_type "fp_mamba").

It is the one declaration of every knob of the model: name, type, default (the fields below) and meaning (the class
docstring, one entry per field). Names follow Mamba2Config where they are shared (hidden_size, state_size, head_dim,
expand, n_groups, conv_kernel, chunk_size, ...). The layer reads these fields, and the task harness
(fpmamba_lab/harness/models.py) and the `fpmamba` CLI build their model settings and flags from them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import re
import sys
import types
import typing
from collections.abc import Iterable
from functools import cache
from typing import Any, NamedTuple

from fpmamba_core.backbones import BACKBONES, MAMBA1_GATES, MAMBA1_NORMS, backbone_layer
from fpmamba_core.fixed_point import DECODE_SOLVERS, SOLVERS
from fpmamba_core.layer import FP_BACKWARDS
from fpmamba_core.mixers import ACTIVATIONS, KRONECKER_NORMS, MIXER_INPUTS, MIXERS
from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

# The value rules beyond the type, one table per rule (`FPMambaConfig.check`). The registries are read as they are
# at check time, so a backbone or mixer kind added to one is a valid choice.
CHOICES: dict[str, Any] = {
    "backbone": BACKBONES,
    "mamba1_gate": MAMBA1_GATES,
    "mamba1_norm": MAMBA1_NORMS,
    "mixer_type": MIXERS,
    "mixer_input": MIXER_INPUTS,
    "mixer_reflection_scale": (1, 2),
    "mixer_activation": tuple(ACTIVATIONS),
    "mixer_kron_norm": KRONECKER_NORMS,
    "fp_solver": SOLVERS,
    "fp_decode_solver": DECODE_SOLVERS,
    "fp_backward": FP_BACKWARDS,
}
_POSITIVE_INTS = (
    "vocab_size", "num_hidden_layers", "hidden_size", "state_size", "head_dim", "expand", "n_groups", "conv_kernel",
    "chunk_size", "mixer_rank", "fp_max_iter", "fp_max_iter_eval", "fp_damping_patience", "fp_anderson_m",
    "fp_backward_steps", "fp_backward_max_iter",
)
_POSITIVE_FINITE = (
    "layer_norm_epsilon", "time_step_min", "time_step_max", "fp_tol", "fp_backward_tol", "fp_max_iter_gamma_scale",
)
_NON_NEGATIVE_FINITE = ("time_step_floor", "initializer_range", "fp_max_iter_gamma_shape", "fp_jacobian_reg")
# The switches only some backbones have, each with the backbones that have it (names in BACKBONES). Any other
# backbone refuses a non-default value rather than ignoring it, which would let a run claim a change that did not
# happen; the default, which every saved config holds, is accepted. A backbone added to the registry refuses them
# until it is listed here. Sizes (state_size, head_dim, n_groups, conv_kernel, chunk_size) are not switches: one size
# preset serves every backbone, and each size's entry below says which backbones read it.
BACKBONE_SWITCHES: dict[str, tuple[str, ...]] = {
    "use_short_conv": ("mamba2", "mamba1"),
    "use_conv_bias": ("mamba2", "mamba1"),
    "norm_per_group": ("mamba2",),
    "time_step_min": ("mamba2", "mamba1"),
    "time_step_max": ("mamba2", "mamba1"),
    "time_step_floor": ("mamba2", "mamba1"),
    "time_step_limit": ("mamba2", "mamba1"),
    "bc_hidden_dependence": ("mamba2", "mamba1"),
    "bc_norm": ("mamba2", "mamba1"),
    "dt_hidden_dependence": ("mamba2", "mamba1"),
    "time_step_rank": ("mamba1",),
    "mamba1_gate": ("mamba1",),
    "mamba1_norm": ("mamba1",),
}
# How close (difflib's ratio) an unknown keyword must come to a field's name to be taken for a misspelling of it.
_TYPO_CUTOFF = 0.8
_UNIT_INTERVAL = ("fp_damping", "fp_damping_decay", "fp_train_quantile")  # (0, 1]


class FieldDoc(NamedTuple):
    """One field as the class docstring documents it: type and default as written, description on one line."""

    type: str
    default: str
    text: str


# One "Args:" entry of the class docstring: `name (`type`, *optional*, defaults to `X`):` and its indented text.
_DOC_ENTRY = re.compile(
    r"^    (\w+) \(`([^`]+)`(?:, \*optional\*)?(?:, defaults to `([^`]*)`)?\):\n((?:        .*\n?)+)", re.MULTILINE
)


@strict(accept_kwargs=True)
class FPMambaConfig(PreTrainedConfig):
    r"""
    Configuration of an FP-Mamba language model: blocks of a diagonal RNN backbone (Mamba-2 or Mamba-1, `backbone`)
    whose mixer output is the fixed point of that RNN iterated with a structured channel mixer Q_t
    (docs/method.md). A field that applies to some backbones only says so; such a switch (`BACKBONE_SWITCHES`) at a
    non-default value is refused on a backbone without it, and an unknown keyword that misspells a field too.

    Every field is checked at construction and on load, its type included (a string "false" for a bool, a float or
    a bool for an int are refused; an int is a valid float; numpy numbers become Python numbers): a ValueError
    names the field. `check()` runs the same checks on the config as it is now (after edits).

    Args:
        backbone (`str`, *optional*, defaults to `"mamba2"`):
            The diagonal RNN whose fixed point each layer computes, by name in `fpmamba_core.backbones.BACKBONES`:
            "mamba2" (Mamba-2's layer, parameter names as transformers' Mamba2Mixer) or "mamba1" (Mamba-1's
            layer, the paper's FP-Mamba, parameter names as transformers' MambaMixer; per-channel, per-state decay)
            or "rnn" (the paper's vector FP-RNN, its Fig. 3: a state of d_inner channels, decay sigmoid(W x + b),
            input SiLU(W_b x) * x, output gate SiLU(W_c [x_t; h*_{t-1}]); no source model, no conv, no heads; of the
            shape fields it reads expand, use_bias and layer_norm_epsilon).
        vocab_size (`int`, *optional*, defaults to `32000`):
            Number of tokens in the vocabulary (rows of the embedding and of the LM head).
        hidden_size (`int`, *optional*, defaults to `256`):
            Width of the residual stream (d_model).
        num_hidden_layers (`int`, *optional*, defaults to `4`):
            Number of FP-Mamba blocks.
        state_size (`int`, *optional*, defaults to `64`):
            Size of the SSM state (d_state, N): per head (mamba2) or per channel (mamba1).
        head_dim (`int`, *optional*, defaults to `64`):
            Channels per head; must divide d_inner = expand * hidden_size, and num_heads = d_inner / head_dim
            (mamba2 only).
        expand (`int`, *optional*, defaults to `2`):
            Expansion of the layer's inner width: d_inner = expand * hidden_size.
        n_groups (`int`, *optional*, defaults to `1`):
            Groups of heads that share B and C (as Mamba-2); must divide the number of heads (mamba2 only).
        conv_kernel (`int`, *optional*, defaults to `4`):
            Width of the causal depthwise convolution before the scan.
        use_short_conv (`bool`, *optional*, defaults to `True`):
            The causal depthwise convolution (+ SiLU) before the scan, as Mamba. False drops it and its conv1d
            parameters (the official code's A5/S5 runs use none; the SiLU goes with it, x = x_proj's input as it
            comes from in_proj; the cache's conv tensor is then empty). mamba2, mamba1; "rnn" has no conv and
            refuses False (leave it at its default); a model with False cannot be converted from Mamba.
        chunk_size (`int`, *optional*, defaults to `64`):
            Chunk length of the chunked SSD scan (mamba2) and of the diagonal scan (rnn); speed only, the result
            does not depend on it. The mamba1 selective scan picks its own, ceil(sqrt(T)).
        use_bias (`bool`, *optional*, defaults to `False`):
            Bias in the layer's input and output projections.
        use_conv_bias (`bool`, *optional*, defaults to `True`):
            Bias in the depthwise convolution.
        layer_norm_epsilon (`float`, *optional*, defaults to `1e-05`):
            Epsilon of the RMSNorms (residual stream and the layer's gated norm) and of mamba1's in-loop LayerNorm.
        norm_per_group (`bool`, *optional*, defaults to `True`):
            The gated RMSNorm normalises each group of channels (Mamba-2's original) instead of all of d_inner
            (mamba2 only).
        residual_in_fp32 (`bool`, *optional*, defaults to `True`):
            Keep the residual stream in fp32 whatever the model's dtype.
        time_step_min (`float`, *optional*, defaults to `0.001`):
            Smallest time step dt drawn at initialisation (log-uniform between min and max).
        time_step_max (`float`, *optional*, defaults to `0.1`):
            Largest time step dt drawn at initialisation.
        time_step_floor (`float`, *optional*, defaults to `0.0001`):
            Floor of the initial time steps.
        time_step_limit (`tuple[float, float]`, *optional*, defaults to `(0.0, inf)`):
            (low, high) clamp of dt in every call, 0 <= low <= high; (0, inf) means no clamp. A JSON list is
            accepted and stored as a tuple.
        initializer_range (`float`, *optional*, defaults to `0.02`):
            Standard deviation of the normal initialisation (transformers' default for the embeddings and linear
            layers; the mixer's direction weights).
        rescale_prenorm_residual (`bool`, *optional*, defaults to `False`):
            Divide the initial out_proj weights by sqrt(num_hidden_layers) (GPT-2's scheme).
        mixer_type (`str`, *optional*, defaults to `"householder"`):
            Structure of the channel mixer Q_t: "householder" (product of mixer_rank reflections), "dplr" (identity
            minus rank mixer_rank), "kronecker" (Kronecker product of two small PSD factors) or "none" (Q = I, the
            diagonal ablation).
        mixer_rank (`int`, *optional*, defaults to `2`):
            Number of reflections (householder) or the rank (dplr) of Q_t.
        mixer_input (`str`, *optional*, defaults to `"concat"`):
            What Q_t is computed from: "concat" ([x_t; y_{t-1}]), "sum" (x_t + y_{t-1}) or "x" (x_t alone, no
            dependence on the hidden state).
        mixer_reflection_scale (`float`, *optional*, defaults to `1.0`):
            Scale c of each reflection: 1 (the paper: eigenvalues in (0, 1]) or 2 (the official code: eigenvalues
            in (-1, 1], reflections allowed, which the state-tracking tasks need).
        mixer_activation (`str`, *optional*, defaults to `"silu"`):
            Activation applied to the mixer's direction vectors before normalising them: "silu", "identity",
            "tanh" or "relu".
        mixer_alpha_init (`float`, *optional*, defaults to `0.1`):
            Initial value of every mixer gate, in (0, 1): Q_t starts near the identity.
        mixer_proj_rank (`int`, *optional*, defaults to `0`):
            Rank of the mixer's projection of p_t (the official code's `mixer_proj_rank`; every backbone): 0 = a
            full linear map `channel_mixer.proj` (p -> P); r > 0 factors it as
            `channel_mixer.proj(channel_mixer.proj_in(p))` (p -> r -> P, bias on the outer map), so an iteration
            projects y_{t-1} at cost r (d + P) instead of d P. The mixer "none" (no projection) ignores it; a model
            with r > 0 cannot be converted from Mamba.
        mixer_kron_norm (`str`, *optional*, defaults to `"frobenius"`):
            Normalisation of the PSD factors of the "kronecker" mixer (every backbone; other mixers ignore it):
            "frobenius" (divided by their Frobenius norm) or "spectral" (the paper's FP-RNN: divided by an upper
            bound of their top eigenvalue from the power method, so each factor's spectral norm is near 1).
        bc_hidden_dependence (`bool`, *optional*, defaults to `True`):
            B and C also depend on y_{t-1} (the projection bc_y_proj, initialised at zero; the paper's Table 1
            ablation). False drops bc_y_proj: B and C read x_t only. mamba2, mamba1; "rnn" (whose b_t never reads
            h) refuses False; a model with False cannot be converted from Mamba.
        bc_norm (`bool`, *optional*, defaults to `True`):
            L2-normalise B and C: per group (mamba2), over the state (mamba1).
        dt_hidden_dependence (`bool`, *optional*, defaults to `False`):
            The time step dt also depends on y_{t-1} (an extra projection, initialised at zero; mamba1: into the
            time_step_rank inputs of dt_proj).
        time_step_rank (`str | int`, *optional*, defaults to `"auto"`):
            Rank of Mamba-1's low-rank time step (x_proj -> time_step_rank -> dt_proj), as MambaConfig: a positive
            int, or "auto" for ceil(hidden_size / 16) (mamba1 only).
        mamba1_gate (`str`, *optional*, defaults to `"in_loop"`):
            Where mamba1's SiLU gate acts: "in_loop" (the paper: every iterate is s * SiLU(z); the default, which
            learns) or "after_loop" (the official code's default: out = out_proj(SiLU(z + W_zy y_out_{t-1}) *
            y_out), y_out = f(y*), W_zy initialised at zero; at the defaults otherwise it did not learn S3)
            (mamba1 only).
        mamba1_norm (`str`, *optional*, defaults to `"layernorm_after_loop"`):
            mamba1's LayerNorm over d_inner: "layernorm_after_loop" (once, on f(y*), outside the map: the default,
            which converges at initialisation), "layernorm" (the paper's and the official code's, on every iterate
            after the in-loop gate: at a small initialisation it cancels the contraction of I - Q, so Householder
            and DPLR maps converge slowly and have several fixed points; docs/method.md) or "none" (what a model
            converted from Mamba-1 uses, since then it computes its source exactly) (mamba1 only).
        fp_max_iter (`int`, *optional*, defaults to `16`):
            Iteration cap of the fixed-point solve in training (the upper bound of the random cap when
            fp_max_iter_gamma_shape > 0).
        fp_max_iter_eval (`int`, *optional*, defaults to `64`):
            Iteration cap in eval mode and generation. forward() and generate() take `fp_max_iter` / `fp_tol`
            arguments that override the cap and the tolerance for one call.
        fp_solve_chunk (`int`, *optional*, defaults to `0`):
            Solve the fixed point chunk by chunk: tokens [s, s + fp_solve_chunk) start from the state the converged
            chunk before them left, so a token costs its chunk's iterations instead of the whole sequence's, and the
            caps apply per chunk (docs/method.md, "How many iterations"). 0 solves the whole sequence at once. The
            same fixed point either way; in training the chunks find it without autograd and one whole-sequence
            application differentiates it. forward() and generate() take `fp_solve_chunk` per call too.
        fp_jacobian_reg (`float`, *optional*, defaults to `0.0`):
            Weight of the Jacobian penalty in training (0 = off): each layer's training forward adds a Hutchinson
            estimate of ||J_f(y*)||_F^2 / n (one vector-Jacobian product at the fixed point, differentiated through
            the map a second time) and the causal LM adds fp_jacobian_reg x its mean over rows and layers to the loss
            (`fp_jacobian_penalty` in the output). It pulls the map towards contraction, so the fixed point takes
            fewer iterations; on state tracking (S3) the weights that flatten the count cost the length
            generalisation (docs/method.md, "How many iterations"). PyTorch path only: the Triton kernels have no
            second derivative, and a CUDA model with the kernels refuses it.
        fp_max_iter_gamma_shape (`float`, *optional*, defaults to `0.0`):
            Shape k of a random training cap (the paper's Fig. 6: l_max ~ Gamma(4, 1)); 0 = off, the cap is
            fp_max_iter. With k > 0 every training call of every layer draws its own cap min(fp_max_iter,
            ceil(Gamma(k, fp_max_iter_gamma_scale))) from torch's default CPU generator (seeded by
            torch.manual_seed / Trainer's seed; a per-call fp_max_iter argument overrides the draw). Data-parallel
            ranks draw on their own; with fp_sync_ranks they still run the same number of iterations, the largest
            cap drawn. Eval and generation use fp_max_iter_eval as always.
        fp_max_iter_gamma_scale (`float`, *optional*, defaults to `1.0`):
            Scale theta > 0 of the random training cap's Gamma(k, theta) (mean k theta; the official code uses
            its training length / 16 + 1, e.g. 2 at length 16).
        fp_tol (`float`, *optional*, defaults to `0.01`):
            Tolerance of the stopping rule: a sequence stops when its relative inf-norm residual is below it.
        fp_damping (`float`, *optional*, defaults to `1.0`):
            Initial damping factor in (0, 1] of each step (1: plain Picard iteration).
        fp_damping_decay (`float`, *optional*, defaults to `0.9`):
            Factor in (0, 1] the damping of a sequence is multiplied by when its residual stalls.
        fp_damping_patience (`int`, *optional*, defaults to `5`):
            Evaluations without a new best residual before the damping decays (with fp_solver "anderson": before
            the sequence restarts as a Picard one).
        fp_train_quantile (`float`, *optional*, defaults to `0.9`):
            In training, the whole batch stops once this fraction (0, 1] of its sequences converged.
        fp_solver (`str`, *optional*, defaults to `"picard"`):
            Step between evaluations: "picard" (damped fixed-point iteration) or "anderson" (Anderson acceleration
            over the last fp_anderson_m evaluations per sequence; same stopping rule, caps and gradients). A
            sequence whose Anderson steps stall (fp_damping_patience evaluations without a new best residual)
            restarts from the start as a Picard one, so it ends at Picard's fixed point.
        fp_anderson_m (`int`, *optional*, defaults to `5`):
            Memory of the Anderson solver (evaluations mixed per step).
        fp_decode_solver (`str`, *optional*, defaults to `"picard"`):
            Step of the per-token solve of decoding (one token with a state and no autograd: generate()'s decode
            steps, a token-by-token forward with a cache): "picard" (fp_solver's step, as every other solve) or
            "newton" (Newton's method on the token's d-dimensional problem after two damped Picard steps, which
            lead it to the fixed point Picard iteration selects: each later iteration also takes the map's d x d
            Jacobian per sequence and solves with I - J; converges in a few iterations where the fixed-point
            iteration crawls or cycles; runs the PyTorch decode step). Every other solve keeps fp_solver, since a
            Newton step there would need a (T d) x (T d) Jacobian. The rnn backbone solves its linear per-token
            problem directly under either.
        fp_backward (`str`, *optional*, defaults to `"one_step"`):
            Gradient of the fixed point: "one_step" (fp_backward_steps applications of the map from the detached
            fixed point) or "implicit" (the adjoint fixed point, capped by fp_backward_max_iter at
            fp_backward_tol).
        fp_backward_steps (`int`, *optional*, defaults to `1`):
            Applications of the map differentiated by the "one_step" gradient.
        fp_backward_max_iter (`int`, *optional*, defaults to `32`):
            Iteration cap of the adjoint solve of the "implicit" gradient.
        fp_backward_tol (`float`, *optional*, defaults to `0.0001`):
            Tolerance of the adjoint solve of the "implicit" gradient.
        fp_sync_ranks (`bool`, *optional*, defaults to `True`):
            In training under torch.distributed with more than one rank, all ranks run the same number of
            iterations per solve (one all-reduce per iteration), so sharded training cannot deadlock
            (fpmamba_hf/distributed.py).
        fp_compile (`bool`, *optional*, defaults to `False`):
            Run the solver's no-autograd evaluations of each layer's iteration map through `torch.compile`
            (fullgraph; the PyTorch path only, not the fused Triton iteration). The first call compiles (seconds;
            again for new shapes); where compile is unavailable or fails, one warning and the eager map.
        use_cache (`bool`, *optional*, defaults to `True`):
            Return a cache (conv window, SSM state, last fixed point per layer) from forward in eval mode.
        pad_token_id (`int | None`, *optional*, defaults to `None`):
            Id of the padding token.
        bos_token_id (`int | None`, *optional*, defaults to `None`):
            Id of the beginning-of-sequence token.
        eos_token_id (`int | list[int] | None`, *optional*, defaults to `None`):
            Id(s) of the end-of-sequence token.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            The LM head shares the embedding matrix.
    """

    model_type = "fp_mamba"
    # Trainer's predictions keep the logits only: the cache and the telemetry are not predictions (see
    # fpmamba_hf.callbacks.FixedPointLogCallback for telemetry in the logs).
    keys_to_ignore_at_inference = ["cache", "cache_params", "past_key_values", "fp_iterations", "fp_residual",
                                   "fp_jacobian_penalty"]

    backbone: str = "mamba2"
    vocab_size: int = 32000
    hidden_size: int = 256
    num_hidden_layers: int = 4
    state_size: int = 64
    head_dim: int = 64
    expand: int = 2
    n_groups: int = 1
    conv_kernel: int = 4
    use_short_conv: bool = True
    chunk_size: int = 64
    use_bias: bool = False
    use_conv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    norm_per_group: bool = True
    residual_in_fp32: bool = True
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = False
    mixer_type: str = "householder"
    mixer_rank: int = 2
    mixer_input: str = "concat"
    mixer_reflection_scale: float = 1.0
    mixer_activation: str = "silu"
    mixer_alpha_init: float = 0.1
    mixer_proj_rank: int = 0
    mixer_kron_norm: str = "frobenius"
    bc_hidden_dependence: bool = True
    bc_norm: bool = True
    dt_hidden_dependence: bool = False
    time_step_rank: str | int = "auto"
    mamba1_gate: str = "in_loop"
    mamba1_norm: str = "layernorm_after_loop"
    fp_max_iter: int = 16
    fp_max_iter_eval: int = 64
    fp_solve_chunk: int = 0
    fp_jacobian_reg: float = 0.0
    fp_max_iter_gamma_shape: float = 0.0
    fp_max_iter_gamma_scale: float = 1.0
    fp_tol: float = 1e-2
    fp_damping: float = 1.0
    fp_damping_decay: float = 0.9
    fp_damping_patience: int = 5
    fp_train_quantile: float = 0.9
    fp_solver: str = "picard"
    fp_anderson_m: int = 5
    fp_decode_solver: str = "picard"
    fp_backward: str = "one_step"
    fp_backward_steps: int = 1
    fp_backward_max_iter: int = 32
    fp_backward_tol: float = 1e-4
    fp_sync_ranks: bool = True
    fp_compile: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs) -> None:
        """`check()` every field; `num_heads` (a Mamba2Config field, derived here) is accepted when it agrees with
        expand * hidden_size / head_dim; a misspelled field is refused. Other unknown keywords (what transformers
        writes into config.json: architectures, dtype, auto_map, special token ids, ...) are kept as attributes."""
        _refuse_misspelled_fields(kwargs)
        self.check()
        num_heads = kwargs.pop("num_heads", None)
        if num_heads is not None and num_heads != self.num_heads:
            raise ValueError(
                f"FPMamba config: invalid num_heads={num_heads!r}: it is derived as expand * hidden_size / head_dim "
                f"= {self.num_heads}; set head_dim (or leave num_heads out)"
            )
        super().__post_init__(**kwargs)

    @staticmethod
    @cache
    def field_types() -> dict[str, Any]:
        """The type of every field declared by FPMambaConfig (not its PreTrainedConfig base), in declaration
        order. The annotations are strings (postponed evaluation): resolved here, in this module's namespace.
        Postponed, because @strict would otherwise check them on every assignment, refusing an int for a float
        and a numpy number before `check()` converts it."""
        namespace = vars(sys.modules[FPMambaConfig.__module__])
        return {name: eval(hint, namespace) for name, hint in vars(FPMambaConfig)["__annotations__"].items()}

    @staticmethod
    @cache
    def field_docs() -> dict[str, FieldDoc]:
        """Every field documented in the class docstring ("Args:" entries), in the docstring's order."""
        doc = inspect.cleandoc(FPMambaConfig.__doc__)
        return {m[1]: FieldDoc(m[2], m[3], " ".join(m[4].split())) for m in _DOC_ENTRY.finditer(doc)}

    def check(self) -> None:
        """Normalise the fields (numpy numbers to Python numbers, a list to a tuple for a tuple field), then check
        every field's type and value; a ValueError names the first invalid field."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"FPMamba config: invalid {name}={getattr(self, name)!r}: {why}")

        hints = vars(FPMambaConfig)["__annotations__"]
        for name, hint in self.field_types().items():
            value = getattr(self, name)
            if type(value) not in (bool, int, float) and isinstance(value, numbers.Real):  # numpy (np.float64 too)
                setattr(self, name, int(value) if isinstance(value, numbers.Integral) else float(value))
            elif isinstance(value, list) and typing.get_origin(hint) is tuple:  # JSON has no tuples
                setattr(self, name, tuple(value))
            if not _has_type(getattr(self, name), hint):
                bad(name, f"must be of type {hints[name]}")

        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        for name in _POSITIVE_FINITE:
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                bad(name, "must be a finite number > 0")
        for name in _NON_NEGATIVE_FINITE:
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be a finite number >= 0")
        for name in _UNIT_INTERVAL:
            if not 0.0 < getattr(self, name) <= 1.0:
                bad(name, "must lie in (0, 1]")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                bad(name, f"choose one of {tuple(choices)}")
        if not 0.0 < self.mixer_alpha_init < 1.0:
            bad("mixer_alpha_init", "must lie in (0, 1)")
        lo, hi = self.time_step_limit
        if not 0.0 <= lo <= hi:
            bad("time_step_limit", "must be a (low, high) pair with 0 <= low <= high")
        if self.time_step_min > self.time_step_max:
            bad("time_step_min", "must not exceed time_step_max")
        if self.time_step_rank != "auto" and (isinstance(self.time_step_rank, str) or self.time_step_rank < 1):
            bad("time_step_rank", 'must be "auto" or a positive integer')
        if self.mixer_proj_rank < 0:
            bad("mixer_proj_rank", "must be 0 (full rank) or a positive integer")
        if self.fp_solve_chunk < 0:
            bad("fp_solve_chunk", "must be 0 (the whole sequence at once) or a positive chunk length")
        for name, backbones in BACKBONE_SWITCHES.items():
            default = type(self).__dataclass_fields__[name].default
            if self.backbone not in backbones and getattr(self, name) != default:
                bad(name, f"backbone {self.backbone!r} does not have what it switches (it applies to "
                          f"{', '.join(backbones)} only); leave it at {default!r}")
        if self.backbone == "mamba2" and self.intermediate_size % self.head_dim:
            bad("head_dim", f"must divide d_inner = expand * hidden_size = {self.intermediate_size}")
        if self.backbone == "mamba2" and self.num_heads % self.n_groups:
            bad("n_groups", f"must divide the number of heads ({self.num_heads})")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any,
                        **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """PreTrainedConfig.get_config_dict (what `from_pretrained` of this config and of every FP-Mamba model reads),
        refusing the config of another model type: transformers would only warn and build an FP-Mamba from its
        shared fields, into which the model's weights load by name (Mamba's and Mamba-2's all match) as a different
        model. A Mamba / Mamba-2 folder converts exactly through its `FPMambaForCausalLM.from_<source>`."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            convert = _converters().get(model_type)
            how = (f"convert it with FPMambaForCausalLM.{convert}({str(pretrained_model_name_or_path)!r}), which "
                   "computes the source model exactly" if convert else "no conversion into FP-Mamba exists for it")
            raise ValueError(f"{pretrained_model_name_or_path} holds a {model_type!r} model (config.json's "
                             f"model_type), not an FP-Mamba ({cls.model_type!r}): {how}")
        return config_dict, kwargs

    @staticmethod
    def structural_fields() -> tuple[str, ...]:
        """The fields that shape a built model's parameters or their meaning: an edit of one after the model was
        built cannot take effect, and the model refuses it. The others are read at every call (the fp_* solver
        settings, residual_in_fp32, fp_sync_ranks, use_cache) or kept in step by transformers (vocab_size through
        resize_token_embeddings, the special token ids)."""
        runtime = ("vocab_size", "residual_in_fp32", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id")
        return tuple(n for n in FPMambaConfig.field_types() if not n.startswith("fp_") and n not in runtime)

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        return self.intermediate_size // self.head_dim

    @property
    def layer_types(self) -> list[str]:
        # Read by transformers' DynamicCache: one linear-attention (conv + recurrent state) layer per block.
        return ["linear_attention"] * self.num_hidden_layers

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs) -> None:
        """PreTrainedConfig.save_pretrained. When config.json points the Auto classes at code in the folder
        (`auto_map`, set by `register_for_auto_class` on the config or the model), the folder also gets that code as
        a flat bundle that loads with trust_remote_code=True where this package is not installed
        (fpmamba_hf/portable.py). A model's save_pretrained saves its config before the weights and before its own
        upload (push_to_hub=True), so every model class gets the bundle and the upload includes it."""
        auto_map = getattr(self, "auto_map", None)
        if auto_map:  # the model alone was registered: the folder's config class must be named too
            auto_map.setdefault("AutoConfig", f"{type(self).__module__.rpartition('.')[2]}.{type(self).__name__}")
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if getattr(self, "auto_map", None):
            from .portable import write_portable_code  # imported here: a plain save does not need it

            write_portable_code(save_directory)


def _converters() -> dict[str, str]:
    """The transformers model types FP-Mamba converts from, each with its converter's name (the backbones with a
    `source_model`: "mamba2" -> "from_mamba2", "mamba" -> "from_mamba")."""
    import transformers

    sources = (getattr(backbone_layer(name), "source_model", None) for name in BACKBONES)
    return {getattr(transformers, src).config_class.model_type: f"from_{src.removesuffix('ForCausalLM').lower()}"
            for src in sources if src}


def _refuse_misspelled_fields(keywords: Iterable[str]) -> None:
    """A keyword that is no field of FPMambaConfig but a close spelling of one (`mixer_rnak`) is a typo: a ValueError
    names the field it misspells (PreTrainedConfig would keep it as an attribute that nothing reads). The keys of
    transformers itself pass: its PreTrainedConfig fields, private keys (`_name_or_path`) and special token ids
    (`sep_token_id` is close to `pad_token_id`)."""
    ours = list(FPMambaConfig.field_types())
    theirs = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    for key in keywords:
        if key in theirs or key.startswith("_") or key.endswith("_token_id"):
            continue
        close = difflib.get_close_matches(key, ours, n=1, cutoff=_TYPO_CUTOFF)
        if close:
            raise ValueError(f"FPMamba config: unknown keyword {key!r}: did you mean {close[0]!r}? (no field is "
                             f"named {key!r}; FPMambaConfig.field_docs() lists them)")


def _has_type(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type: bool is not an int, an int is a float (Python's numeric tower)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_has_type(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple) and len(value) == len(args) and all(map(_has_type, value, args))
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)  # bool, str, NoneType


def switch_applies(name: str, backbone: str) -> bool:
    """Whether config field `name` means something on `backbone` (every field but the BACKBONE_SWITCHES of other
    backbones): what a tool rebuilding a config from recorded settings keeps."""
    return backbone in BACKBONE_SWITCHES.get(name, (backbone,))


__all__ = ["BACKBONE_SWITCHES", "CHOICES", "FPMambaConfig", "FieldDoc", "switch_applies"]
