"""generate()'s decode runner (fpmamba_hf/decoding.py): forward() is a plain forward with public keywords only; the
runner serves exactly the forwards of its generate() call, takes the call's budget once (keywords, else the
generation_config given, else the model's), and is gone when the call ends, even when it fails."""

import inspect
import warnings

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from fpmamba_hf import FPMambaForCausalLM, FPMambaModel
from fpmamba_hf.decoding import _ACTIVE, DecodeRunner
from tests.fpmamba_hf.helpers import VOCAB, tiny_model

PUBLIC = {"self", "input_ids", "inputs_embeds", "cache", "use_cache", "output_hidden_states", "return_dict",
          "attention_mask", "fp_max_iter", "fp_tol", "fp_solve_chunk", "kwargs",
          "position_ids", "seq_idx", "cu_seqlens"}  # the packed documents' boundaries (fpmamba_hf/packing.py)


@pytest.mark.parametrize("cls, extra", [(FPMambaModel, set()), (FPMambaForCausalLM, {"labels", "logits_to_keep"})])
def test_forward_takes_public_keywords_only(cls, extra):
    assert set(inspect.signature(cls.forward).parameters) == PUBLIC | extra
    model = tiny_model()
    with pytest.raises(TypeError, match="fp_log"):
        model(torch.randint(0, VOCAB, (1, 3)), fp_log=object())


def test_a_runner_called_step_by_step_computes_generate():
    """The runner is generate()'s step: prefill then one greedy token at a time gives generate()'s tokens and
    telemetry."""
    model = tiny_model(fp_tol=1e-6)
    ids = torch.randint(0, VOCAB, (2, 5))
    expected = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, fp_max_iter=7)
    runner = DecodeRunner(model, fp_max_iter=7)
    tokens, cache, step_ids = [], None, ids
    with torch.no_grad():
        for _ in range(4):
            out = runner(step_ids, cache=cache, use_cache=True)
            cache, step_ids = out.cache, out.logits[:, -1:].argmax(-1)
            tokens.append(step_ids)
    assert torch.equal(torch.cat([ids, *tokens], 1), expected.sequences)
    assert torch.equal(torch.stack(runner.log.iterations, 1), expected.fp_iterations)


@pytest.mark.parametrize("given", ["keyword", "generation_config", "model_generation_config"])
def test_the_calls_budget_follows_transformers_precedence(given):
    """A keyword beats the generation_config passed, which beats the model's own generation_config."""
    model = tiny_model(fp_tol=1e-12)  # no row converges: every token runs to the cap
    model.generation_config.fp_max_iter = 3
    kwargs = {"generation_config": GenerationConfig(fp_max_iter=2, max_new_tokens=3, do_sample=False)}
    if given == "keyword":
        kwargs["fp_max_iter"] = 1
    elif given == "model_generation_config":
        kwargs = {"max_new_tokens": 3, "do_sample": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap hit warns; a generation_config with keywords warns too
        out = model.generate(torch.randint(0, VOCAB, (1, 4)), return_dict_in_generate=True, **kwargs)
    assert int(out.fp_iterations.max()) == {"keyword": 1, "generation_config": 2, "model_generation_config": 3}[given]


def test_the_runner_is_gone_when_generate_ends_or_fails():
    class Fail(LogitsProcessor):
        def __call__(self, input_ids, scores):
            assert _ACTIVE.get() is not None
            raise RuntimeError("stop here")

    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 3))
    model.generate(ids, max_new_tokens=2, do_sample=False)
    assert _ACTIVE.get() is None
    with pytest.raises(RuntimeError, match="stop here"):
        model.generate(ids, max_new_tokens=2, do_sample=False, logits_processor=LogitsProcessorList([Fail()]))
    assert _ACTIVE.get() is None
    out = model(ids)  # a plain forward again: checked at once, no runner
    assert out.fp_iterations.shape == (1, model.config.num_hidden_layers)


@pytest.mark.parametrize("old_name", ["cache_params", "past_key_values"])
def test_the_old_cache_names_warn_and_still_work(old_name):
    model = tiny_model(fp_tol=1e-5, fp_max_iter_eval=200)
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        cache = model(ids[:, :5], use_cache=True).cache
        with pytest.warns(FutureWarning, match=f"`{old_name}` is deprecated.*Use `cache` instead"):
            part = model(ids[:, 5:], **{old_name: cache}).logits[:, -1]
    torch.testing.assert_close(part, full, atol=1e-4, rtol=1e-4)
