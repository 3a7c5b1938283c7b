"""generate() with transformers' static cache, and transformers' compiled generation.

`cache_implementation="static"` builds a StaticCache, whose linear-attention layers are DynamicCache's: the same
tokens, the same telemetry, and the returned cache continues. With such a compilable cache transformers compiles
the decode loop (on an accelerator, or anywhere with `compile_config._compile_all_devices`, as here on the CPU):
FP-Mamba then compiles its decode step whole with the compile_config's options and computes the eager tokens; a
step that cannot compile whole (a per-token solve that decides on the host when to stop) runs eagerly after one
warning."""

import shutil
import warnings

import pytest
import torch
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.compiled import CompileFallbackWarning
from torch._dynamo.utils import counters
from transformers import CompileConfig, DynamicCache, StaticCache

from tests.fpmamba_hf.helpers import VOCAB, tiny_model

HAS_COMPILER = bool(shutil.which("c++") or shutil.which("g++"))  # inductor's CPU kernels need one
NEW_TOKENS = 4
# The backbones whose decode token iterates the fixed-point map (the FP-RNN's solves its linear map exactly).
ITERATING = [b for b in BACKBONES if b != "rnn"]


def _greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                          return_dict_in_generate=True, **kwargs)


def _compile_on_cpu() -> CompileConfig:
    """transformers' default CompileConfig (fullgraph=False: FP-Mamba compiles its step whole regardless), allowed
    on the CPU the way transformers' own generation tests allow it."""
    config = CompileConfig()
    config._compile_all_devices = True
    return config


def _turn(sequences: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The next turn of a conversation: the generated sequences (b, T), then the new tokens (b, T')."""
    return torch.cat([sequences, new], dim=1)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_static_cache_generates_the_dynamic_tokens_and_telemetry(backbone):
    torch.manual_seed(0)
    model = tiny_model(backbone)
    ids = torch.randint(0, VOCAB, (2, 5))
    dynamic = _greedy(model, ids)
    static = _greedy(model, ids, cache_implementation="static")
    assert isinstance(static.cache, StaticCache) and isinstance(dynamic.cache, DynamicCache)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert static.fp_iterations.shape == (2, NEW_TOKENS, model.config.num_hidden_layers)
    assert torch.equal(static.fp_iterations, dynamic.fp_iterations)
    assert torch.equal(static.fp_residual, dynamic.fp_residual)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_returned_static_cache_continues(backbone):
    """The continuation from the returned StaticCache equals generating from scratch on the same tokens."""
    torch.manual_seed(0)
    model = tiny_model(backbone, fp_tol=1e-5, fp_max_iter=200, fp_max_iter_eval=200)
    first = _greedy(model, torch.randint(0, VOCAB, (2, 5)), cache_implementation="static")
    turn = _turn(first.sequences, torch.randint(0, VOCAB, (2, 2)))
    continued = _greedy(model, turn, cache=first.cache, output_logits=True)
    scratch = _greedy(model, turn, cache_implementation="static", output_logits=True)
    assert continued.cache is first.cache
    assert torch.equal(continued.sequences, scratch.sequences)
    torch.testing.assert_close(torch.stack(continued.logits), torch.stack(scratch.logits), atol=1e-4, rtol=1e-4)
    assert continued.fp_iterations.shape == (2, NEW_TOKENS, model.config.num_hidden_layers)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_compiled_generation_computes_the_eager_tokens(backbone):
    """A cap of one evaluation per token (no host sync in the step; the FP-RNN's exact solve has none either):
    transformers' compiled generation compiles the decode step once and generates the eager tokens and telemetry,
    and so does its continuation from the returned cache, on the same graph."""
    torch.manual_seed(0)
    model = tiny_model(backbone)
    ids, new = torch.randint(0, VOCAB, (2, 5)), torch.randint(0, VOCAB, (2, 2))
    eager = _greedy(model, ids, cache_implementation="static", fp_max_iter=1, disable_compile=True)
    eager_next = _greedy(model, _turn(eager.sequences, new), cache=eager.cache, fp_max_iter=1, disable_compile=True)
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _greedy(model, ids, cache_implementation="static", fp_max_iter=1,
                           compile_config=_compile_on_cpu())
        compiled_graphs = counters["stats"]["unique_graphs"]
        compiled_next = _greedy(model, _turn(compiled.sequences, new), cache=compiled.cache, fp_max_iter=1,
                                compile_config=_compile_on_cpu())
    for got, want in ((compiled, eager), (compiled_next, eager_next)):
        assert torch.equal(got.sequences, want.sequences)
        assert got.fp_iterations.shape == (2, NEW_TOKENS, model.config.num_hidden_layers)
        assert torch.equal(got.fp_iterations, want.fp_iterations)
        torch.testing.assert_close(got.fp_residual, want.fp_residual)
    if HAS_COMPILER:
        assert not [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
    assert compiled_graphs == graphs + 1  # the decode step, once
    assert counters["stats"]["unique_graphs"] == compiled_graphs  # the continuation replays it


@pytest.mark.parametrize("backbone", ITERATING)
def test_a_decode_step_that_cannot_compile_whole_runs_eagerly_after_one_warning(backbone):
    """At the defaults the map reads y, so each token's solve iterates and decides on the host when to stop: no
    single graph. transformers' compiled generation then warns once and generates the eager tokens."""
    torch.manual_seed(0)
    model = tiny_model(backbone)
    ids = torch.randint(0, VOCAB, (2, 5))
    eager = _greedy(model, ids, cache_implementation="static", disable_compile=True)
    with pytest.warns(CompileFallbackWarning, match="generate\\(\\)'s decode step") as record:
        compiled = _greedy(model, ids, cache_implementation="static", compile_config=_compile_on_cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        _greedy(model, ids, cache_implementation="static", compile_config=_compile_on_cpu())
    assert len([w for w in record if issubclass(w.category, CompileFallbackWarning)]) == 1
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.equal(compiled.fp_iterations, eager.fp_iterations)


def test_a_compiled_forward_outside_generate_is_refused():
    with pytest.raises(RuntimeError, match="only inside generate"):
        tiny_model().get_compiled_call(_compile_on_cpu())


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_chunked_prefill_is_refused(cache_implementation):
    """transformers' chunked prefill feeds the prompt's chunks as first steps on a filled cache; FP-Mamba solves a
    long prompt chunk by chunk itself (fp_solve_chunk)."""
    with pytest.raises(ValueError, match="prefill_chunk_size.*fp_solve_chunk"):
        tiny_model().generate(torch.randint(0, VOCAB, (1, 6)), max_new_tokens=2, prefill_chunk_size=3,
                              cache_implementation=cache_implementation)
