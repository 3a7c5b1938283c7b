"""save_pretrained -> from_pretrained, in a fresh process too; generate with cache, budgets, sampling and beams; on
every backbone (`fpmamba_core.BACKBONES`)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from fpmamba_core import BACKBONES
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

import fpmamba_hf
from tests.fpmamba_hf.helpers import VOCAB, backbone_has, tiny_model

# Settings a saved model must keep (each backbone takes those it has): switches away from their defaults, and mamba1's
# after-loop gate (its default; the tiny model's is in the loop), whose W_zy only that gate has. The generation checks
# run that gate too: its W_zy reads the previous token's f(y*), which the cache carries.
SAVED = dict(mixer_type="kronecker", mixer_kron_norm="spectral", mamba1_gate="after_loop", time_step_rank=3)
GENERATE = dict(mixer_type="kronecker", mamba1_gate="after_loop", fp_tol=1e-5)
# The backbones whose decode steps solve the per-token problem directly, in one evaluation (the FP-RNN's is linear).
DIRECT_TOKEN_SOLVE = ("rnn",)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_gives_identical_logits(backbone, tmp_path):
    settings = backbone_has(backbone, SAVED)
    model = tiny_model(backbone, **settings, fp_tol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone == backbone and all(getattr(loaded.config, k) == v for k, v in settings.items())
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == {**model.config.to_dict(), "_name_or_path": ""}
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_generate_with_cache_per_call_budget_and_beams(backbone):
    """Greedy with the cache equals greedy without it; fp_max_iter=1 caps every solve of that call only; beam search
    reorders the state (conv window, state, y*_{t-1}, mamba1's after-loop f(y*)_{t-1}). The prefill iterates; a decode
    step too, unless the backbone solves its token directly."""
    model = tiny_model(backbone, **backbone_has(backbone, GENERATE))
    ids = torch.randint(0, VOCAB, (2, 7))
    free = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(free.sequences, model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False))
    prefill, decode = free.fp_iterations[:, 0], free.fp_iterations[:, 1:]
    assert int(prefill.min()) > 1
    assert (int(decode.max()) == 1) if backbone in DIRECT_TOKEN_SOLVE else (int(decode.min()) > 1)
    capped = model.generate(ids, max_new_tokens=4, do_sample=False, fp_max_iter=1, return_dict_in_generate=True)
    assert capped.fp_iterations.shape == (2, 4, model.config.num_hidden_layers)
    assert int(capped.fp_iterations.max()) == 1
    beams = model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False)
    assert beams.shape == (2, 10)


def test_save_and_load_in_a_fresh_process_gives_identical_logits(tmp_path):
    model = tiny_model(mixer_type="kronecker", fp_tol=1e-4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        expected = model(ids).logits
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import torch, fpmamba_hf
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
        assert type(model).__name__ == "FPMambaForCausalLM"
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'ids.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "fp_mamba" and saved["mixer_type"] == "kronecker"
    reloaded, original = AutoConfig.from_pretrained(tmp_path).to_dict(), model.config.to_dict()
    for d in (reloaded, original):
        d.pop("_name_or_path")
    assert reloaded == original


def test_greedy_with_cache_equals_without_cache():
    model = tiny_model(fp_tol=1e-5)
    ids = torch.randint(0, VOCAB, (2, 7))
    with_cache = model.generate(ids, max_new_tokens=8, do_sample=False)
    without = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_iteration_budget_per_call_is_recorded_and_respected():
    model = tiny_model(fp_tol=1e-6)
    ids = torch.randint(0, VOCAB, (2, 7))
    small = model.generate(ids, max_new_tokens=6, do_sample=False, fp_max_iter=1, return_dict_in_generate=True,
                           output_logits=True)
    large = model.generate(ids, max_new_tokens=6, do_sample=False, fp_max_iter=16, return_dict_in_generate=True)
    assert small.fp_iterations.shape == (2, 6, model.config.num_hidden_layers)
    assert small.fp_iterations.dtype == torch.long
    assert int(small.fp_iterations.max()) == 1
    assert int(large.fp_iterations.max()) <= 16 and int(large.fp_iterations.max()) > 1
    assert len(small.logits) == 6


def test_generation_config_supplies_the_default_budget(tmp_path):
    model = tiny_model(fp_tol=1e-6)
    model.generation_config = GenerationConfig(fp_max_iter=2, max_new_tokens=4, do_sample=False)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (1, 5))
    out = reloaded.generate(ids, return_dict_in_generate=True)
    assert int(out.fp_iterations.max()) == 2
    out = reloaded.generate(ids, return_dict_in_generate=True, fp_max_iter=3)  # the call overrides the file
    assert int(out.fp_iterations.max()) == 3


def test_sampling_and_beam_search_run():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 5))
    torch.manual_seed(1)
    sampled = model.generate(ids, max_new_tokens=5, do_sample=True, top_k=10, num_return_sequences=2,
                             return_dict_in_generate=True)
    assert sampled.sequences.shape == (4, 10) and sampled.fp_iterations.shape[:2] == (4, 5)
    beams = model.generate(ids, max_new_tokens=5, num_beams=3, do_sample=False)
    assert beams.shape == (2, 10)
    assert bool(((beams >= 0) & (beams < VOCAB)).all())


def test_auto_classes_are_registered():
    assert AutoConfig.for_model("fp_mamba").__class__ is fpmamba_hf.FPMambaConfig
    model = AutoModelForCausalLM.from_config(fpmamba_hf.FPMambaConfig(vocab_size=10, hidden_size=32, head_dim=16))
    assert isinstance(model, fpmamba_hf.FPMambaForCausalLM)


def test_generate_on_a_left_padded_batch_equals_rows_alone():
    model = tiny_model(fp_tol=1e-6, pad_token_id=0)
    rows = [torch.randint(1, VOCAB, (1, n)) for n in (9, 4)]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 9 - r.shape[1] :], mask[i, 9 - r.shape[1] :] = r[0], 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    for i, r in enumerate(rows):
        alone = model.generate(r, max_new_tokens=6, do_sample=False)
        assert torch.equal(batch[i, 9:], alone[0, r.shape[1] :])
