"""backbone="rnn" as a transformers model: save/load, generate with a cache and a per-call budget, beam search."""

import torch
from transformers import AutoModelForCausalLM

from tests.fpmamba_hf.helpers import VOCAB
from tests.fpmamba_hf.test_rnn_backbone import _rnn_model


def test_save_load_gives_identical_logits(tmp_path):
    model = _rnn_model("kronecker", mixer_kron_norm="spectral", fp_tol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone == "rnn" and loaded.config.mixer_kron_norm == "spectral"
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_generate_with_cache_per_call_budget_and_beams():
    """Greedy with the cache equals greedy without it; fp_max_iter=1 caps the prefill's solve for that call only
    (decode steps solve their linear problem exactly: one evaluation each); beam search reorders the state."""
    model = _rnn_model("householder", fp_tol=1e-6, fp_max_iter_eval=200)
    ids = torch.randint(0, VOCAB, (2, 7))
    free = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(free.sequences, model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False))
    capped = model.generate(ids, max_new_tokens=4, do_sample=False, fp_max_iter=1, return_dict_in_generate=True)
    assert capped.fp_iterations.shape == (2, 4, model.config.num_hidden_layers)
    assert int(capped.fp_iterations.max()) == 1
    assert int(free.fp_iterations[:, 0].min()) > 1 and int(free.fp_iterations[:, 1:].max()) == 1
    beams = model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False)
    assert beams.shape == (2, 10)
