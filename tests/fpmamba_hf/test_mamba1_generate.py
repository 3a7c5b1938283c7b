"""backbone="mamba1" as a transformers model: save/load, generate with a cache and a per-call budget, beam search."""

import torch
from transformers import AutoModelForCausalLM

from tests.fpmamba_hf.helpers import VOCAB
from tests.fpmamba_hf.test_mamba1_decode import _model


def test_save_load_gives_identical_logits(tmp_path):
    model = _model("kronecker", "after_loop", time_step_rank=3, fp_tol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone == "mamba1" and loaded.config.time_step_rank == 3
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_generate_with_cache_per_call_budget_and_beams():
    """Greedy with the cache equals greedy without it; fp_max_iter=1 caps every solve of that call only; beam search
    reorders the state (conv window, H, y*_{t-1} and the after-loop gate's f(y*)_{t-1})."""
    model = _model("kronecker", "after_loop", fp_tol=1e-5)
    ids = torch.randint(0, VOCAB, (2, 7))
    free = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(free.sequences, model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False))
    assert int(free.fp_iterations.min()) > 1
    capped = model.generate(ids, max_new_tokens=4, do_sample=False, fp_max_iter=1, return_dict_in_generate=True)
    assert capped.fp_iterations.shape == (2, 4, model.config.num_hidden_layers)
    assert int(capped.fp_iterations.max()) == 1
    beams = model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False)
    assert beams.shape == (2, 10)
