"""FixedPointSettings.compile (config.fp_compile): every backbone's iteration map compiles without a graph break, a
compiled layer computes what the eager one does (rows stopping at different iterations, so the compiled map sees
shrinking batches), and a failing compile falls back to the eager map with one warning."""

import dataclasses
import shutil
import warnings

import pytest
import torch
from fpmamba_core import compiled
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.compiled import CompileFallbackWarning
from fpmamba_core.layer import FixedPointLayer

from tests.modeling.core import build_layer

TINY = dict(hidden_size=32, head_dim=16, state_size=8, chunk_size=8, n_groups=1)


def _layer(backbone: str, **overrides) -> FixedPointLayer:
    """A tiny eval layer whose map reads y (Mamba backbones: B and C's y-projection drawn away from zero)."""
    torch.manual_seed(0)
    layer = build_layer(backbone, **{**TINY, **overrides}).eval()
    with torch.no_grad():
        for proj in layer.y_projections():
            if proj is not None:
                proj.weight.normal_(std=0.1)
    return layer


def _compiling(layer: FixedPointLayer) -> FixedPointLayer:
    layer.solver = dataclasses.replace(layer.solver, compile=True)
    return layer


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    hs = torch.randn(3, 11, TINY["hidden_size"])
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0  # left padding: the padded row stops at another iteration than the others
    return hs, mask


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_map_compiles_without_a_graph_break(backbone):
    layer = _layer(backbone)
    with torch.no_grad():
        pre = layer.prelude(torch.randn(3, 13, 32), torch.tensor([[1] * 13, [0] * 4 + [1] * 9, [1] * 13]).bool(),
                            None)
        f = layer.iteration_map(pre, layer.solver_settings())
        y = layer.initial_iterate(pre)
        for rows in (torch.arange(3), torch.tensor([0, 2])):  # every row, and a subset still iterating
            explained = torch._dynamo.explain(type(f).__call__)(f, y[rows] if rows.numel() < 3 else y, rows)
            assert explained.graph_break_count == 0, explained.break_reasons


# A tolerance at which the rows of _inputs() stop at different iterations (mamba1's map contracts faster).
TOL_ROWS_APART = {"mamba1": 1e-3}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_compiled_layer_computes_the_eager_one(backbone):
    layer = _layer(backbone, fp_tol=TOL_ROWS_APART.get(backbone, 1e-2))
    hs, mask = _inputs()
    with torch.no_grad():
        eager = layer(hs, mask)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled_out = _compiling(layer)(hs, mask)
    assert torch.equal(compiled_out.iterations, eager.iterations)
    assert len(set(eager.iterations.tolist())) > 1  # rows stopped apart
    assert (compiled_out.out - eager.out).abs().max() < 1e-4
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
    layer = _layer("mamba2", fp_tol=1e-2)
    hs, mask = _inputs()
    with torch.no_grad():
        eager = layer(hs, mask)
        _compiling(layer)
        with pytest.warns(CompileFallbackWarning, match="of Mamba2Map failed .*no compiler here") as record:
            first = layer(hs, mask)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            second = layer(hs, mask)  # no second warning: the class stays eager
    assert len(record) == 1
    assert torch.equal(first.out, eager.out) and torch.equal(second.out, eager.out)
