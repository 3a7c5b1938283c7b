"""The harness's model settings are FPMambaConfig's knobs: same names, types and defaults, except the harness's own
values (HARNESS_DEFAULTS); recipes and recorded runs load and build valid configs that keep their values."""

import dataclasses
import json
from pathlib import Path

import pytest

from fpmamba_hf import FPMambaConfig
from fpmamba_hf.configuration_fpmamba import switch_applies
from fpmamba_lab.harness import HARNESS_DEFAULTS, MODEL_KINDS, ModelSpec
from fpmamba_lab.harness.models import DIAGONAL, SET_BY_RUN, model_config

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.json"))
RECORDED = RECIPES + sorted((ROOT / "docs" / "results").glob("*/results.json"))


def recorded_model_settings(path: Path) -> tuple[dict, list[str]]:
    """The model settings of a recipe or a recorded run, and the kinds it trains (a run's settings need to build
    only those: an LSTM run's width need not divide into FP-Mamba's heads)."""
    raw = json.loads(path.read_text())
    config = raw.get("config", raw)  # results.json nests the experiment config under "config"
    return config.get("model", {}), config.get("models") or list(MODEL_KINDS)


def test_model_spec_fields_are_the_config_knobs_with_their_defaults():
    spec_fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    knobs = {name: hint for name, hint in FPMambaConfig.field_types().items() if name not in SET_BY_RUN}
    assert set(spec_fields) == {"num_layers", *knobs}
    config_defaults = {f.name: f.default for f in dataclasses.fields(FPMambaConfig)}
    for name, hint in knobs.items():
        assert spec_fields[name].type == hint
        assert spec_fields[name].default == HARNESS_DEFAULTS.get(name, config_defaults[name]), name
    # Every harness value is an override (differs from the config's default): the list states all of them.
    assert all(value != config_defaults[name] for name, value in HARNESS_DEFAULTS.items())


def test_the_harness_reflection_scale_is_the_official_codes():
    assert ModelSpec().mixer_reflection_scale == 2 and FPMambaConfig().mixer_reflection_scale == 1


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.parent.name if p.name == "results.json" else p.stem)
def test_recipes_and_recorded_runs_keep_their_model_settings(path):
    settings, kinds = recorded_model_settings(path)
    spec = ModelSpec(**settings)
    for kind, forced in (("fpmamba", {}), ("diagonal", DIAGONAL)):
        if kind not in kinds:
            continue
        config = model_config(kind, spec, vocab_size=13, pad_token_id=7)
        assert isinstance(config, FPMambaConfig)
        expected = {name: value for name, value in {**HARNESS_DEFAULTS, **settings, **forced}.items()
                    if switch_applies(name, spec.backbone)}  # another backbone's switches stay at their defaults
        expected.pop("num_layers", None)
        built = {name: getattr(config, name) for name in expected}
        assert json.loads(json.dumps(built)) == json.loads(json.dumps(expected))  # JSON has lists, the config tuples
    if "mamba2" not in kinds:
        return
    mamba2 = model_config("mamba2", spec, vocab_size=13)
    assert (mamba2.hidden_size, mamba2.n_groups, mamba2.num_hidden_layers) == (spec.hidden_size, 1,
                                                                               spec.num_layers or 2)
