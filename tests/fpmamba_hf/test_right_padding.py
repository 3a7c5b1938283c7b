"""Right padding (tokenizer padding_side="right", DataCollatorForLanguageModeling) in a forward without a cache: each
row's logits, loss and gradients are those of the row alone, on every backbone and mixer, left + right padding
too; a hole in the mask raises; a cache is never filled from right padding (use_cache=True, a passed cache and
generate() raise and say to pad on the left; use_cache unset builds none)."""

import pytest
import torch
import torch.nn.functional as F
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.mixers import MIXERS
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DataCollatorForLanguageModeling, DynamicCache, PreTrainedTokenizerFast

from tests.fpmamba_hf.helpers import VOCAB, fp64_model

TIGHT = dict(fp_tol=1e-9, fp_max_iter=400, fp_max_iter_eval=400)
QUICK_MIXER = "kronecker"  # where the mixer does not matter (refusals): the fastest to converge
WORDS = [f"w{i}" for i in range(VOCAB - 1)]  # with [PAD], a vocabulary of VOCAB
TEXTS = ["w3 w1 w4 w1 w5 w9 w2", "w6 w5 w3 w5", "w8 w9 w7 w9 w3 w2"]


def tokenizer(padding_side: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS (id 0 is [PAD]), built locally."""
    vocab = {"[PAD]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", padding_side=padding_side)


def right_padded_batch() -> dict:
    """The standard LM recipe: DataCollatorForLanguageModeling(mlm=False) with right padding; labels -100 at padding."""
    tok = tokenizer("right")
    batch = DataCollatorForLanguageModeling(tok, mlm=False)([tok(t) for t in TEXTS])
    assert bool((batch["attention_mask"][:, -1] == 0).any()), "the batch must be right-padded"
    return batch


@pytest.mark.parametrize("backbone", BACKBONES)
def test_right_padded_training_equals_each_row_alone(backbone):
    """Per row: the logits of its real positions and its loss; the batch loss and gradients are the token-weighted
    rows'."""
    model = fp64_model(backbone, "householder", **TIGHT).train()
    batch = right_padded_batch()
    out = model(**batch)
    labels = batch["labels"]
    # The model's loss is fp32 (transformers' ForCausalLMLoss); gradients are compared through the same loss in fp64.
    per_token = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                reduction="none")
    counts = (labels[:, 1:] != -100).sum(1)
    (per_token.sum() / counts.sum()).backward()
    batch_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0
    for r, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        alone = model(batch["input_ids"][r:r + 1, :n], labels=batch["input_ids"][r:r + 1, :n])
        torch.testing.assert_close(out.logits[r, :n], alone.logits[0], rtol=0, atol=1e-9)
        torch.testing.assert_close(per_token[r].sum() / counts[r], alone.loss.double(), rtol=1e-6, atol=0)
        total = total + F.cross_entropy(alone.logits[0, :-1], batch["input_ids"][r, 1:n], reduction="sum")
    torch.testing.assert_close(out.loss, (total / counts.sum()).float(), rtol=1e-6, atol=0)
    (total / counts.sum()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(batch_grads[name], p.grad, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize("mixer_type", MIXERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_left_and_right_padding_equals_each_row_alone(backbone, mixer_type):
    model = fp64_model(backbone, mixer_type, **TIGHT)
    ids = torch.randint(0, VOCAB, (3, 8))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        assert out.cache is None  # use_cache unset and right padding: no cache holding the padding's state
        for r in range(3):
            real = mask[r].bool()
            alone = model(ids[r:r + 1, real]).logits[0]
            torch.testing.assert_close(out.logits[r, real], alone, rtol=0, atol=1e-9)


def test_a_hole_in_the_mask_is_refused():
    model = fp64_model("mamba2", QUICK_MIXER, **TIGHT)
    with pytest.raises(ValueError, match="padding inside a sequence"):
        model(torch.randint(0, VOCAB, (2, 4)), attention_mask=torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]]))


def test_a_cache_is_never_filled_from_right_padding():
    model = fp64_model("mamba2", QUICK_MIXER, **TIGHT)
    batch = right_padded_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with pytest.raises(ValueError, match='right-padded .* Pad on the left .*padding_side = "left"'):
        model(ids, attention_mask=mask, use_cache=True)
    with pytest.raises(ValueError, match="right-padded .* cannot fill a cache"):
        model(ids, attention_mask=mask, cache=DynamicCache(config=model.config))
    with pytest.raises(ValueError, match='padding_side = "left"'):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)
    # Continuing a cache with padded new tokens stays refused.
    cache = model(ids[:, :2], use_cache=True).cache
    with pytest.raises(ValueError, match="padding inside a continued sequence"):
        model(ids[:, 2:4], attention_mask=torch.tensor([[1, 1], [1, 0], [1, 1]]), cache=cache)


def test_left_padded_prompts_still_generate_with_a_cache():
    """The left-padding path is unchanged: generate() from a left-padded batch gives each prompt's tokens alone."""
    model = fp64_model("mamba2", QUICK_MIXER, **TIGHT)
    tok = tokenizer("left")
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        both = model.generate(**batch, max_new_tokens=3, do_sample=False)
        alone = model.generate(**tok(TEXTS[1:2], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert torch.equal(both[1, -alone.shape[1]:], alone[0])
