"""config.fp_compile: every backbone's iteration map compiles without a graph break, a compiled model computes what
the eager one does (rows stopping at different iterations, so the compiled map sees shrinking batches), and a
failing compile falls back to the eager map with one warning."""

import shutil
import warnings

import pytest
import torch
from fpmamba_core import compiled
from fpmamba_core.compiled import CompileFallbackWarning

from fpmamba_hf import FPMambaForCausalLM
from tests.fpmamba_hf.helpers import VOCAB, tiny_config, tiny_model

BACKBONES = {
    "mamba2": {},
    "mamba1": {"backbone": "mamba1", "n_groups": 1},
    "rnn": {"backbone": "rnn", "n_groups": 1},
}


def _model(backbone: str, **overrides) -> FPMambaForCausalLM:
    """The tiny test model (Mamba-2: B and C read y); the other backbones as configured."""
    if backbone == "mamba2":
        return tiny_model(**overrides)
    return FPMambaForCausalLM(tiny_config(**BACKBONES[backbone], **overrides)).eval()


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_map_compiles_without_a_graph_break(backbone):
    model = _model(backbone)
    layer = model.backbone.layers[0].mixer
    with torch.no_grad():
        pre = layer.prelude(torch.randn(3, 13, 32), torch.tensor([[1] * 13, [0] * 4 + [1] * 9, [1] * 13]).bool(),
                            None)
        f = layer.iteration_map(pre, layer.solver_settings())
        y = layer.initial_iterate(pre)
        for rows in (torch.arange(3), torch.tensor([0, 2])):  # every row, and a subset still iterating
            explained = torch._dynamo.explain(type(f).__call__)(f, y[rows] if rows.numel() < 3 else y, rows)
            assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_compiled_model_computes_the_eager_one(backbone):
    torch.manual_seed(0)
    model = _model(backbone, fp_tol=1e-2)
    ids = torch.randint(0, VOCAB, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the padded row stops at another iteration than the others
    with torch.no_grad():
        eager = model(ids, attention_mask=mask)
        model.config.fp_compile = True
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled_out = model(ids, attention_mask=mask)
    assert torch.equal(compiled_out.fp_iterations, eager.fp_iterations)
    assert any(len(set(layer)) > 1 for layer in eager.fp_iterations.T.tolist())  # rows stopped apart
    assert (compiled_out.logits - eager.logits).abs().max() < 1e-4
    fell_back = [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
    if shutil.which("c++") or shutil.which("g++"):  # inductor can build its CPU kernels here: no fallback
        assert not fell_back, fell_back[0].message


def test_a_failing_compile_falls_back_to_the_eager_map_with_one_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    monkeypatch.setattr(compiled, "_map_calls", {})
    model = tiny_model(fp_tol=1e-2)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        eager = model(ids)
        model.config.fp_compile = True
        with pytest.warns(CompileFallbackWarning, match="of Mamba2Map failed .*no compiler here") as record:
            first = model(ids)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            second = model(ids)  # no second warning: the class stays eager
    assert len(record) == 1
    assert torch.equal(first.logits, eager.logits) and torch.equal(second.logits, eager.logits)
