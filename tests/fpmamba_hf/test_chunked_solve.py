"""The chunked (block-sequential) solve finds the same fixed point as the whole-sequence solve: logits, loss,
gradients, caches and generated tokens, on every backbone and mixer, left-padded, with both gradients and with
activation checkpointing."""

import logging

import pytest
import torch
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.mixers import MIXERS

from fpmamba_hf import FPMambaForCausalLM
from tests.fpmamba_hf.helpers import VOCAB, fp64_model, tiny_config

# fp64 and a tight tolerance, so that "the same fixed point" is checked well below fp32 rounding.
TIGHT = dict(fp_tol=1e-9, fp_max_iter=600, fp_max_iter_eval=600, fp_train_quantile=1.0)


def chunk_model(backbone: str, mixer_type: str, **overrides) -> FPMambaForCausalLM:
    return fp64_model(backbone, mixer_type, **{**TIGHT, **overrides})


def left_padded_batch(T: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a chunk of padding only, then a chunk that starts inside the padding
    mask[1, :1] = 0
    return ids, mask


@pytest.mark.parametrize("mixer_type", MIXERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_chunked_forward_equals_whole_sequence(backbone, mixer_type):
    model = chunk_model(backbone, mixer_type)
    ids, mask = left_padded_batch()
    nxt = torch.randint(0, VOCAB, (3, 1))
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=True)
        full_next = model(nxt, cache=full.cache).logits
        for chunk in (1, 4):  # one token; chunks of 4, 4, 1 (the first one all padding in row 0)
            part = model(ids, attention_mask=mask, use_cache=True, fp_solve_chunk=chunk)
            assert bool((part.fp_residual < 1e-9).all())
            torch.testing.assert_close(part.logits, full.logits, rtol=0, atol=1e-7)
            # The state it leaves is the same: the next token decodes alike.
            torch.testing.assert_close(model(nxt, cache=part.cache).logits, full_next, rtol=0, atol=1e-7)


@pytest.mark.parametrize("fp_backward", ["one_step", "implicit"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_chunked_training_gives_the_whole_sequence_gradients(backbone, fp_backward):
    model = chunk_model(backbone, "householder", fp_backward=fp_backward, fp_backward_tol=1e-12,
                        fp_backward_max_iter=500).train()
    ids, mask = left_padded_batch()
    grads = []
    for chunk in (0, 4):
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids, fp_solve_chunk=chunk)
        out.loss.backward()
        grads.append((out.loss.detach(),
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, g0), (loss1, g1) = grads
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-9)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-8, msg=name)


def test_chunked_solve_under_gradient_checkpointing_replays_its_fixed_point():
    model = chunk_model("mamba2", "householder", fp_solve_chunk=3).train()
    ids, mask = left_padded_batch()
    model.zero_grad()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})  # transformers >= 5.20 names it activation_checkpointing_enable
    model.zero_grad()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    for name, g in plain.items():
        torch.testing.assert_close(model.get_parameter(name).grad, g, rtol=1e-9, atol=1e-12, msg=name)


def test_chunk_length_caps_the_iterations_per_chunk_and_reports_the_worst_chunk(caplog):
    """The cap applies per chunk: a cap too small for a chunk is reported (iterations at the cap, residual above
    the tolerance, one warning), exactly as a whole-sequence solve reports it."""
    caplog.set_level(logging.WARNING, logger="fpmamba_hf")
    model = chunk_model("mamba2", "householder")
    ids, _ = left_padded_batch(T=12)
    with torch.no_grad():
        out = model(ids, fp_solve_chunk=4, fp_max_iter=3)
    assert bool((out.fp_iterations == 3).all()) and bool((out.fp_residual > 1e-9).all())  # 3 per token
    assert sum("not reached within the iteration cap" in r.getMessage() for r in caplog.records) == 1


def test_generate_with_a_chunked_prefill_gives_the_same_tokens():
    model = chunk_model("mamba2", "householder")
    ids, mask = left_padded_batch()
    full = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    chunked = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, fp_solve_chunk=4)
    assert torch.equal(full, chunked)


def test_fp_solve_chunk_is_validated_saved_and_set_per_call(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="fpmamba_hf")  # the starved cap below warns, as it should
    with pytest.raises(ValueError, match="fp_solve_chunk"):
        tiny_config(fp_solve_chunk=-1)
    model = chunk_model("mamba2", "householder", fp_solve_chunk=5)
    ids, _ = left_padded_batch()
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="fp_solve_chunk"):
            model(ids, fp_solve_chunk=bad)
    model.save_pretrained(tmp_path)
    assert FPMambaForCausalLM.from_pretrained(tmp_path).config.fp_solve_chunk == 5
    # The config's chunk runs unless the call says otherwise: a cap of 1 per chunk shows which one ran.
    with torch.no_grad():
        per_config = model(ids, fp_max_iter=2).logits
        per_call = model(ids, fp_max_iter=2, fp_solve_chunk=0).logits
        explicit = model(ids, fp_max_iter=2, fp_solve_chunk=5).logits
    torch.testing.assert_close(per_config, explicit, rtol=0, atol=0)
    assert (per_config - per_call).abs().max() > 1e-6


@pytest.mark.parametrize("backbone", BACKBONES)
def test_chunks_at_the_defaults_a_user_gets(backbone, caplog):
    """fp32, the config's defaults (fp_tol 1e-2, the default initialisation and mixer): where the whole-sequence
    solve converges, the chunked one converges too, costs at most one evaluation per token more (a map that settles
    in 2-3 iterations, as rnn's: each chunk confirms its own convergence) and lands within the tolerance's reach of
    it; where it does not (mamba1 at its defaults, a known open defect), the chunked solve
    says so as loudly (the cap warning), never silently."""
    caplog.set_level(logging.WARNING, logger="fpmamba_hf")
    torch.manual_seed(0)
    model = FPMambaForCausalLM(tiny_config(backbone=backbone, hidden_size=64, head_dim=64, n_groups=1)).eval()
    ids = torch.randint(0, VOCAB, (4, 50), generator=torch.Generator().manual_seed(2))
    tol = model.config.fp_tol
    with torch.no_grad():
        whole = model(ids)
        warned_whole = len(caplog.records)
        chunked = model(ids, fp_solve_chunk=4)
    warned_chunked = len(caplog.records) - warned_whole
    if bool((whole.fp_residual < tol).all()):
        assert bool((chunked.fp_residual < tol).all()) and warned_chunked == 0
        assert bool((chunked.fp_iterations <= whole.fp_iterations + 1).all())
        assert (chunked.logits - whole.logits).abs().max() <= 5 * tol * whole.logits.abs().max()
    else:
        assert warned_whole == 1 and (warned_chunked == 1) == bool((chunked.fp_residual >= tol).any())
