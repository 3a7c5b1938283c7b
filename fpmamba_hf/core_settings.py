"""FPMambaConfig -> the core's typed settings (fpmamba_core.settings): the one place that maps config fields onto
them. The model builds a layer's LayerSettings once, and its FixedPointSettings again whenever a fp_* field changed
(`FPMambaModel._check_live_config`)."""

from __future__ import annotations

from dataclasses import fields

from fpmamba_core.mixers import mixer_kind
from fpmamba_core.settings import FixedPointSettings, LayerSettings, MixerSettings

from .configuration_fpmamba import FPMambaConfig

# A mixer kind's option `name` is the config field `mixer_<name>` (e.g. Kronecker's kron_norm: mixer_kron_norm).
MIXER_OPTION_PREFIX = "mixer_"


def mixer_settings(config: FPMambaConfig) -> MixerSettings:
    """The channel mixer of every layer: the config's mixer_* fields, and the options its kind declares."""
    kind = mixer_kind(config.mixer_type)
    return MixerSettings(
        kind=config.mixer_type, input_mode=config.mixer_input, rank=config.mixer_rank,
        reflection_scale=config.mixer_reflection_scale, activation=config.mixer_activation,
        alpha_init=config.mixer_alpha_init, initializer_range=config.initializer_range,
        proj_rank=config.mixer_proj_rank,
        options={name: getattr(config, MIXER_OPTION_PREFIX + name) for name in kind.options},
    )


def layer_settings(config: FPMambaConfig) -> LayerSettings:
    """A layer's shape and switches: the config fields of the same names, and the mixer's settings."""
    values = {f.name: getattr(config, f.name) for f in fields(LayerSettings) if f.name != "mixer"}
    values["time_step_limit"] = tuple(config.time_step_limit)
    return LayerSettings(**values, mixer=mixer_settings(config))


def fixed_point_settings(config: FPMambaConfig) -> FixedPointSettings:
    """The solver knobs: the config's fp_<name> field for every FixedPointSettings field <name>."""
    return FixedPointSettings(**{f.name: getattr(config, "fp_" + f.name) for f in fields(FixedPointSettings)})


__all__ = ["fixed_point_settings", "layer_settings", "mixer_settings"]
