"""generate() with rollback, on every backbone: assisted (speculative) decoding with an FP-Mamba or a transformers
Mamba-2 assistant, speculative sampling and prompt lookup. Transformers (5.25+) records the cache's past and crops it
back to the last accepted candidate (fpmamba_hf/rollback.py): the tokens are plain greedy decoding's (fp64, tight
tolerance) also where candidates are rejected, and a cache that generate() returns continues the sequence."""

import warnings

import pytest
import torch
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.compiled import CompileFallbackWarning
from torch._dynamo.utils import counters
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.cache_utils import Cache, DynamicCache

from tests.fpmamba_hf.helpers import BACKBONE_SETTINGS, VOCAB, fp64_model, tiny_model

# fp64 and a tight tolerance, so that "the greedy tokens" is checked well below fp32 rounding.
TIGHT = dict(fp_tol=1e-9, fp_max_iter=600, fp_max_iter_eval=600)
# The tiny FP-RNN at the default init barely moves the residual stream: its greedy tokens hardly depend on the input,
# which no candidate would ever miss. Larger weights make it a model that drafts can disagree with.
LIVELY = {"rnn": dict(initializer_range=0.2)}
NEW = 8  # tokens generated with rollback; a continuation adds MORE
MORE = 4


def tight_model(backbone: str, seed: int = 0, **overrides):
    settings = {**BACKBONE_SETTINGS.get(backbone, {}), **LIVELY.get(backbone, {}), **TIGHT, **overrides}
    return fp64_model(backbone, "householder", seed=seed, **settings)


def prompt(length: int = 6, batch: int = 1, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assistant_for(kind: str, backbone: str):
    """A draft model of the same vocabulary: another FP-Mamba (other weights: it drafts tokens the model rejects), the
    model's own weights (every draft accepted), or a transformers Mamba-2."""
    if kind == "fp_mamba":
        return tight_model(backbone, seed=1)
    if kind == "same_weights":
        return tight_model(backbone, seed=0)
    torch.manual_seed(2)
    config = Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=2,
                          expand=2, num_hidden_layers=2, chunk_size=8)
    return Mamba2ForCausalLM(config).double().eval()


@pytest.fixture
def rollbacks(monkeypatch) -> list[tuple[Cache, int]]:
    """(cache, tokens dropped) of every `crop` of a cache in the test, each still run by transformers."""
    seen: list[tuple[Cache, int]] = []
    crop = Cache.crop

    def recording_crop(cache: Cache, tokens_to_remove: int) -> None:
        seen.append((cache, -tokens_to_remove))
        crop(cache, tokens_to_remove)

    monkeypatch.setattr(Cache, "crop", recording_crop)
    return seen


def _greedy_then_continued(model, ids: torch.Tensor, rollbacks, **rollback_kwargs) -> torch.Tensor:
    """Greedy tokens generated with `rollback_kwargs` (an assistant, prompt lookup), checked against plain greedy
    decoding, then MORE plain greedy tokens continuing the cache generate() returned; returns the rollbacks of the
    model's own cache (tokens dropped)."""
    greedy = model.generate(ids, max_new_tokens=NEW + MORE, do_sample=False)
    out = model.generate(ids, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True, **rollback_kwargs)
    assert torch.equal(out.sequences, greedy[:, :ids.shape[1] + NEW])
    # The returned cache was rolled back to the last accepted token and still records: it continues the sequence.
    more = model.generate(out.sequences, cache=out.cache, max_new_tokens=MORE, do_sample=False)
    assert torch.equal(more, greedy)
    return [dropped for cache, dropped in rollbacks if cache is out.cache]


@pytest.mark.parametrize("assistant", ["fp_mamba", "same_weights", "mamba2"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_assisted_decoding_gives_the_greedy_tokens(backbone, assistant, rollbacks):
    model = tight_model(backbone)
    dropped = _greedy_then_continued(model, prompt(), rollbacks, assistant_model=assistant_for(assistant, backbone))
    assert dropped, "assisted decoding never rolled the cache back"
    if assistant != "same_weights":
        assert max(dropped) > 0, "the weak assistant's candidates were never rejected"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_prompt_lookup_gives_the_greedy_tokens_also_when_it_rejects(backbone, rollbacks):
    model = tight_model(backbone)
    head = prompt(5)
    dropped = _greedy_then_continued(model, torch.cat([head, head], dim=1), rollbacks, prompt_lookup_num_tokens=3)
    assert max(dropped) > 0, "the looked-up candidates were never rejected"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_speculative_sampling(backbone, rollbacks):
    model, assistant = tight_model(backbone), assistant_for("fp_mamba", backbone)
    ids = prompt()
    # Top-1 sampling keeps only the argmax of the model and of the assistant: a rejected draft is replaced by the
    # model's argmax, so speculative sampling computes the greedy tokens.
    greedy = model.generate(ids, max_new_tokens=NEW, do_sample=False)
    top1 = model.generate(ids, max_new_tokens=NEW, do_sample=True, top_k=1, assistant_model=assistant)
    assert torch.equal(top1, greedy)
    assert any(dropped > 0 for _, dropped in rollbacks)
    # Full sampling: a seed reproduces it; the prompt is kept and every new token is in the vocabulary.
    draws = []
    for _ in range(2):
        torch.manual_seed(5)
        draws.append(model.generate(ids, max_new_tokens=NEW, do_sample=True, assistant_model=assistant))
    assert torch.equal(draws[0], draws[1])
    assert draws[0].shape == (1, ids.shape[1] + NEW) and torch.equal(draws[0][:, :ids.shape[1]], ids)
    assert bool(((draws[0] >= 0) & (draws[0] < VOCAB)).all())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_assisted_decoding_at_the_default_settings(backbone):
    """fp32 and the config's tolerance, as a user gets them: generate() runs with an assistant and with prompt lookup,
    and the returned cache continues."""
    torch.manual_seed(0)
    model, assistant = tiny_model(backbone), tiny_model(backbone)
    ids = prompt()
    for kwargs in (dict(assistant_model=assistant), dict(prompt_lookup_num_tokens=2)):
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True, **kwargs)
        assert out.sequences.shape == (1, ids.shape[1] + NEW)
        assert bool(((out.sequences >= 0) & (out.sequences < VOCAB)).all())
        more = model.generate(out.sequences, cache=out.cache, max_new_tokens=MORE, do_sample=False)
        assert torch.equal(more[:, :out.sequences.shape[1]], out.sequences)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_assisted_decoding_takes_one_sequence(backbone):
    """Transformers' assisted decoding and prompt lookup decode one sequence at a time, and say so."""
    model = tiny_model(backbone)
    ids = prompt(batch=2)
    for kwargs in (dict(assistant_model=tiny_model(backbone)), dict(prompt_lookup_num_tokens=2)):
        with pytest.raises(ValueError, match="batch_size = 1"):
            model.generate(ids, max_new_tokens=2, do_sample=False, **kwargs)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_recording_cache_rolls_back_to_any_kept_position(backbone):
    """The cache API itself: a left-padded batch recorded from an empty cache (the positions before the last
    `recurrent_states_to_keep` solved together), cropped, continued and cropped again, reads as if fed only the
    positions kept; so does a record shorter than the conv window."""
    model = tight_model(backbone)
    ids, nxt = prompt(9, batch=2), prompt(3, batch=2, seed=4)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        cache.activate_past_recording(recurrent_states_to_keep=4)
        model(ids, attention_mask=mask, cache=cache)
        cache.crop(-3)  # back to 6 positions
        rolled = model(nxt, cache=cache).logits
        cache.crop(-2)  # back to 7
        rolled_again = model(nxt[:, 2:], cache=cache).logits
        kept = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True).cache
        torch.testing.assert_close(rolled, model(nxt, cache=kept).logits, rtol=0, atol=1e-7)
        kept = model(torch.cat([ids[:, :6], nxt[:, :1]], 1), attention_mask=mask[:, :7], use_cache=True).cache
        torch.testing.assert_close(rolled_again, model(nxt[:, 2:], cache=kept).logits, rtol=0, atol=1e-7)

        short = DynamicCache(config=model.config)
        short.activate_past_recording()
        model(ids[1:, :2], cache=short)
        short.crop(-1)  # one position: fewer conv columns than the window, the rest are the zeros before the start
        kept = model(ids[1:, :1], use_cache=True).cache
        torch.testing.assert_close(model(nxt[1:], cache=short).logits, model(nxt[1:], cache=kept).logits,
                                   rtol=0, atol=1e-7)


def test_a_rolled_back_cache_that_stopped_recording_inside_its_conv_window_is_refused():
    """A record begun on an empty cache and cropped to fewer positions than the conv window holds fewer conv columns;
    once it stops recording (as transformers' deferred stop check ends a record) it cannot take in-place writes."""
    model = tight_model("mamba2")
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    with torch.no_grad():
        model(prompt(2), cache=cache)
        cache.crop(-1)
        for layer in cache.layers:
            layer.record_past = False
        with pytest.raises(ValueError, match="fewer than its window"):
            model(prompt(1), cache=cache)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_no_compiled_decode_step_while_the_cache_records(backbone):
    """With fp_compile, a continuation of a cache that still records (generate() leaves an assisted call's cache
    recording) runs its decode steps eagerly: the compiled step would write the cache in place, out of the record."""
    model = tight_model(backbone)
    ids = prompt()
    greedy = model.generate(ids, max_new_tokens=NEW + MORE, do_sample=False)
    out = model.generate(ids, max_new_tokens=NEW, do_sample=False, prompt_lookup_num_tokens=2,
                         return_dict_in_generate=True)
    model.config.fp_compile = True
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        more = model.generate(out.sequences, cache=out.cache, max_new_tokens=MORE, do_sample=False)
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(more, greedy)
