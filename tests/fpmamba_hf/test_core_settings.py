"""FPMambaConfig -> the core's typed settings (fpmamba_hf/core_settings.py), and checkpoints saved before the
channel mixer was named `channel_mixer`."""

import os

import pytest
import torch
from fpmamba_core.mixers import MIXERS, mixer_kind
from safetensors.torch import load_file, save_file

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_hf.core_settings import fixed_point_settings, layer_settings
from tests.fpmamba_hf.helpers import VOCAB, tiny_config
from tests.modeling import core


def test_the_core_tests_settings_are_the_configs_defaults():
    """tests/modeling builds layers without the config: its values must stay the config's defaults."""
    config = FPMambaConfig()
    assert layer_settings(config) == core.layer_settings()
    assert fixed_point_settings(config) == core.fixed_point_settings()


@pytest.mark.parametrize("kind", list(MIXERS))
def test_a_kinds_options_come_from_their_mixer_fields(kind):
    config = FPMambaConfig(mixer_type=kind)
    options = layer_settings(config).mixer.options
    assert set(options) == set(mixer_kind(kind).options)
    assert all(options[name] == getattr(config, f"mixer_{name}") for name in options)


def test_an_fp_field_edit_reaches_the_layers_at_the_next_call():
    model = FPMambaForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, VOCAB, (2, 6))
    model(ids)
    model.config.fp_max_iter_eval = 1
    out = model(ids)
    assert all(block.mixer.solver.max_iter_eval == 1 for block in model.backbone.layers)
    assert out.fp_iterations.eq(1).all()


@pytest.mark.parametrize(("name", "value"), [("fp_max_iter", 0), ("fp_max_iter", True), ("fp_tol", float("nan")),
                                             ("fp_tol", -1.0), ("fp_solve_chunk", -1), ("fp_solve_chunk", 1.5)])
def test_a_bad_per_call_budget_is_refused_by_one_rule_set(name, value):
    """The model and a layer called alone give the same error."""
    model = FPMambaForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=name) as by_model:
        model(torch.randint(0, VOCAB, (1, 4)), **{name: value})
    with pytest.raises(ValueError, match=name) as by_layer:
        model.backbone.layers[0].mixer(torch.randn(1, 4, 32), **{name: value})
    assert str(by_model.value) == str(by_layer.value)


def test_a_checkpoint_with_the_former_mixer_names_loads_exactly(tmp_path):
    """Before the rename, Q_t's parameters were `layers.{i}.mixer.mixer.*`; such files load into channel_mixer."""
    model = FPMambaForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    path = os.path.join(tmp_path, "model.safetensors")
    saved = load_file(path)
    old = {k.replace(".mixer.channel_mixer.", ".mixer.mixer."): v for k, v in saved.items()}
    assert any(".mixer.mixer." in k for k in old) and not any("channel_mixer" in k for k in old)
    save_file(old, path, metadata={"format": "pt"})
    loaded = FPMambaForCausalLM.from_pretrained(tmp_path).eval()
    expected = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # torch's own loading (e.g. the Trainer resuming from such a file) maps them too (the file leaves out the LM
    # head, tied to the embeddings).
    fresh = FPMambaForCausalLM(tiny_config()).eval()
    missing, unexpected = fresh.load_state_dict(old, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected
    assert all(torch.equal(fresh.state_dict()[k], expected[k]) for k in expected)
