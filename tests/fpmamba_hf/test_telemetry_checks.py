"""Every output says how converged it is; no silent NaN; per-call telemetry stays with its call."""

import logging
import threading

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tests.fpmamba_hf.helpers import VOCAB, tiny_model


@pytest.fixture
def fp_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="fpmamba_hf")
    return lambda: [r for r in caplog.records if "fixed point was not reached" in r.getMessage()]


def test_fp_residual_on_every_output_and_below_tol_when_converged():
    model = tiny_model(fp_tol=1e-4, fp_max_iter_eval=200)
    ids = torch.randint(0, VOCAB, (3, 7))
    out = model(ids)
    assert out.fp_residual.shape == (3, model.config.num_hidden_layers) and out.fp_residual.dtype == torch.float32
    assert bool((out.fp_residual < 1e-4).all())
    assert model.backbone(ids).fp_residual.shape == (3, model.config.num_hidden_layers)
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert gen.fp_residual.shape == gen.fp_iterations.shape == (3, 4, model.config.num_hidden_layers)


def test_hitting_the_cap_warns_once_per_call_naming_layers(fp_warnings):
    model = tiny_model(fp_tol=1e-12)
    ids = torch.randint(0, VOCAB, (2, 7))
    out = model(ids, fp_max_iter=2)
    assert bool((out.fp_residual >= 1e-12).any())
    (warning,) = fp_warnings()
    assert "layer" in warning.getMessage() and "fp_tol=1e-12" in warning.getMessage()
    gen = model.generate(ids, max_new_tokens=5, do_sample=False, fp_max_iter=2, return_dict_in_generate=True)
    assert len(fp_warnings()) == 2  # one more for the whole generate call, not one per token
    assert bool((gen.fp_residual >= 1e-12).any())


def test_no_warning_when_converged_or_in_training(fp_warnings):
    model = tiny_model(fp_tol=1e-3, fp_max_iter_eval=200)
    ids = torch.randint(0, VOCAB, (2, 7))
    model(ids)
    model.generate(ids, max_new_tokens=3, do_sample=False)
    model.train()(ids, fp_max_iter=1)
    assert fp_warnings() == []


def _poison(model, name: str) -> None:
    with torch.no_grad():
        model.get_parameter(name).fill_(float("nan"))


@pytest.mark.parametrize(
    "param, where",
    [("backbone.layers.0.mixer.out_proj.weight", "layer 0"), ("backbone.norm_f.weight", "final norm"),
     ("lm_head.weight", "LM head"), ("backbone.layers.1.mixer.in_proj.weight", "layer 1")],
)
def test_a_nan_anywhere_raises_naming_where_it_appeared(param, where):
    model = tiny_model(tie_word_embeddings=False)
    _poison(model, param)
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(FloatingPointError, match=where) as err:
        model(ids)
    assert param.removeprefix("backbone.") in str(err.value)  # named as the raising module sees them
    with pytest.raises(FloatingPointError, match=where):
        model.generate(ids, max_new_tokens=3, do_sample=False)


def test_a_nan_during_decoding_raises_when_generate_ends():
    class PoisonAfterPrefill(LogitsProcessor):
        def __call__(self, input_ids, scores):
            _poison(model, "lm_head.weight")
            return scores

    model = tiny_model(tie_word_embeddings=False)
    with pytest.raises(FloatingPointError, match="LM head at generation step 1"):
        model.generate(torch.randint(0, VOCAB, (1, 4)), max_new_tokens=3, do_sample=False,
                       logits_processor=LogitsProcessorList([PoisonAfterPrefill()]))


@pytest.mark.parametrize("fp_max_iter", [1, None])
def test_a_nan_inside_a_layer_during_decoding_names_the_layer(fp_max_iter):
    """A one-evaluation solve (cap 1) raises nothing itself and takes no host sync: the layer's stage flag catches
    the NaN and names it when generate() ends. The iterating solve (default cap) raises at once, in the host sync its
    stopping decision takes anyway."""
    class PoisonAfterPrefill(LogitsProcessor):
        def __call__(self, input_ids, scores):
            _poison(model, "backbone.layers.1.mixer.in_proj.weight")
            return scores

    model = tiny_model()
    with pytest.raises(FloatingPointError, match="layer 1") as err:
        model.generate(torch.randint(0, VOCAB, (2, 4)), max_new_tokens=3, do_sample=False, fp_max_iter=fp_max_iter,
                       logits_processor=LogitsProcessorList([PoisonAfterPrefill()]))
    assert ("at generation step 1" in str(err.value)) == (fp_max_iter == 1)


def test_generate_is_reentrant():
    """A logits processor that runs the model (and generates) inside generate() does not mix telemetry."""
    model = tiny_model(fp_tol=1e-6)

    class Nested(LogitsProcessor):
        def __call__(self, input_ids, scores):
            model(input_ids[:, :3])
            inner = model.generate(input_ids[:1, :2], max_new_tokens=2, do_sample=False,
                                   return_dict_in_generate=True)
            assert inner.fp_iterations.shape == (1, 2, model.config.num_hidden_layers)
            return scores

    ids = torch.randint(0, VOCAB, (2, 5))
    plain = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    nested = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                            logits_processor=LogitsProcessorList([Nested()]))
    assert torch.equal(nested.sequences, plain.sequences)
    assert torch.equal(nested.fp_iterations, plain.fp_iterations)


def test_generate_from_two_threads_keeps_each_calls_telemetry():
    model = tiny_model(fp_tol=1e-6)
    prompts = {n: torch.randint(0, VOCAB, (n, 4)) for n in (1, 3)}
    expected = {n: model.generate(p, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
                for n, p in prompts.items()}
    results, errors = {}, []

    def run(n):
        try:
            for _ in range(3):
                results[n] = model.generate(prompts[n], max_new_tokens=6, do_sample=False,
                                            return_dict_in_generate=True)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in prompts:
        assert torch.equal(results[n].sequences, expected[n].sequences)
        assert torch.equal(results[n].fp_iterations, expected[n].fp_iterations)
