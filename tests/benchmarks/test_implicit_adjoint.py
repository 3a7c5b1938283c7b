"""benchmarks/implicit_adjoint.py at toy size: where the map does not depend on y (no mixer, one evaluation) the
adjoint converges at once and the implicit gradient is the one-step gradient; a fresh mixer model reports its
fallbacks; the model's gradient settings are restored."""

import torch

from benchmarks import implicit_adjoint
from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_lab.tasks import get_task


def tiny(**overrides) -> FPMambaForCausalLM:
    task = get_task("S3")
    torch.manual_seed(0)
    return FPMambaForCausalLM(FPMambaConfig(vocab_size=task.vocab_size, hidden_size=16, head_dim=8, state_size=4,
                                            chunk_size=4, num_hidden_layers=2, fp_max_iter=4, **overrides))


def test_a_map_without_y_gives_the_one_step_gradient():
    rows = implicit_adjoint.study(tiny(mixer_type="none"), "none", "S3", [3, 5], [4], batches=2, batch_size=4)
    assert [(r["length"], r["fallbacks"], r["backwards"], r["converged_batches"]) for r in rows] == [
        (3, 0, 4, 2), (5, 0, 4, 2)]
    assert all(abs(r["cosine"] - 1) < 1e-5 for r in rows)


def test_fallbacks_are_counted_and_the_settings_restored():
    model = tiny(mixer_reflection_scale=2.0, mixer_alpha_init=0.9)
    rows = implicit_adjoint.study(model, "mixer", "S3", [6], [1, 2], batches=2, batch_size=4)
    assert [r["adjoint_max_iter"] for r in rows] == [1, 2]
    assert rows[0]["fallbacks"] > 0  # one adjoint iteration cannot reach the tolerance of a map that uses y
    for r in rows:
        assert 0 <= r["fallbacks"] <= r["backwards"] == 4
        assert (r["residual_max"] is None) == (r["fallbacks"] == 0)
        assert (r["cosine"] is None) == (r["converged_batches"] == 0)
    assert (model.config.fp_backward, model.config.fp_backward_max_iter) == ("one_step", 32)
    assert "| mixer | 6 | 2 |" in implicit_adjoint.table(rows)
