"""FP-Mamba for transformers: FPMambaModel and FPMambaForCausalLM.

The stack is Mamba's and Mamba-2's (embeddings -> [RMSNorm -> FP layer -> residual] x L -> RMSNorm -> LM head),
parameter for parameter, so `FPMambaForCausalLM.from_mamba2` / `from_mamba` convert a Mamba2ForCausalLM /
MambaForCausalLM exactly (the layer is the config's backbone). The layer math lives in
the `modeling` package; this file adds what a transformers model needs: config, weights init, cache, loss,
generation (with a per-call fixed-point budget), telemetry (`fp_iterations`, `fp_residual`) and the checks that no
non-finite or unconverged result passes silently (fpmamba_hf/telemetry.py).
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from fpmamba_core.backbones import backbone_layer
from fpmamba_core.checkpointing import FixedPointReplay
from fpmamba_core.compiled import CompiledOrEager
from fpmamba_core.fixed_point import ContinueSync
from fpmamba_core.layer import FixedPointLayer
from fpmamba_core.mixers import ChannelMixer
from fpmamba_core.norms import GatedRMSNorm
from fpmamba_core.precision import acc
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput, logging

from .cache import (
    CACHE_NAMES,
    GENERATE_CACHE_NAME,
    expose_cache,
    has_state,
    read_state,
    resolve_cache,
    seen_tokens,
    set_seen_tokens,
    write_state,
)
from .configuration_fpmamba import FPMambaConfig
from .distributed import training_sync
from .telemetry import (
    FP_CALL_KEYS,
    GenerationLog,
    StageFlags,
    check_call_keywords,
    check_forward,
    check_generation,
    first_bad_stage,
    non_finite_error,
)

logger = logging.get_logger(__name__)


class FPMambaRMSNorm(nn.Module):
    """RMSNorm of the residual stream (as Mamba2RMSNorm), computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        h = acc(hidden_states)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(input_dtype)


class FPMambaBlock(GradientCheckpointingLayer):
    """Pre-norm residual block around one fixed-point layer (its backbone's FixedPointLayer). Returns (hidden_states,
    iterations (batch,), residual (batch,)): the fixed-point iterations and the relative residual each row stopped at.

    The whole fixed-point loop runs inside this block, which is the unit of activation checkpointing and of FSDP
    sharding (`_no_split_modules`): one parameter all-gather per block forward, whatever the iteration count.
    `fp_sync` / `fp_replay` are passed by keyword so that a checkpoint binds them once for forward and recompute.
    """

    def __init__(self, config: FPMambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.config = config  # read at call time (residual_in_fp32), so an edit of the config takes effect
        self.norm = FPMambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = backbone_layer(config.backbone)(config, layer_idx=layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        fp_max_iter: int | None = None,
        fp_tol: float | None = None,
        fp_sync: ContinueSync | None = None,
        fp_replay: FixedPointReplay | None = None,
        fp_solve_chunk: int | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        residual = hidden_states
        hidden_states = self.norm(hidden_states.to(dtype=self.norm.weight.dtype))
        if self.config.residual_in_fp32:
            residual = acc(residual)  # fp32 (an fp64 model keeps fp64)
        state = None
        if cache is not None:
            state = read_state(cache, self.layer_idx, hidden_states.shape[0], self.mixer)
        out = self.mixer(
            hidden_states,
            attention_mask=attention_mask,
            state=state,
            return_state=cache is not None,
            fp_max_iter=fp_max_iter,
            fp_tol=fp_tol,
            sync=fp_sync,
            replay=fp_replay,
            finite_checked=True,  # the model flags this block's output (StageFlags), read once per call
            fp_solve_chunk=fp_solve_chunk,
        )
        if cache is not None:
            write_state(cache, self.layer_idx, out.state, self.mixer)
        # A fresh alias of the telemetry: a reentrant checkpoint marks its float outputs as differentiable in place,
        # and the mixer's residual is also held by the replay, which the recompute returns again.
        return residual + out.out, out.iterations, out.residual.detach()


class FPMambaPreTrainedModel(PreTrainedModel):
    config_class = FPMambaConfig
    config: FPMambaConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["FPMambaBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults, then each backbone's own values (`initial_values`, `init_weights`: e.g. Mamba-2's
        A_log, D, dt_bias, conv; y-projections at zero; mixers near identity) through the guarded init helpers, so
        loaded weights are never touched."""
        super()._init_weights(module)
        if isinstance(module, (FixedPointLayer, ChannelMixer)):
            for name, value in module.initial_values().items():
                param = module.get_parameter(name)
                init.copy_(param, value.to(param.device, param.dtype))
        if isinstance(module, FixedPointLayer):
            module.init_weights(init)
            weight = module.output_projection().weight
            if self.config.rescale_prenorm_residual and not getattr(weight, "_is_hf_initialized", False):
                weight /= math.sqrt(self.config.num_hidden_layers)
        if isinstance(module, (GatedRMSNorm, FPMambaRMSNorm)):
            init.ones_(module.weight)


@dataclass
class FPMambaOutput(ModelOutput):
    """last_hidden_state (batch, T, hidden); cache: the DynamicCache to continue from (if use_cache; also
    readable as cache_params, its name before transformers 5.24); hidden_states: per-layer outputs if asked;
    fp_iterations: LongTensor (batch, num_layers), fixed-point iterations each layer used per sequence in this call
    (with fp_solve_chunk: map evaluations per token, rounded up);
    fp_residual: FloatTensor (batch, num_layers), the relative residual each layer stopped at (below fp_tol when
    converged, above it when the cap was hit)."""

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    fp_iterations: torch.LongTensor | None = None
    fp_residual: torch.FloatTensor | None = None


@dataclass
class FPMambaCausalLMOutput(ModelOutput):
    """loss (labels shifted inside, -100 ignored); logits (batch, T, vocab) fp32; cache (also cache_params);
    hidden_states; fp_iterations: LongTensor (batch, num_layers); fp_residual: FloatTensor (batch, num_layers)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    fp_iterations: torch.LongTensor | None = None
    fp_residual: torch.FloatTensor | None = None


def _check_inputs(input_ids, inputs_embeds, attention_mask, config: FPMambaConfig, continuing: bool,
                  trusted_ids: bool = False):
    """Clear errors for bad input, raised before anything touches the embedding or the cache. `trusted_ids`: the
    ids were generated by this model inside generate() (below the vocabulary by construction), so their range check,
    a host sync, is skipped."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    for name, t in (("input_ids", input_ids), ("inputs_embeds", inputs_embeds), ("attention_mask", attention_mask)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; convert it with torch.as_tensor")
    if input_ids is not None and (input_ids.dim() != 2 or input_ids.is_floating_point() or input_ids.is_complex()):
        raise ValueError(f"input_ids must be integer token ids of shape (batch, sequence), got {input_ids.dtype} "
                         f"of shape {tuple(input_ids.shape)}")
    if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size):
        raise ValueError(f"inputs_embeds must have shape (batch, sequence, hidden_size={config.hidden_size}), got "
                         f"{tuple(inputs_embeds.shape)}")
    ref = input_ids if input_ids is not None else inputs_embeds
    vocab_size = config.vocab_size
    if ref.shape[1] == 0:
        raise ValueError(f"FP-Mamba needs a non-empty (batch, sequence) input, got shape {tuple(ref.shape)}")
    if input_ids is not None and input_ids.numel() and not trusted_ids:
        outside = (input_ids < 0) | (input_ids >= vocab_size)
        if bool(outside.any()):  # one host sync per call in the common case
            raise ValueError(
                f"input_ids contain token id {int(input_ids[outside][0])} outside the vocabulary [0, {vocab_size})"
            )
    if attention_mask is None:
        return None
    T = ref.shape[1]
    if attention_mask.dim() != 2 or attention_mask.shape[0] != ref.shape[0] or attention_mask.shape[1] < T:
        raise ValueError(
            f"attention_mask must be (batch, >= sequence length) = ({ref.shape[0]}, {T}), "
            f"got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask[:, -T:].to(torch.bool)
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask has right padding (a 0 after a 1): FP-Mamba supports left padding only")
    if continuing and not bool(mask.all()):
        raise ValueError("padding inside a continued sequence: new tokens fed with a cache must all be real (mask 1)")
    return None if bool(mask.all()) else mask


def _call_budget(fp_max_iter: Any, fp_tol: Any, fp_solve_chunk: Any = None
                 ) -> tuple[int | None, float | None, int | None]:
    """The per-call budget as plain Python numbers (numpy scalars accepted), or a ValueError naming the argument."""
    fp_max_iter = _call_int(fp_max_iter, "fp_max_iter must be a positive integer")
    if fp_tol is not None:
        try:
            if isinstance(fp_tol, bool):  # True would run as a tolerance of 1.0
                raise TypeError
            fp_tol = float(fp_tol)
        except (TypeError, ValueError):
            raise ValueError(f"fp_tol must be a finite number > 0, got {fp_tol!r}") from None
    fp_solve_chunk = _call_int(fp_solve_chunk, "fp_solve_chunk must be 0 (the whole sequence) or a positive integer")
    return fp_max_iter, fp_tol, fp_solve_chunk


def _call_int(value: Any, rule: str) -> int | None:
    """A per-call integer argument as a Python int (None stays None; a bool or a non-integer raises `rule`)."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{rule}, got {value!r}") from None


class FPMambaModel(FPMambaPreTrainedModel):
    def __init__(self, config: FPMambaConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([FPMambaBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.norm_f = FPMambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self._built_fields = {name: getattr(config, name) for name in config.structural_fields()}
        self._checked_values: tuple | None = None  # the config's field values when check() last passed
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.embeddings = new_embeddings

    def run_blocks(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None,
        mask: torch.Tensor | None,
        fp_max_iter: int | None,
        fp_tol: float | None,
        stages: StageFlags,
        output_hidden_states: bool = False,
        sync: ContinueSync | None = None,
        fp_solve_chunk: int | None = None,
    ) -> tuple[torch.Tensor, tuple | None, torch.Tensor, torch.Tensor]:
        """The decoder blocks and norm_f on embedded inputs (b, T, hidden), reading and updating `cache` (if
        any) in place; each stage's output is flagged in `stages`. Returns (hidden states after norm_f, the hidden
        states after each block and after norm_f if asked (else None), fp_iterations (b, layers), fp_residual
        (b, layers) fp32). No host sync of its own: the caller reads `stages` and the telemetry."""
        all_hidden_states = () if output_hidden_states else None
        iterations, residuals = [], []
        for i, block in enumerate(self.layers):
            # A checkpointed block's recompute replays the fixed point its forward found (modeling/checkpointing.py).
            replay = FixedPointReplay() if block.gradient_checkpointing and block.training else None
            try:
                hidden_states, its, res = block(
                    hidden_states, cache=cache, attention_mask=mask, fp_max_iter=fp_max_iter,
                    fp_tol=fp_tol, fp_sync=sync, fp_replay=replay, fp_solve_chunk=fp_solve_chunk,
                )
            except FloatingPointError as err:
                # The solver sees a NaN that may come from an earlier stage: name where it first appeared.
                where = first_bad_stage(stages.names, stages.stacked().tolist())
                raise non_finite_error(self, where or f"layer {i} (its fixed-point iteration)") from err
            stages.add(f"layer {i} (after its fixed point: out_proj or the residual)", hidden_states)
            iterations.append(its)
            residuals.append(res)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        hidden_states = self.norm_f(hidden_states)
        stages.add("the final norm (norm_f)", hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states + (hidden_states,)
        return hidden_states, all_hidden_states, torch.stack(iterations, dim=1), torch.stack(residuals, dim=1).float()

    def _check_live_config(self) -> None:
        """The layers read the config at every call, so an edit of the fp_* solver settings takes effect at the next
        one. Every structural field (`FPMambaConfig.structural_fields`) shapes the parameters or their meaning: an
        edit after the model was built is refused rather than saved without running. The full check runs only when
        a field changed since the last one passed (a few hundred microseconds: too much for every decoded token)."""
        if torch.compiler.is_compiling():
            return  # a traced step (the compiled decode step) is guarded on the values it reads; eager calls check
        # Read from the instance dict: PreTrainedConfig's attribute access costs about 1 us per field.
        read_fields = operator.itemgetter(*FPMambaConfig.field_types())
        if read_fields(vars(self.config)) == self._checked_values:
            return
        self.config.check()  # also turns an edited list into the tuple its field holds
        changed = [n for n, v in self._built_fields.items() if getattr(self.config, n) != v]
        if changed:
            raise ValueError(
                f"config field(s) {changed} were changed after the model was built; they cannot take effect on an "
                "existing model (only the fp_* solver settings can). Build a new model from the edited config."
            )
        self._checked_values = read_fields(vars(self.config))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        fp_max_iter: int | None = None,
        fp_tol: float | None = None,
        cache_params: Cache | None = None,
        past_key_values: Cache | None = None,
        fp_solve_chunk: int | None = None,
        **kwargs: Any,
    ) -> tuple | FPMambaOutput:
        r"""
        cache (`DynamicCache`, *optional*): continue the sequences held in this cache (new tokens only); it is read
            and updated in place in every mode. `cache_params` (its name before transformers 5.24) and
            `past_key_values` are accepted as the same argument.
        fp_max_iter (`int`, *optional*): iteration cap for this call (default: config.fp_max_iter in training,
            config.fp_max_iter_eval otherwise).
        fp_tol (`float`, *optional*): relative residual tolerance for this call (default: config.fp_tol).
        fp_solve_chunk (`int`, *optional*): solve the fixed point chunk by chunk for this call, 0 = the whole
            sequence (default: config.fp_solve_chunk).
        """
        check_call_keywords(kwargs)
        stages: StageFlags | None = kwargs.get("fp_stages")
        owns_report = stages is None  # called directly: this forward checks its own outputs
        stages = StageFlags() if stages is None else stages
        fp_max_iter, fp_tol, fp_solve_chunk = _call_budget(fp_max_iter, fp_tol, fp_solve_chunk)
        self._check_live_config()
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = resolve_cache(cache=cache, cache_params=cache_params, past_key_values=past_key_values)
        if cache is not None:
            # A cache handed in is always used: refuse what would ignore it or use it wrongly.
            if use_cache is False:
                raise ValueError("a cache was passed with use_cache=False: drop the cache, or let it be used")
            if self.gradient_checkpointing and self.training:
                raise ValueError("a cache cannot be used with gradient checkpointing in training (the recompute "
                                 "would read the cache after the forward updated it)")
            use_cache = True
        use_cache = use_cache if use_cache is not None else (self.config.use_cache if not self.training else False)
        continuing = cache is not None and has_state(cache)
        mask = _check_inputs(input_ids, inputs_embeds, attention_mask, self.config, continuing,
                             trusted_ids=bool(kwargs.get("fp_trusted_ids")))
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing in training: no cache")
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        seen = None if cache is None else seen_tokens(cache)

        hidden_states = inputs_embeds
        stages.add("the embeddings" if input_ids is not None else "inputs_embeds", hidden_states)
        sync = training_sync(self.config.fp_sync_ranks, self.training, hidden_states.device)
        hidden_states, all_hidden_states, fp_iterations, fp_residual = self.run_blocks(
            hidden_states, cache, mask, fp_max_iter, fp_tol, stages, output_hidden_states, sync, fp_solve_chunk)
        if cache is not None:
            set_seen_tokens(cache, None if seen is None else seen + hidden_states.shape[1])
        if owns_report:
            tol = fp_tol if fp_tol is not None else self.config.fp_tol
            check_forward(self, stages, fp_residual, tol, warn=not self.training)

        if not return_dict:
            output = [hidden_states, cache, all_hidden_states, fp_iterations, fp_residual]
            return tuple(v for v in output if v is not None)
        return expose_cache(FPMambaOutput(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=all_hidden_states,
            fp_iterations=fp_iterations,
            fp_residual=fp_residual,
        ))


# The ablation switches a conversion refuses at a non-default value: the source model has the conv (its weights would
# go unused) and B, C's projections. (The mixer is an added part: a low-rank mixer_proj_rank converts exactly too.)
CONVERSION_KEEPS_DEFAULT = ("use_short_conv", "bc_hidden_dependence")


class FPMambaForCausalLM(FPMambaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: FPMambaConfig) -> None:
        super().__init__(config)
        self.backbone = FPMambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.backbone.set_input_embeddings(new_embeddings)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        fp_max_iter: int | None = None,
        fp_tol: float | None = None,
        cache_params: Cache | None = None,
        past_key_values: Cache | None = None,
        fp_log: GenerationLog | None = None,
        fp_solve_chunk: int | None = None,
        **kwargs: Any,
    ) -> tuple | FPMambaCausalLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): next-token targets; they
            are shifted inside the model (labels = input_ids works), -100 is ignored.
        shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*, in kwargs): targets
            already aligned with the logits (used instead of shifting `labels`), e.g. `fpmamba_hf.tasks` labels.
        cache (or cache_params / past_key_values), fp_max_iter, fp_tol, fp_solve_chunk: see FPMambaModel.forward.
        fp_log: set by generate(), the call's own telemetry (per call, so nested and concurrent calls never mix).
        """
        check_call_keywords(kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = resolve_cache(cache=cache, cache_params=cache_params, past_key_values=past_key_values)
        tol = self.config.fp_tol
        if fp_log is not None and fp_log.compile_step and self._decode_step_applies(
                input_ids, inputs_embeds, cache, labels, output_hidden_states, attention_mask, use_cache,
                logits_to_keep, fp_log, kwargs):
            fp_max_iter, fp_tol, _ = _call_budget(fp_max_iter, fp_tol, fp_solve_chunk)  # one token: no chunks
            self.backbone._check_live_config()
            seen = seen_tokens(cache)
            logits, fp_iterations, fp_residual, magnitudes, names = _run_decode_step(
                self, input_ids, cache, fp_max_iter, fp_tol)
            set_seen_tokens(cache, None if seen is None else seen + 1)
            outputs = FPMambaOutput(cache=cache, fp_iterations=fp_iterations, fp_residual=fp_residual)
            fp_log.record(fp_iterations, fp_residual, names, magnitudes, fp_tol if fp_tol is not None else tol)
        else:
            stages = StageFlags()
            outputs = self.backbone(
                input_ids,
                inputs_embeds=inputs_embeds,
                cache=cache,
                use_cache=use_cache,
                output_hidden_states=output_hidden_states,
                return_dict=True,
                attention_mask=attention_mask,
                fp_max_iter=fp_max_iter,
                fp_tol=fp_tol,
                fp_solve_chunk=fp_solve_chunk,
                fp_stages=stages,
                # Inside generate(), every forward after the first feeds tokens this model generated.
                fp_trusted_ids=fp_log is not None and bool(fp_log.iterations),
            )
            hidden_states = outputs.last_hidden_state
            if isinstance(logits_to_keep, int) and logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:]
            elif isinstance(logits_to_keep, torch.Tensor):
                hidden_states = hidden_states[:, logits_to_keep]
            logits = acc(self.lm_head(hidden_states.to(self.lm_head.weight.dtype)))  # fp32 (fp64 stays fp64)
            stages.add("the LM head", logits)
            if fp_tol is not None:
                tol = float(fp_tol)  # validated by the backbone
            if fp_log is not None:  # inside generate(): read back once when the call ends, not per token
                fp_log.record(outputs.fp_iterations, outputs.fp_residual, stages.names,
                              torch.stack(stages.magnitudes), tol)
            else:
                check_forward(self, stages, outputs.fp_residual, tol, warn=not self.training)
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            # transformers' causal-LM loss contract: `labels` are shifted inside; already aligned targets come as
            # `shift_labels` (labels[:, i] = target of position i); `num_items_in_batch` (Trainer, gradient
            # accumulation) turns the mean into sum / items so accumulated micro-batches equal one big batch.
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        if not return_dict:
            output = (logits, outputs.cache, outputs.hidden_states, outputs.fp_iterations, outputs.fp_residual)
            output = tuple(v for v in output if v is not None)
            return ((loss,) + output) if loss is not None else output
        return expose_cache(FPMambaCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            fp_iterations=outputs.fp_iterations,
            fp_residual=outputs.fp_residual,
        ))

    # ------------------------------------------------------------------------------------------ generation
    def _decode_step_applies(self, input_ids, inputs_embeds, cache, labels, output_hidden_states, attention_mask,
                             use_cache, logits_to_keep, fp_log: GenerationLog, kwargs: dict) -> bool:
        """Whether this forward is a plain decode step of generate() that the compiled step computes: one token per
        row that this model generated (the third forward of the call on: the prefill and the first decode step run
        eagerly, which also runs the kernels' first-use self-checks), a cache with a state, no gradients, nothing
        asked for beyond the logits and the telemetry."""
        return (input_ids is not None and inputs_embeds is None and input_ids.dim() == 2 and input_ids.shape[1] == 1
                and len(fp_log.iterations) >= 2 and cache is not None and has_state(cache)
                and not torch.is_grad_enabled() and labels is None and kwargs.get("shift_labels") is None
                and not output_hidden_states and attention_mask is None and use_cache is not False
                and isinstance(logits_to_keep, int) and logits_to_keep in (0, 1))

    def decode_step(self, input_ids: torch.LongTensor, cache: Cache, fp_max_iter: int | None,
                    fp_tol: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """One decode step of generate(), the unit that `fp_compile` compiles (on CUDA with CUDA graphs, one per
        batch size): ids (b, 1) this model generated, `cache` holding the state (updated in place). Returns logits
        (b, 1, vocab) fp32, fp_iterations (b, layers), fp_residual (b, layers), the stages' largest magnitudes
        (stages,) and the stage names; no host sync, no Python state changed, no check (the caller records them)."""
        stages = StageFlags()
        hidden_states = self.backbone.embeddings(input_ids)
        stages.add("the embeddings", hidden_states)
        hidden_states, _, fp_iterations, fp_residual = self.backbone.run_blocks(
            hidden_states, cache, None, fp_max_iter, fp_tol, stages)
        logits = acc(self.lm_head(hidden_states.to(self.lm_head.weight.dtype)))
        stages.add("the LM head", logits)
        return logits, fp_iterations, fp_residual, torch.stack(stages.magnitudes), stages.names

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        next_sequence_length: int | None = None,
        cache_params: Cache | None = None,
        **kwargs: Any,
    ) -> dict:
        cache = resolve_cache(cache=cache, cache_params=cache_params)  # generate()'s name: GENERATE_CACHE_NAME
        if is_first_iteration and cache is not None and has_state(cache):
            # Continuing from a returned cache: the input is the full sequence; feed only what the cache has not
            # consumed (the last generated token, which generate() never feeds, and the new ones).
            seen = seen_tokens(cache)
            length = (inputs_embeds if inputs_embeds is not None else input_ids).shape[1]
            if seen is None:
                raise ValueError("generate() can continue only from a cache filled by this model's forward() or "
                                 "generate() (it counts the positions it has consumed)")
            if length <= seen:
                raise ValueError(
                    f"generate() was given {length} positions and a cache that already holds {seen}: pass the full "
                    "sequence (the cached one followed by at least one new token); generate() will not re-feed "
                    "positions the cache has consumed"
                )
            next_sequence_length = length - seen
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            attention_mask=attention_mask,
            is_first_iteration=is_first_iteration,
            next_sequence_length=next_sequence_length,
            **{GENERATE_CACHE_NAME: cache},
            **kwargs,
        )
        if use_cache and not is_first_iteration:
            # Decode steps feed one real token; the padding is already folded into the cached state.
            model_inputs["attention_mask"] = None
        return model_inputs

    def _prepare_generation_config(self, generation_config, **kwargs: Any):
        """`fp_max_iter` / `fp_tol` / `fp_solve_chunk` set in generation_config (e.g. generation_config.json) become
        model kwargs."""
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        check_call_keywords({k: v for k, v in vars(generation_config).items() if not k.startswith("_")})
        for key in FP_CALL_KEYS:
            value = getattr(generation_config, key, None)
            if key not in model_kwargs and value is not None:
                model_kwargs[key] = value
        return generation_config, model_kwargs

    def generate(self, *args: Any, **kwargs: Any):
        """GenerationMixin.generate, plus on the output (with `return_dict_in_generate=True`) `fp_iterations`
        (LongTensor (rows, new_tokens, num_layers)) and `fp_residual` (FloatTensor, same shape): rows are the
        generated sequences (batch x num_beams for beam search, where rows follow the beams of each step, not the
        returned sequences), and the cache as `cache` on every transformers version (before 5.24 also as
        `past_key_values`). A returned cache continues with `cache=` (or `cache_params=` / `past_key_values=`) and
        the full sequence: previous sequences followed by the new tokens. Non-finite values raise and unconverged
        steps warn once, when the call ends (no host sync per token)."""
        cache = resolve_cache(**{name: kwargs.pop(name, None) for name in CACHE_NAMES})
        if cache is not None:
            kwargs[GENERATE_CACHE_NAME] = cache
        log = GenerationLog(compile_step=self.config.fp_compile)
        out = super().generate(*args, fp_log=log, **kwargs)
        check_generation(self, log)
        if isinstance(out, ModelOutput):
            if out.get("cache") is None and out.get("past_key_values") is not None:
                out["cache"] = out["past_key_values"]  # one name for users on either side of transformers 5.24
            if log.iterations:
                out["fp_iterations"] = torch.stack(log.iterations, dim=1)
                out["fp_residual"] = torch.stack(log.residual, dim=1)
        return out

    def save_pretrained(self, *args: Any, **kwargs: Any):
        """PreTrainedModel.save_pretrained; fp_* defaults set on generation_config are kept in the file."""
        generation_config = getattr(self, "generation_config", None)
        if generation_config is not None and any(getattr(generation_config, k, None) is not None
                                                 for k in FP_CALL_KEYS):
            # A generation config derived from the model config is re-derived on load, dropping every key it
            # does not know (our fp_* keys): mark it as the user's own so from_pretrained reads it as saved.
            generation_config._from_model_config = False
        return super().save_pretrained(*args, **kwargs)

    # ------------------------------------------------------------------------------------------ conversion
    @classmethod
    def from_mamba2(cls, model_or_path: Any, **config_overrides: Any) -> "FPMambaForCausalLM":
        """Convert a transformers Mamba2ForCausalLM (instance or path) into an FP-Mamba whose fixed point is exactly
        the Mamba-2 output: mixer gain 0 (Q = I), y-projections 0, B/C not normalised (Mamba-2 does not).
        The mixers keep their random directions, so fine-tuning can grow the gain into a dense RNN."""
        return cls._from_source("mamba2", model_or_path, config_overrides)

    @classmethod
    def from_mamba(cls, model_or_path: Any, **config_overrides: Any) -> "FPMambaForCausalLM":
        """Convert a transformers MambaForCausalLM (instance or path) into an FP-Mamba on the Mamba-1 backbone whose
        fixed point is exactly the Mamba output: mixer gain 0 (Q = I), y-projections 0 (W_zy too), no in-loop norm
        and B/C not normalised (Mamba has neither). Either gate position (mamba1_gate) then computes Mamba's."""
        return cls._from_source("mamba1", model_or_path, config_overrides)

    @classmethod
    def _from_source(cls, backbone: str, model_or_path: Any, config_overrides: dict[str, Any]) -> "FPMambaForCausalLM":
        """The conversion of a transformers model into the FP model of `backbone` (its layer class says how)."""
        import transformers

        layer_cls = backbone_layer(backbone)
        source_cls = getattr(transformers, layer_cls.source_model)
        source = source_cls.from_pretrained(model_or_path) if isinstance(model_or_path, str) else model_or_path
        values = layer_cls.config_from_source(source)
        values.update(config_overrides)
        for name in CONVERSION_KEEPS_DEFAULT:  # the source has these parts: an ablation of them is not a conversion
            default = FPMambaConfig.__dataclass_fields__[name].default
            if values.get(name, default) != default:
                raise ValueError(f"from_{layer_cls.source_model.removesuffix('ForCausalLM').lower()}: {name}="
                                 f"{values[name]!r} cannot convert (the converted model computes its source "
                                 f"exactly); convert with {name}={default!r}, or build the ablation from its config")
        model = cls(FPMambaConfig(**values)).to(source.dtype)
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
        added = tuple(f".mixer.{prefix}" for prefix in layer_cls.added_parameters)
        if unexpected or any(not any(a in k for a in added) for k in missing):
            raise ValueError(f"from_{backbone}: weights do not map 1:1 (missing {missing}, unexpected {unexpected})")
        for block in model.backbone.layers:
            block.mixer.start_as_source()
        if model.config.tie_word_embeddings:
            model.tie_weights()
        return model

# The compiled decode steps, per model and device type; weak keys, and the unbound method inside, so a model is never
# kept alive by its compiled step.
_DECODE_STEPS: "weakref.WeakKeyDictionary[FPMambaForCausalLM, dict[str, CompiledOrEager]]" = weakref.WeakKeyDictionary()


def _run_decode_step(model: FPMambaForCausalLM, input_ids: torch.LongTensor, cache: Cache, fp_max_iter: int | None,
                     fp_tol: float | None):
    """`model.decode_step` through torch.compile (fullgraph, static shapes: one graph per batch size; on CUDA mode
    "reduce-overhead", i.e. CUDA graphs, with the cache's tensors marked as static addresses and the outputs copied
    out of the graph's buffers, which the next replay overwrites). Falls back to eager with one warning per model and
    device type where the step cannot compile (e.g. a per-token solve that takes host syncs: the PyTorch path of a
    map that reads y)."""
    device = input_ids.device.type
    steps = _DECODE_STEPS.setdefault(model, {})
    if device not in steps:
        options = {"fullgraph": True, "dynamic": False, **({"mode": "reduce-overhead"} if device == "cuda" else {})}
        steps[device] = CompiledOrEager(FPMambaForCausalLM.decode_step, "generate()'s decode step", **options)
    if device != "cuda":
        return steps[device](model, input_ids, cache, fp_max_iter, fp_tol)
    for layer in cache.layers:
        torch._dynamo.mark_static_address(layer.conv_states[0])
        torch._dynamo.mark_static_address(layer.recurrent_states[0])
    torch.compiler.cudagraph_mark_step_begin()
    *tensors, names = steps[device](model, input_ids, cache, fp_max_iter, fp_tol)
    return (*(t.clone() for t in tensors), names)


__all__ = ["FPMambaForCausalLM", "FPMambaModel", "FPMambaPreTrainedModel"]
