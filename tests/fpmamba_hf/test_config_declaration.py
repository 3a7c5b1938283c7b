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
from fpmamba_hf.configuration_fpmamba import BACKBONE_SWITCHES, CHOICES

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


# A valid value other than the default, for every switch that some backbones do not have.
NON_DEFAULT = {
    "use_short_conv": False, "use_conv_bias": False, "norm_per_group": False, "time_step_min": 0.002,
    "time_step_max": 0.05, "time_step_floor": 1e-3, "time_step_limit": (0.0, 1.0), "bc_hidden_dependence": False,
    "bc_norm": False, "dt_hidden_dependence": True, "time_step_rank": 3, "mamba1_gate": "after_loop",
    "mamba1_norm": "none",
}
SWITCH_CASES = [(backbone, field) for field in BACKBONE_SWITCHES for backbone in BACKBONES]


def test_the_backbone_switches_are_fields_on_registered_backbones():
    assert set(NON_DEFAULT) == set(BACKBONE_SWITCHES)
    for field, backbones in BACKBONE_SWITCHES.items():
        assert field in DECLARED and NON_DEFAULT[field] != FPMambaConfig.__dataclass_fields__[field].default
        assert backbones and set(backbones) <= set(BACKBONES), field


@pytest.mark.parametrize("backbone, field", SWITCH_CASES, ids=[f"{b}-{f}" for b, f in SWITCH_CASES])
def test_a_switch_the_backbone_does_not_have_is_refused_not_ignored(backbone, field):
    """e.g. rnn with dt_hidden_dependence / bc_norm / time_step_limit, mamba2 with mamba1_norm / mamba1_gate: refused
    naming the field; where the backbone has the switch it is taken; the default is taken everywhere."""
    default = FPMambaConfig.__dataclass_fields__[field].default
    assert getattr(FPMambaConfig(**SMALL, backbone=backbone, **{field: default}), field) == default
    if backbone in BACKBONE_SWITCHES[field]:
        assert getattr(FPMambaConfig(**SMALL, backbone=backbone, **{field: NON_DEFAULT[field]}), field) == \
            NON_DEFAULT[field]
    else:
        with pytest.raises(ValueError, match=rf"invalid {field}=.*backbone '{backbone}' does not have"):
            FPMambaConfig(**SMALL, backbone=backbone, **{field: NON_DEFAULT[field]})


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_saved_config_of_every_backbone_loads(backbone, tmp_path):
    """A saved config holds every switch, at its default where the backbone does not have it: it loads as saved."""
    config = FPMambaConfig(**SMALL, backbone=backbone)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert all(name in saved for name in BACKBONE_SWITCHES)
    loaded = FPMambaConfig.from_pretrained(tmp_path)
    assert loaded.backbone == backbone and loaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize("typo, field", [("mixer_rnak", "mixer_rank"), ("hiden_size", "hidden_size"),
                                         ("fp_maxiter", "fp_max_iter"), ("mamba1_gates", "mamba1_gate")])
def test_a_misspelled_field_is_refused_not_kept_as_an_attribute(typo, field):
    with pytest.raises(ValueError, match=rf"unknown keyword '{typo}': did you mean '{field}'\?"):
        FPMambaConfig(**SMALL, **{typo: 3})


def test_the_keys_transformers_writes_are_still_kept(tmp_path):
    """config.json's own keys, special token ids (sep_token_id is close to pad_token_id) and keys unlike any field
    load and stay attributes, from keywords and from a saved file."""
    extra = dict(architectures=["FPMambaForCausalLM"], torch_dtype="float32", transformers_version="5.25.0",
                 auto_map={"AutoConfig": "configuration_fpmamba.FPMambaConfig"}, sep_token_id=3,
                 decoder_start_token_id=1, _commit_hash=None, my_note="kept")
    config = FPMambaConfig(**SMALL, **extra)
    assert config.sep_token_id == 3 and config.my_note == "kept" and config.architectures == ["FPMambaForCausalLM"]
    config.save_pretrained(tmp_path)
    loaded = FPMambaConfig.from_pretrained(tmp_path)
    assert loaded.sep_token_id == 3 and loaded.my_note == "kept" and loaded.auto_map == extra["auto_map"]
