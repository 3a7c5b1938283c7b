"""fp_decode_solver="newton": decoding's per-token solve by Newton's method finds Picard's fixed point (every backbone
and mixer), converges where Picard iteration stops at the cap, runs the PyTorch decode step, keeps the compiled
decode step where it applies, and is refused wherever it does not belong (a whole-sequence solve, a bad value)."""

import pytest
import torch
from fpmamba_core import kernels
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.decode_steps import ssd_decode_step
from fpmamba_core.fixed_point import MapOutput, solve
from fpmamba_core.mixers import MIXERS, RankOneFactors

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from tests.fpmamba_hf.helpers import VOCAB, fp64_model, tiny_config
from tests.modeling.core import solver_settings

# fp64 and a tight tolerance: "the same fixed point" is checked far below fp32 rounding.
TIGHT = dict(fp_tol=1e-9, fp_max_iter_eval=600)


def _model(backbone: str, mixer_type: str, seed: int = 0, **overrides) -> FPMambaForCausalLM:
    return fp64_model(backbone, mixer_type, seed, **{**TIGHT, **overrides})


def _decode(model: FPMambaForCausalLM, ids: torch.Tensor, solver: str):
    """Prefill the first token, then feed the rest one at a time through the cache, with fp_decode_solver=`solver`.
    Returns the logits (b, T, vocab) and the decode tokens' fp_iterations and fp_residual (b, T - 1, layers)."""
    model.config.fp_decode_solver = solver
    with torch.no_grad():
        out = model(ids[:, :1], use_cache=True)
        cache, logits, iterations, residual = out.cache, [out.logits], [], []
        for t in range(1, ids.shape[1]):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            iterations.append(out.fp_iterations)
            residual.append(out.fp_residual)
    return torch.cat(logits, 1), torch.stack(iterations, 1), torch.stack(residual, 1)


@pytest.mark.parametrize("mixer_type", MIXERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_newton_decode_finds_picards_fixed_point(backbone, mixer_type):
    """Token by token through the cache, both steps converge below 1e-9 to the same fixed point; Newton takes no more
    evaluations (rnn solves its linear per-token problem directly under either, the identity mixer's per-token map
    cannot read y: both take the same count there)."""
    model = _model(backbone, mixer_type)
    ids = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    picard, picard_its, picard_res = _decode(model, ids, "picard")
    newton, newton_its, newton_res = _decode(model, ids, "newton")
    assert bool((picard_res < 1e-9).all()) and bool((newton_res < 1e-9).all())
    torch.testing.assert_close(newton, picard, rtol=0, atol=1e-7)
    assert int(newton_its.sum()) <= int(picard_its.sum())


def test_newton_converges_in_few_evaluations_where_picard_stops_at_the_cap():
    """Reflection scale 2 with a Householder mixer (not non-expansive): Picard iteration stops at the cap above the
    tolerance on some tokens, Newton's method converges on every token within a few evaluations."""
    model = _model("mamba2", "householder", mixer_reflection_scale=2, fp_tol=1e-6, fp_max_iter_eval=48,
                   num_hidden_layers=1)
    ids = torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(0))
    _, picard_its, picard_res = _decode(model, ids, "picard")
    stuck = picard_res >= 1e-6
    assert bool(stuck.any()) and bool((picard_its[stuck] == 48).all())
    _, newton_its, newton_res = _decode(model, ids, "newton")
    assert bool((newton_res < 1e-6).all())
    assert int(newton_its.max()) <= 12


def test_a_row_whose_newton_system_is_singular_takes_the_picard_step():
    """Row 0's map f(y) = y + 1 has J = I, so I - J is singular at every iterate: the row steps as under Picard
    (y^k = k, and the same 100 evaluations to a relative residual below 1e-2), while row 1 beside it, f(y) = cos(y),
    takes Newton's steps."""
    translate = torch.tensor([True, False])

    def f(y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        return MapOutput(torch.where(translate[rows, None], y + 1, torch.cos(y)))

    y0 = torch.zeros(2, 3, dtype=torch.float64)
    picard = solve(f, y0, solver_settings(200, 1e-2))
    newton = solve(f, y0, solver_settings(200, 1e-2, solver="newton"))
    assert int(newton.iterations[0]) == int(picard.iterations[0]) == 100
    assert torch.equal(newton.y_star[0], picard.y_star[0])
    assert int(newton.iterations[1]) < int(picard.iterations[1]) and float(newton.residual[1]) < 1e-2


def test_a_whole_sequence_solve_keeps_fp_solver_and_refuses_newton():
    """The parallel forward of a model set to decode with Newton runs fp_solver's step (the same as with Picard);
    `solve` itself refuses the Newton step for more than one token per row."""
    model = _model("mamba2", "householder")
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        picard = model(ids)
        model.config.fp_decode_solver = "newton"
        newton = model(ids)
    assert torch.equal(newton.logits, picard.logits) and torch.equal(newton.fp_iterations, picard.fp_iterations)

    def f(y: torch.Tensor, rows: torch.Tensor) -> MapOutput:
        return MapOutput(torch.tanh(y + 1))

    with pytest.raises(ValueError, match="fp_decode_solver='newton'.*3 tokens per row"):
        solve(f, torch.zeros(2, 3, 4), solver_settings(5, 1e-6, solver="newton"))


def test_a_bad_decode_solver_is_refused_by_the_config():
    with pytest.raises(ValueError, match="FPMamba config: invalid fp_decode_solver='anderson'"):
        FPMambaConfig(hidden_size=32, head_dim=16, fp_decode_solver="anderson")
    model = _model("mamba2", "householder")
    model.config.fp_decode_solver = "Newton"
    with pytest.raises(ValueError, match="fp_decode_solver"):
        model(torch.randint(0, VOCAB, (1, 3)))


def test_newton_decode_runs_the_reference_step_on_a_kernel_backend(monkeypatch):
    """kernels.decode_step sends the Newton step to the reference even where the kernel would run (it has no Newton):
    with the Triton backend forced, the kernel's self-check (its first use) is never reached, and the result is the
    reference's. With Picard the same call does reach it (so the check is not vacuous)."""

    class KernelReached(Exception):
        pass

    def kernel_reached(*args):
        raise KernelReached

    monkeypatch.setattr(kernels, "backend_for", lambda t: "triton")
    monkeypatch.setattr(kernels, "decode_step_ok", kernel_reached)
    gen = torch.Generator().manual_seed(0)
    b, h, p, g, n, r = 2, 2, 8, 1, 8, 2
    d = h * p
    u = torch.nn.functional.normalize(torch.randn(b, r, d, generator=gen), dim=-1)
    factors = RankOneFactors("householder", u=u, coef=torch.full((b, r), 2.0))
    args = (torch.randn(b, h, p, generator=gen), torch.randn(b, d, generator=gen), torch.rand(b, h, generator=gen),
            -torch.rand(h, generator=gen), torch.randn(b, g, n, generator=gen), torch.randn(b, g, n, generator=gen),
            torch.randn(h, generator=gen), torch.randn(b, h, p, n, generator=gen), factors, torch.ones(d), 1e-5, d)
    newton = solver_settings(30, 1e-5, decode_solver="newton").per_token()
    out, ref = kernels.decode_step(*args, newton), ssd_decode_step(*args, newton)
    for name in ("y_out", "y_star", "state", "iterations", "residual"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    with pytest.raises(KernelReached):
        kernels.decode_step(*args, solver_settings(30, 1e-5))


def test_the_compiled_decode_step_still_traces_as_one_graph_where_it_applies():
    """A cap of one evaluation takes no host sync, whatever the step: generate()'s decode step, the unit fp_compile
    compiles (fullgraph, static shapes), traces as one graph with fp_decode_solver="newton" and computes the eager
    step. (Dynamo only: inductor's code generation does not depend on the step.)"""
    torch.manual_seed(0)
    model = FPMambaForCausalLM(tiny_config(fp_decode_solver="newton")).eval()
    ids = torch.randint(0, VOCAB, (2, 4))
    step = torch.compile(FPMambaForCausalLM.decode_step, fullgraph=True, dynamic=False, backend="eager")
    with torch.no_grad():
        eager_cache, traced_cache = (model(ids, use_cache=True).cache for _ in range(2))
        nxt = ids[:, -1:]
        eager = model.decode_step(nxt, eager_cache, 1, None)
        traced = step(model, nxt, traced_cache, 1, None)
    for name, a, b in zip(("logits", "fp_iterations", "fp_residual", "magnitudes"), eager, traced):
        assert torch.equal(a, b), name
