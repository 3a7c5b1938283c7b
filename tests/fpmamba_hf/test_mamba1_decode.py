"""backbone="mamba1": token-by-token decode through the cache reproduces the parallel fixed point, for every mixer,
both gate positions, a left-padded batch, a hidden-state dependent dt and a continued prefill."""

import pytest
import torch
from fpmamba_core.mixers import MIXERS

from fpmamba_hf import FPMambaForCausalLM
from tests.fpmamba_hf.helpers import VOCAB, assert_left_padded_decode_matches_rows_alone, tiny_config

# Mamba's own init scale (MambaConfig.initializer_range): at transformers' 0.02 the scan output is tiny next to the
# fed-back iterate, which the in-loop LayerNorm amplifies, and the Householder/DPLR maps then converge very slowly.
MAMBA1 = dict(backbone="mamba1", initializer_range=0.1, num_hidden_layers=1)
TIGHT = dict(fp_tol=1e-6, fp_max_iter_eval=400)
# (mixer, gate) cases: every mixer with the gate inside the loop, and the after-loop gate (its W_zy reads the
# previous token's f(y*), carried in the cache) with the mixers whose maps converge fast enough there.
CASES = [(m, "in_loop") for m in MIXERS] + [("kronecker", "after_loop"), ("none", "after_loop")]


def _model(mixer_type: str, gate: str, **overrides) -> FPMambaForCausalLM:
    """A tiny FP-Mamba1 LM in eval mode whose B, C (and W_zy) read the previous iterate (std 0.1)."""
    values = {**MAMBA1, **TIGHT, "mixer_type": mixer_type, "mamba1_gate": gate, **overrides}
    model = FPMambaForCausalLM(tiny_config(**values)).eval()
    with torch.no_grad():
        for block in model.backbone.layers:
            for proj in (block.mixer.bc_y_proj, block.mixer.dt_y_proj, block.mixer.gate_y_proj):
                if proj is not None:
                    proj.weight.normal_(std=0.1)
    return model


@pytest.mark.parametrize("mixer_type, gate", CASES, ids=[f"{m}-{g}" for m, g in CASES])
def test_left_padded_batch_decodes_token_by_token_as_each_row_in_parallel(mixer_type, gate):
    """Prefill a left-padded batch, decode 4 more tokens through the cache: every row's logits equal that row's own
    parallel forward over its whole sequence (fp32, tight tolerance)."""
    model = _model(mixer_type, gate)
    assert_left_padded_decode_matches_rows_alone(model, TIGHT["fp_tol"])


@pytest.mark.parametrize("gate", ["after_loop", "in_loop"])
def test_prefill_then_decode_with_hidden_dt_and_sum_input(gate):
    """dt reads y_{t-1} (through the time-step rank), the mixer reads x_t + y_{t-1}; prefill 7 tokens, then decode."""
    model = _model("kronecker", gate, mixer_input="sum", dt_hidden_dependence=True)
    ids = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        parallel = model(ids).logits
        out = model(ids[:, :7], use_cache=True)
        cache, logits = out.cache, [out.logits]
        for t in range(7, ids.shape[1]):
            logits.append(model(ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    assert (torch.cat(logits, dim=1) - parallel).abs().max() <= 1e-4
