"""FPMambaConfig: the transformers configuration of FP-Mamba (model_type "fp_mamba").

Names follow Mamba2Config where they are shared (hidden_size, state_size, head_dim, expand, n_groups, conv_kernel,
chunk_size, ...). The layer knobs and their defaults live in one place, `modeling.FPMambaLayerConfig`; this class
exposes them as config fields and validates them through it.
"""

from __future__ import annotations

import numbers

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from fpmamba_core.layer import FPMambaLayerConfig

_L = FPMambaLayerConfig()  # the single source of the layer defaults
# Fields of the model config beyond the layer's (numbers among them are normalised like the layer's).
_OWN_FIELDS = ("vocab_size", "num_hidden_layers")


@strict(accept_kwargs=True)
class FPMambaConfig(PreTrainedConfig):
    r"""
    Configuration of an FP-Mamba language model: Mamba-2 blocks whose mixer output is the fixed point of a
    diagonal linear RNN iterated with a structured channel mixer Q_t.

    Backbone (as Mamba2Config): vocab_size, hidden_size, num_hidden_layers, state_size, head_dim, expand
    (d_inner = expand * hidden_size = num_heads * head_dim), n_groups, conv_kernel, chunk_size, use_bias,
    use_conv_bias, layer_norm_epsilon, residual_in_fp32, time_step_min/max/floor/limit, initializer_range,
    rescale_prenorm_residual, tie_word_embeddings. norm_per_group: gated RMSNorm per group of channels (Mamba-2's
    original) or over all of d_inner.

    Mixer: mixer_type ("householder" | "dplr" | "kronecker" | "none"), mixer_rank (reflections / rank r),
    mixer_input ("concat" = [x_t; y_{t-1}], "sum" = x_t + y_{t-1}, "x" = no hidden dependence),
    mixer_reflection_scale (1 = paper, 2 = official code, allows negative eigenvalues), mixer_activation,
    mixer_alpha_init (initial mixing strength; Q starts near the identity).
    bc_norm: L2-normalise B and C per group. dt_hidden_dependence: dt also depends on y_{t-1}.

    Fixed-point solver: fp_max_iter (cap in training), fp_max_iter_eval (cap in eval and generation), fp_tol
    (relative inf-norm residual, per sequence), fp_damping / fp_damping_decay / fp_damping_patience,
    fp_train_quantile (in training the batch stops when this fraction of rows converged).
    fp_solver: the step between evaluations, "picard" (damped fixed-point iteration) or "anderson" (Anderson
    acceleration mixing the last fp_anderson_m evaluations per sequence; same stopping rule, caps and gradients).
    Per-call `fp_max_iter` / `fp_tol` arguments of forward() and generate() override these caps and tolerance.
    Gradients: fp_backward ("one_step": fp_backward_steps applications from the detached fixed point;
    "implicit": adjoint fixed point, capped by fp_backward_max_iter at fp_backward_tol).
    fp_sync_ranks: in training under torch.distributed (more than one rank), all ranks run the same number of
    iterations per solve (one all-reduce per iteration), so sharded training cannot deadlock; see
    fpmamba_hf/distributed.py.
    """

    model_type = "fp_mamba"
    # Trainer's predictions keep the logits only: the cache and the telemetry are not predictions (see
    # fpmamba_hf.callbacks.FixedPointLogCallback for telemetry in the logs).
    keys_to_ignore_at_inference = ["cache_params", "past_key_values", "fp_iterations", "fp_residual"]

    vocab_size: int = 32000
    hidden_size: int = _L.hidden_size
    num_hidden_layers: int = 4
    state_size: int = _L.state_size
    head_dim: int = _L.head_dim
    expand: int = _L.expand
    n_groups: int = _L.n_groups
    conv_kernel: int = _L.conv_kernel
    chunk_size: int = _L.chunk_size
    use_bias: bool = _L.use_bias
    use_conv_bias: bool = _L.use_conv_bias
    layer_norm_epsilon: float = _L.layer_norm_epsilon
    norm_per_group: bool = _L.norm_per_group
    residual_in_fp32: bool = True
    time_step_min: float = _L.time_step_min
    time_step_max: float = _L.time_step_max
    time_step_floor: float = _L.time_step_floor
    time_step_limit: list[float] | tuple[float, ...] = _L.time_step_limit
    initializer_range: float = _L.initializer_range
    rescale_prenorm_residual: bool = False
    mixer_type: str = _L.mixer_type
    mixer_rank: int = _L.mixer_rank
    mixer_input: str = _L.mixer_input
    mixer_reflection_scale: float | int = _L.mixer_reflection_scale
    mixer_activation: str = _L.mixer_activation
    mixer_alpha_init: float = _L.mixer_alpha_init
    bc_norm: bool = _L.bc_norm
    dt_hidden_dependence: bool = _L.dt_hidden_dependence
    fp_max_iter: int = _L.fp_max_iter
    fp_max_iter_eval: int = _L.fp_max_iter_eval
    fp_tol: float = _L.fp_tol
    fp_damping: float = _L.fp_damping
    fp_damping_decay: float = _L.fp_damping_decay
    fp_damping_patience: int = _L.fp_damping_patience
    fp_train_quantile: float = _L.fp_train_quantile
    fp_solver: str = _L.fp_solver
    fp_anderson_m: int = _L.fp_anderson_m
    fp_backward: str = _L.fp_backward
    fp_backward_steps: int = _L.fp_backward_steps
    fp_backward_max_iter: int = _L.fp_backward_max_iter
    fp_backward_tol: float = _L.fp_backward_tol
    fp_sync_ranks: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs) -> None:
        """Every knob is checked at construction (and on load), types included; a ValueError names the offending
        field. numpy scalars become Python numbers (so the config saves as JSON). `num_heads` (a Mamba2Config
        field, derived here) is accepted when it agrees with expand * hidden_size / head_dim."""
        for name in FPMambaLayerConfig.field_names() + _OWN_FIELDS:
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
                setattr(self, name, int(value))
            elif isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                setattr(self, name, float(value))
        for name in ("vocab_size", "num_hidden_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FPMamba config: invalid {name}={value!r}: must be a positive integer")
        for name in ("residual_in_fp32", "rescale_prenorm_residual", "fp_sync_ranks", "use_cache",
                     "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FPMamba config: invalid {name}={getattr(self, name)!r}: must be of type bool")
        self.layer_config().validate()
        num_heads = kwargs.pop("num_heads", None)
        if num_heads is not None and num_heads != self.num_heads:
            raise ValueError(
                f"FPMamba config: invalid num_heads={num_heads!r}: it is derived as expand * hidden_size / head_dim "
                f"= {self.num_heads}; set head_dim (or leave num_heads out)"
            )
        super().__post_init__(**kwargs)

    def layer_config(self) -> FPMambaLayerConfig:
        """The per-layer settings (a plain dataclass of the `modeling` package)."""
        values = {name: getattr(self, name) for name in FPMambaLayerConfig.field_names()}
        if isinstance(values["time_step_limit"], list):  # JSON has no tuples
            values["time_step_limit"] = tuple(values["time_step_limit"])
        return FPMambaLayerConfig(**values)

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


__all__ = ["FPMambaConfig"]
