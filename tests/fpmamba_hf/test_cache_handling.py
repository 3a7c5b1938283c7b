"""A cache handed in is used or refused, under each of its names (`cache`; `cache_params`, `past_key_values` from
before transformers 5.24), and generate() continues from the cache it returned."""

import copy

import pytest
import torch

from fpmamba_hf.cache import CACHE_NAMES
from tests.fpmamba_hf.helpers import VOCAB, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(fp_tol=1e-5, fp_max_iter=200, fp_max_iter_eval=200, fp_train_quantile=1.0)


def _continued_logits(model, name: str, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full = model.eval()(ids).logits[:, -3:]
        cache = model(ids[:, :6], use_cache=True).cache
        model.train(training)
        try:
            part = model(ids[:, 6:], **{name: cache}).logits
        finally:
            model.eval()
    return full, part


@pytest.mark.parametrize("name", CACHE_NAMES)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_cache_handed_in_is_used_in_every_mode(model, name, training):
    full, part = _continued_logits(model, name, training)
    torch.testing.assert_close(part, full, atol=1e-4, rtol=1e-4)


def test_a_cache_with_use_cache_false_is_refused(model):
    ids = torch.randint(0, VOCAB, (1, 4))
    cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="use_cache=False"):
        model(ids[:, :1], cache=cache, use_cache=False)


def test_two_different_caches_are_refused(model):
    ids = torch.randint(0, VOCAB, (1, 4))
    a = model(ids, use_cache=True).cache
    b = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="Both `past_key_values` and `cache` are set .* Pass the cache once"):
        model(ids[:, :1], cache=a, past_key_values=b)


def test_the_output_cache_reads_under_its_old_name(model):
    """Code written for transformers < 5.24 reads `out.cache_params`: the same object on every version."""
    out = model(torch.randint(0, VOCAB, (1, 4)), use_cache=True)
    assert out.cache is not None and out.cache_params is out.cache


def test_a_cache_under_gradient_checkpointing_in_training_is_refused():
    model = tiny_model()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, VOCAB, (1, 4))
    cache = model.eval()(ids, use_cache=True).cache
    model.train()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model(ids[:, :1], cache=cache)


@pytest.mark.parametrize("name", CACHE_NAMES)
@pytest.mark.parametrize("new_tokens", [1, 3])
def test_generate_continues_from_its_returned_cache(model, new_tokens, name):
    """Multi-turn use: the continuation equals generating from scratch on the same tokens, the returned `cache`
    handed back under any of its names."""
    prompt = torch.randint(0, VOCAB, (2, 5))
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    turn = torch.cat([first.sequences, torch.randint(0, VOCAB, (2, new_tokens))], dim=1)
    continued = model.generate(turn, **{name: first.cache}, max_new_tokens=5, do_sample=False,
                               output_logits=True, return_dict_in_generate=True)
    scratch = model.generate(turn, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    assert torch.equal(continued.sequences, scratch.sequences)
    torch.testing.assert_close(torch.stack(continued.logits), torch.stack(scratch.logits), atol=1e-4, rtol=1e-4)
    assert continued.fp_iterations.shape == (2, 5, model.config.num_hidden_layers)


def test_generate_continues_a_left_padded_batch(model):
    prompt = torch.randint(1, VOCAB, (2, 6))
    mask = torch.ones_like(prompt)
    prompt[1, :2], mask[1, :2] = 0, 0
    first = model.generate(prompt, attention_mask=mask, max_new_tokens=3, do_sample=False,
                           return_dict_in_generate=True)
    extra = torch.randint(1, VOCAB, (2, 2))
    turn = torch.cat([first.sequences, extra], dim=1)
    turn_mask = torch.cat([mask, torch.ones(2, turn.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
    continued = model.generate(turn, attention_mask=turn_mask, cache=first.cache,
                               max_new_tokens=4, do_sample=False)
    scratch = model.generate(turn, attention_mask=turn_mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(continued, scratch)


def test_generate_refuses_a_cache_filled_elsewhere(model):
    """A cache this model's forward() or generate() did not fill (here a copy: the count of consumed positions is
    kept beside the original) cannot say which positions of the full sequence are new."""
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        cache = copy.deepcopy(model(ids, use_cache=True).cache)
    with pytest.raises(ValueError, match="filled by this model"):
        model.generate(torch.cat([ids, ids], 1), cache=cache, max_new_tokens=2)
