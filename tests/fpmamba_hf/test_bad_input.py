"""Bad input raises a clear error naming the problem, before anything is computed or cached."""

import pytest
import torch

from fpmamba_hf import FPMambaConfig
from tests.fpmamba_hf.helpers import VOCAB, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_token_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, VOCAB]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 2]]))


def test_empty_sequence(model):
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(2, 0, dtype=torch.long))


def test_padding_inside_a_sequence(model):
    ids = torch.randint(0, VOCAB, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 0, 1, 0]])  # right padding alone is accepted (test_right_padding.py)
    with pytest.raises(ValueError, match="padding inside a sequence"):
        model(ids, attention_mask=mask)


def test_cache_of_the_wrong_batch_size(model):
    ids = torch.randint(0, VOCAB, (2, 5))
    cache = model(ids, use_cache=True).cache
    before = [layer.recurrent_states[0].clone() for layer in cache.layers]
    with pytest.raises(ValueError, match="batch of 2"):
        model(torch.randint(0, VOCAB, (3, 1)), cache=cache, use_cache=True)
    assert all(torch.equal(b, layer.recurrent_states[0]) for b, layer in zip(before, cache.layers))


def test_generate_refuses_to_refeed_a_filled_cache(model):
    ids = torch.randint(0, VOCAB, (1, 5))
    cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="re-feed"):
        model.generate(ids, cache=cache, max_new_tokens=2)


def test_wrong_cache_type(model):
    with pytest.raises(TypeError, match="DynamicCache"):
        model(torch.randint(0, VOCAB, (1, 3)), cache=object(), use_cache=True)


def test_bad_per_call_budget(model):
    ids = torch.randint(0, VOCAB, (1, 3))
    with pytest.raises(ValueError, match="fp_max_iter"):
        model(ids, fp_max_iter=0)
    for bad_tol in (-1.0, True):
        with pytest.raises(ValueError, match="fp_tol"):
            model(ids, fp_tol=bad_tol)


@pytest.mark.parametrize(
    "field, value",
    [("mixer_type", "circulant"), ("fp_tol", 0.0), ("fp_tol", float("nan")), ("head_dim", 7), ("n_groups", 3),
     ("fp_backward", "unrolled"), ("mixer_reflection_scale", 3), ("fp_train_quantile", 1.5), ("fp_max_iter", 0),
     ("vocab_size", 0), ("mixer_input", "product")],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FPMambaConfig(**{**dict(hidden_size=32, head_dim=16), field: value})


def test_diverging_iteration_is_reported_not_returned():
    model = tiny_model(num_hidden_layers=2)
    with torch.no_grad():
        model.backbone.layers[1].mixer.out_proj.weight.fill_(float("nan"))
        model.backbone.layers[1].mixer.in_proj.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="layer 1"):
        model(torch.randint(0, VOCAB, (1, 4)))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [(dict(input_ids=torch.zeros(2, 3, 4, dtype=torch.long)), ValueError, "input_ids must be integer token ids"),
     (dict(input_ids=torch.zeros(2, 3)), ValueError, "input_ids must be integer token ids"),
     (dict(input_ids=[[1, 2, 3]]), TypeError, "input_ids must be a torch.Tensor"),
     (dict(input_ids=__import__("numpy").array([[1, 2, 3]])), TypeError, "input_ids must be a torch.Tensor"),
     (dict(inputs_embeds=torch.zeros(2, 32)), ValueError, "inputs_embeds must have shape"),
     (dict(inputs_embeds=torch.zeros(1, 3, 31)), ValueError, "inputs_embeds must have shape"),
     (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=[[1, 1, 1]]), TypeError, "attention_mask")],
    ids=["3d-ids", "float-ids", "list", "numpy", "2d-embeds", "embeds-width", "list-mask"],
)
def test_malformed_inputs_get_a_clear_error_at_the_entry(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        model(**kwargs)
