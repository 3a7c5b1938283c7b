"""What the user sets is what runs and what is saved: config edits, generation_config defaults, typos, types."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from fpmamba_hf import FPMambaConfig
from tests.fpmamba_hf.helpers import VOCAB, tiny_model


def test_editing_the_fp_settings_of_the_config_takes_effect_and_is_saved(tmp_path):
    model = tiny_model(fp_tol=1e-8)
    ids = torch.randint(0, VOCAB, (2, 6))
    model.config.fp_max_iter_eval = 3
    assert int(model(ids).fp_iterations.max()) == 3
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.fp_max_iter_eval == 3
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_editing_a_structural_field_is_refused():
    model = tiny_model()
    model.config.mixer_reflection_scale = 2
    with pytest.raises(ValueError, match="mixer_reflection_scale"):
        model(torch.randint(0, VOCAB, (1, 3)))


def test_an_edit_of_wrong_type_is_refused_at_the_next_call():
    model = tiny_model()
    model.config.fp_max_iter_eval = "8"
    with pytest.raises(ValueError, match="fp_max_iter_eval"):
        model(torch.randint(0, VOCAB, (1, 3)))


def test_generation_config_fp_defaults_survive_save_and_load(tmp_path):
    model = tiny_model(fp_tol=1e-8)
    model.generation_config.fp_max_iter = 2
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.generation_config.fp_max_iter == 2
    out = reloaded.generate(torch.randint(0, VOCAB, (1, 4)), max_new_tokens=3, do_sample=False,
                            return_dict_in_generate=True)
    assert int(out.fp_iterations.max()) == 2


def test_misspelled_fp_keywords_raise():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 3))
    with pytest.raises(TypeError, match="fp_maxiter"):
        model(ids, fp_maxiter=1)
    with pytest.raises(TypeError, match="fp_maxiter"):
        model.backbone(ids, fp_maxiter=1)
    with pytest.raises(ValueError, match="fp_maxiter"):
        model.generate(ids, max_new_tokens=2, fp_maxiter=1)
    model.generation_config.fp_maxiter = 1
    with pytest.raises(TypeError, match="fp_maxiter"):
        model.generate(ids, max_new_tokens=2)


def test_numpy_numbers_are_valid_caps_and_save_as_json(tmp_path):
    config = FPMambaConfig(hidden_size=32, head_dim=16, fp_max_iter=np.int64(4), fp_tol=np.float32(1e-3))
    assert type(config.fp_max_iter) is int and type(config.fp_tol) is float
    config.save_pretrained(tmp_path)
    model = tiny_model(fp_tol=1e-8)
    assert int(model(torch.randint(0, VOCAB, (1, 3)), fp_max_iter=np.int64(2)).fp_iterations.max()) == 2


@pytest.mark.parametrize(
    "field, value, message",
    [("bc_norm", "false", "bc_norm"), ("dt_hidden_dependence", 1, "dt_hidden_dependence"),
     ("use_cache", "no", "use_cache"), ("time_step_limit", (0.5, 0.1), "time_step_limit"),
     ("time_step_limit", 5, "time_step_limit"), ("time_step_limit", (-1.0, 1.0), "time_step_limit"),
     ("mixer_type", 3, "mixer_type"), ("num_heads", 3, "num_heads")],
)
def test_wrong_types_and_inconsistent_values_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        FPMambaConfig(**{**dict(hidden_size=32, head_dim=16), field: value})


def test_a_consistent_num_heads_is_accepted():
    assert FPMambaConfig(hidden_size=32, head_dim=16, num_heads=4).num_heads == 4
    assert FPMambaConfig(hidden_size=32, head_dim=16, time_step_limit=[0.0, 0.5]).time_step_limit == (0.0, 0.5)
