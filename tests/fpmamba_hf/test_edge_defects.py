"""Edge inputs that used to give a silently wrong answer, each now correct or refused with an error naming the
problem: a forward continuing generate()'s cache, a Mamba folder given to from_pretrained, a non-finite mixer gain,
Anderson steps that stall, bools for numbers in the config, huge finite embeddings, a cache of another model, and
the order of the return_dict=False tuple."""

import typing

import pytest
import torch
import torch.nn.functional as F
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.norms import GatedRMSNorm
from transformers import DynamicCache, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_hf.modeling_fpmamba import FPMambaRMSNorm

from .helpers import VOCAB, fp64_model, tiny_config, tiny_model

UNFED = "token it generated last"


# ------------------------------------------------------------------ a forward continuing generate()'s cache
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_forward_after_generate_starts_with_the_last_generated_token(backbone):
    """generate() never feeds the token it generates last: the new tokens alone are refused (they gave logits 0.385
    off), and the input the error asks for gives the full sequence's logits."""
    model = fp64_model(backbone, "householder", fp_tol=1e-10, fp_max_iter_eval=300)
    ids = torch.randint(0, VOCAB, (2, 5))
    new = torch.randint(0, VOCAB, (2, 2))
    out = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    with pytest.raises(ValueError, match=UNFED):
        model(new, cache=out.cache)
    with pytest.raises(ValueError, match=UNFED):  # the new tokens as embeddings are refused the same way
        model(inputs_embeds=model.get_input_embeddings()(new), cache=out.cache)
    continued = model(torch.cat([out.sequences[:, -1:], new], dim=1), cache=out.cache).logits[:, -2:]
    expected = model(torch.cat([out.sequences, new], dim=1)).logits[:, -2:]
    torch.testing.assert_close(continued, expected, rtol=1e-7, atol=1e-7)


def test_a_cache_handed_to_generate_is_checked_too():
    """generate(cache=...) returning only the sequences leaves the caller's cache without the last token as well."""
    model = tiny_model()
    cache = DynamicCache(config=model.config)
    sequences = model.generate(torch.randint(0, VOCAB, (2, 4)), max_new_tokens=2, do_sample=False, cache=cache)
    with pytest.raises(ValueError, match=UNFED):
        model(torch.randint(0, VOCAB, (2, 1)), cache=cache)
    model(sequences[:, -1:], cache=cache)  # the token it generated last, then the cache continues as usual
    model(torch.randint(0, VOCAB, (2, 1)), cache=cache)


def test_a_beam_search_cache_cannot_be_continued():
    model = tiny_model()
    out = model.generate(torch.randint(0, VOCAB, (2, 4)), max_new_tokens=2, num_beams=3, do_sample=False,
                         return_dict_in_generate=True)
    with pytest.raises(ValueError, match="beam search"):
        model(out.sequences[:, -1:], cache=out.cache)


# ------------------------------------------------------------------ from_pretrained of a Mamba folder
def _mamba2() -> Mamba2ForCausalLM:
    return Mamba2ForCausalLM(Mamba2Config(vocab_size=VOCAB, hidden_size=32, head_dim=16, num_heads=4, state_size=8,
                                          n_groups=2, num_hidden_layers=1, chunk_size=8))


def _mamba() -> MambaForCausalLM:
    return MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=1))


@pytest.mark.parametrize("source, converter", [(_mamba2, "from_mamba2"), (_mamba, "from_mamba")])
def test_from_pretrained_refuses_a_mamba_folder_and_names_its_conversion(tmp_path, source, converter):
    """The folder's weights would load by name into a different model (logits 1.21 off): refused, naming the
    converter, which computes the source exactly."""
    mamba = source().eval()
    mamba.save_pretrained(tmp_path)
    for load in (FPMambaForCausalLM.from_pretrained, FPMambaConfig.from_pretrained):
        with pytest.raises(ValueError, match=f"FPMambaForCausalLM.{converter}"):
            load(tmp_path)
    converted = getattr(FPMambaForCausalLM, converter)(str(tmp_path)).eval()
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, mamba(ids).logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ a non-finite mixer gain
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("gain", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_mixer_gain_raises(backbone, gain):
    """At the default init (y-projections at zero) a NaN gain read as strength 0, so the mixer dropped out and
    generate() returned finite logits."""
    model = FPMambaForCausalLM(tiny_config(backbone=backbone)).eval()
    with torch.no_grad():
        model.backbone.layers[0].mixer.channel_mixer.gain.fill_(gain)
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(FloatingPointError, match="layers.0.mixer.channel_mixer.gain"):
        model.generate(ids, max_new_tokens=2, do_sample=False)
    with pytest.raises(FloatingPointError, match="layers.0.mixer.channel_mixer.gain"):
        model(ids)


# ------------------------------------------------------------------ Anderson steps that stall
def test_anderson_ends_at_picards_fixed_point():
    """Row 3 of this batch stalled under Anderson steps (at the 400-evaluation cap with relative residual 0.11, its
    logits 0.43 from Picard's) where Picard converges in 92: it now restarts as a Picard row and ends where Picard
    does. Row 6 converges under Anderson steps, in fewer evaluations than Picard's."""
    torch.manual_seed(0)
    model = tiny_model("mamba2", mixer_type="dplr", num_hidden_layers=1).double()
    ids = torch.randint(0, VOCAB, (8, 10))[[3, 6]]
    outs = {}
    with torch.no_grad():
        for solver in ("picard", "anderson"):
            model.config.fp_solver = solver
            outs[solver] = model(ids, fp_tol=1e-9, fp_max_iter=400)
    for out in outs.values():
        assert bool((out.fp_residual < 1e-9).all())
    torch.testing.assert_close(outs["anderson"].logits, outs["picard"].logits, rtol=1e-7, atol=1e-7)
    assert int(outs["anderson"].fp_iterations[1]) < int(outs["picard"].fp_iterations[1])


# ------------------------------------------------------------------ bools for numbers in the config
def _numeric_fields() -> list[str]:
    def numeric(hint) -> bool:
        return hint in (int, float) or any(numeric(arg) for arg in typing.get_args(hint) if arg is not list)

    return [name for name, hint in FPMambaConfig.field_types().items()
            if numeric(hint) and typing.get_origin(hint) is not tuple]


@pytest.mark.parametrize("field", _numeric_fields())
def test_config_refuses_a_bool_for_a_number(field):
    """`fp_tol=True` ran as 1.0 (a bool is an int in Python)."""
    with pytest.raises(ValueError, match=f"invalid {field}=True"):
        FPMambaConfig(**{field: True})


def test_config_refuses_a_misspelled_field():
    with pytest.raises(ValueError, match="did you mean 'mixer_rank'"):
        FPMambaConfig(mixer_rnak=3)


# ------------------------------------------------------------------ huge finite inputs to the RMSNorms
@pytest.mark.parametrize("scale", [1e20, 1e30, 1e37])
def test_rms_norms_normalise_large_finite_inputs(scale):
    """Their squares overflowed fp32 and the norm returned 0; now scale-invariant, and the plain formula to fp32
    rounding for ordinary inputs (the mean of squares is taken in fp64)."""
    x = torch.randn(3, 5, 32)
    norm = FPMambaRMSNorm(32, eps=1e-5)
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), plain, rtol=2e-7, atol=0)
    torch.testing.assert_close(norm(x * scale), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)))
    z = torch.randn(3, 5, 32)
    groups = (x * F.silu(z)).reshape(3, 5, 2, 16)
    expected = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True))).reshape(3, 5, 32)
    torch.testing.assert_close(GatedRMSNorm(32, group_size=16, eps=1e-5)(x * scale, z), expected)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_huge_embeddings_give_the_logits_of_exact_arithmetic(backbone):
    """Embeddings of magnitude 1e30 gave zero logits in fp32; the same model in fp64 (no overflow) is the reference."""
    model = tiny_model(backbone)
    exact = FPMambaForCausalLM(model.config).double().eval()
    exact.load_state_dict(model.state_dict())
    embeds = torch.randn(2, 5, model.config.hidden_size) * 1e30
    with torch.no_grad():
        got = model(inputs_embeds=embeds).logits
        expected = exact(inputs_embeds=embeds.double()).logits
    assert got.abs().amax() > 0.1
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ a cache of another model
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("other, message", [
    (dict(num_hidden_layers=3), "built for a model of 3 layers"),
    (dict(hidden_size=48), "hidden_size=48"),
])
def test_cache_of_another_model_is_refused(backbone, other, message):
    """A cache of more layers was used without a word; another width failed in torch.cat."""
    model = tiny_model(backbone)
    ids = torch.randint(0, VOCAB, (2, 4))
    cache = tiny_model(backbone, **other)(ids).cache
    with pytest.raises(ValueError, match=message):
        model(ids[:, :1], cache=cache)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_cache_of_another_backbone_is_refused(backbone):
    other = next(name for name in BACKBONES if name != backbone)
    ids = torch.randint(0, VOCAB, (2, 4))
    cache = tiny_model(other, num_hidden_layers=tiny_model(backbone).config.num_hidden_layers)(ids).cache
    with pytest.raises(ValueError, match=f"backbone={other!r}"):
        tiny_model(backbone)(ids[:, :1], cache=cache)


def test_cache_of_another_model_of_the_same_architecture_continues():
    ids = torch.randint(0, VOCAB, (2, 4))
    cache = tiny_model()(ids).cache
    tiny_model()(ids[:, :1], cache=cache)  # same structural fields, other weights: the caller's choice


# ------------------------------------------------------------------ return_dict=False
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_return_dict_false_tuple_order(backbone):
    """(loss, logits, cache, hidden_states, fp_iterations, fp_residual) without the None entries, as documented in
    forward() and docs/architecture.md."""
    model = tiny_model(backbone)
    ids = torch.randint(0, VOCAB, (2, 4))
    with torch.no_grad():
        full = model(ids, labels=ids, output_hidden_states=True)
        loss, logits, cache, hidden, iterations, residual = model(ids, labels=ids, output_hidden_states=True,
                                                                  return_dict=False)
        plain = model(ids, return_dict=False)
        no_cache = model(ids, use_cache=False, return_dict=False)
        base = model.backbone(ids, return_dict=False)
    torch.testing.assert_close(loss, full.loss)
    torch.testing.assert_close(logits, full.logits)
    assert isinstance(cache, DynamicCache) and len(hidden) == len(full.hidden_states)
    assert torch.equal(iterations, full.fp_iterations) and torch.equal(residual, full.fp_residual)
    assert [type(v) for v in plain] == [torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]
    assert len(no_cache) == 3 and no_cache[1].dtype == torch.long
    assert len(base) == 4 and base[0].shape == (2, 4, model.config.hidden_size) and isinstance(base[1], DynamicCache)
