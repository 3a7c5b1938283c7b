"""FPMambaConfig is the one declaration of every knob: each field documented (type and default as declared), its
type checked from the annotation, its value from the rules the layer relies on."""

import dataclasses
import json

import numpy as np
import pytest
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.fixed_point import SOLVERS
from fpmamba_core.mixers import MIXER_INPUTS, MIXERS

from fpmamba_hf import FPMambaConfig
from fpmamba_hf.configuration_fpmamba import CHOICES

SMALL = dict(hidden_size=32, head_dim=16)
DECLARED = vars(FPMambaConfig)["__annotations__"]


def test_every_field_is_documented_with_its_declared_type_and_default():
    defaults = {f.name: f.default for f in dataclasses.fields(FPMambaConfig)}
    docs = FPMambaConfig.field_docs()
    assert list(docs) == list(DECLARED)  # every field, in declaration order, nothing else
    for name, doc in docs.items():
        assert doc.type == DECLARED[name], name
        assert doc.default in (repr(defaults[name]), f'"{defaults[name]}"'), name
        assert doc.text, name


def test_the_choices_are_the_core_packages():
    assert CHOICES["mixer_type"] is MIXERS and CHOICES["backbone"] is BACKBONES  # the registries, read live
    assert CHOICES["mixer_input"] == MIXER_INPUTS
    assert CHOICES["fp_solver"] == SOLVERS


@pytest.mark.parametrize(
    "field, value",
    [("bc_norm", "false"), ("use_bias", 0), ("fp_sync_ranks", None), ("fp_max_iter", 4.0), ("hidden_size", True),
     ("mixer_rank", "2"), ("fp_tol", True), ("fp_tol", "0.01"), ("mixer_type", None), ("time_step_limit", (0.0,)),
     ("time_step_limit", ("0", 1.0)), ("pad_token_id", 1.0), ("eos_token_id", [1, "2"]), ("vocab_size", np.float32(8)),
     ("time_step_rank", 2.0)],
)
def test_wrong_types_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"FPMamba config: invalid {field}=.*: must be of type "):
        FPMambaConfig(**{**SMALL, field: value})


def test_ints_numpy_numbers_and_json_lists_are_accepted():
    config = FPMambaConfig(**SMALL, fp_damping=1, mixer_reflection_scale=2, fp_anderson_m=np.int32(3),
                           fp_train_quantile=np.float64(0.5), time_step_limit=[0, 1], eos_token_id=[1, 2])
    assert config.fp_damping == 1 and config.mixer_reflection_scale == 2
    assert type(config.fp_anderson_m) is int and type(config.fp_train_quantile) is float
    assert config.time_step_limit == (0, 1)
    assert json.loads(config.to_json_string())["time_step_limit"] == [0, 1]


def test_check_sees_edits_after_construction():
    config = FPMambaConfig(**SMALL)
    config.fp_max_iter = 2.5
    with pytest.raises(ValueError, match="fp_max_iter"):
        config.check()
    config.fp_max_iter = 2
    config.time_step_limit = [0.0, 2.0]
    config.check()
    assert config.time_step_limit == (0.0, 2.0)


@pytest.mark.parametrize(
    "field, value",
    [("mixer_activation", "gelu"), ("mixer_alpha_init", 1.0), ("fp_damping", 0.0), ("fp_damping_decay", 1.5),
     ("fp_solver", "newton"), ("fp_anderson_m", 0), ("time_step_min", 0.5), ("time_step_floor", -1.0),
     ("initializer_range", float("inf")), ("layer_norm_epsilon", 0.0), ("fp_backward_tol", float("nan")),
     ("time_step_rank", "fast"), ("time_step_rank", 0), ("mamba1_gate", "inside"), ("mamba1_norm", "rmsnorm")],
)
def test_wrong_values_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"FPMamba config: invalid {field}="):
        FPMambaConfig(**{**SMALL, field: value})


def test_head_layout_is_checked_for_mamba2_only():
    """head_dim and n_groups shape Mamba-2's heads; mamba1 has none, so a d_inner they do not divide is fine there."""
    with pytest.raises(ValueError, match="invalid head_dim"):
        FPMambaConfig(hidden_size=24, head_dim=32)
    assert FPMambaConfig(backbone="mamba1", hidden_size=24, head_dim=32, time_step_rank=3).time_step_rank == 3
