"""config.fp_compile compiles generate()'s per-token step (fullgraph, one graph per batch size; CUDA graphs on CUDA).
On the CPU it compiles where the step takes no host sync (a map that cannot read y, or a cap of one evaluation) and
computes exactly what the eager step does; where it cannot (a per-token solve that iterates), it falls back to the
eager step with one warning."""

import shutil
import warnings

import pytest
import torch
from fpmamba_core.compiled import CompileFallbackWarning
from torch._dynamo.utils import counters
from transformers import LogitsProcessor, LogitsProcessorList

from tests.fpmamba_hf.helpers import VOCAB, tiny_model

HAS_COMPILER = bool(shutil.which("c++") or shutil.which("g++"))  # inductor's CPU kernels need one


def _generate(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                          **kwargs)


def _constant(model):
    """Q = I and zero y-projections: the map cannot read y (a converted source model)."""
    for block in model.backbone.layers:
        block.mixer.start_as_source()
    return model


@pytest.mark.parametrize("case", ["constant_map", "cap_of_one"])
def test_compiled_decode_step_computes_the_eager_one_without_recompiling(case):
    torch.manual_seed(0)
    model = _constant(tiny_model()) if case == "constant_map" else tiny_model()
    kwargs = {"fp_max_iter": 1} if case == "cap_of_one" else {}
    ids = torch.randint(0, VOCAB, (3, 5))
    eager = _generate(model, ids, **kwargs)
    model.config.fp_compile = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _generate(model, ids, **kwargs)
        graphs = counters["stats"]["unique_graphs"]
        # Other prompts of the same shape: the same graphs (the prefill's compiled map, the decode step)
        again = _generate(model, torch.randint(0, VOCAB, (3, 5)), **kwargs)
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(first.sequences, eager.sequences)
    assert torch.equal(first.fp_iterations, eager.fp_iterations)
    torch.testing.assert_close(first.fp_residual, eager.fp_residual)
    assert again.sequences.shape == (3, 11)
    fell_back = [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
    if HAS_COMPILER:
        assert not fell_back, fell_back[0].message


def test_a_step_that_cannot_compile_falls_back_with_one_warning():
    """A map that reads y iterates per token on the PyTorch path, deciding when to stop on the host: no full graph.
    The step says so once and runs eagerly, with the same results."""
    torch.manual_seed(0)
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 5))
    eager = _generate(model, ids)
    model.config.fp_compile = True
    with pytest.warns(CompileFallbackWarning, match="generate\\(\\)'s decode step") as record:
        compiled = _generate(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        _generate(model, ids)  # no second warning for this model
    assert len([w for w in record if issubclass(w.category, CompileFallbackWarning)]) == 1
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.equal(compiled.fp_iterations, eager.fp_iterations)


def test_a_nan_in_a_compiled_step_is_still_named_when_generate_ends():
    class PoisonAtStep3(LogitsProcessor):
        calls = 0

        def __call__(self, input_ids, scores):
            PoisonAtStep3.calls += 1
            if PoisonAtStep3.calls == 3:
                with torch.no_grad():
                    model.backbone.layers[1].mixer.in_proj.weight.fill_(float("nan"))
            return scores

    torch.manual_seed(0)
    model = _constant(tiny_model())
    model.config.fp_compile = True
    with pytest.raises(FloatingPointError, match="layer 1 .* at generation step 3"):
        _generate(model, torch.randint(0, VOCAB, (2, 4)), logits_processor=LogitsProcessorList([PoisonAtStep3()]))
