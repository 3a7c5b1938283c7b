"""Packed sequences (fpmamba_hf/packing.py): documents packed into rows, with their boundaries in any of the formats
forward() reads, compute exactly what each document computes alone (logits, the collator's loss, gradients), on
every backbone and mixer; position ids that count up are not boundaries (generate() is unchanged); packed input
with a cache and malformed or disagreeing boundaries raise; docs/training.md's packing example runs as written."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.mixers import MIXERS
from transformers import DataCollatorWithFlattening

from fpmamba_hf import FPMambaForCausalLM
from tests.fpmamba_hf.helpers import VOCAB, fp64_model

TRAINING_DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
# fp64 and a tight tolerance: "exactly as alone" is checked far below fp32 rounding.
TIGHT = dict(fp_tol=1e-9, fp_max_iter=400, fp_max_iter_eval=400)
# Where the mixer does not matter (boundary parsing, refusals): the one that converges in the fewest iterations.
QUICK_MIXER = "kronecker"
LENGTHS = (5, 9, 3)
# Each way a caller gives the boundaries: the collator's outputs (its default: position_ids), or fla's cu_seqlens.
FORMATS = {
    "position_ids": dict(),
    "seq_idx": dict(return_position_ids=False, return_seq_idx=True),
    "flash_attention": dict(return_position_ids=False, return_flash_attn_kwargs=True),
    "every_collator_output": dict(return_seq_idx=True, return_flash_attn_kwargs=True),
    "cu_seqlens": None,
}


def documents(lengths=LENGTHS, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]


def packed_batch(docs: list[torch.Tensor], fmt: str) -> dict:
    """The packed row (1, N) of `docs` with its labels (-100 at each document's first token) and its boundaries."""
    if FORMATS[fmt] is not None:
        return DataCollatorWithFlattening(**FORMATS[fmt])([{"input_ids": d.tolist()} for d in docs])
    batch = DataCollatorWithFlattening(return_position_ids=False)([{"input_ids": d.tolist()} for d in docs])
    batch["cu_seqlens"] = F.pad(torch.tensor([len(d) for d in docs]).cumsum(0), (1, 0))
    return batch


def separate_loss(model: FPMambaForCausalLM, docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of each document alone, concatenated (N, vocab); the mean next-token loss over every document)."""
    logits = [model(d[None]).logits[0] for d in docs]
    total = sum(F.cross_entropy(lg[:-1], d[1:], reduction="sum") for lg, d in zip(logits, docs))
    return torch.cat(logits), total / sum(len(d) - 1 for d in docs)


def gradients(model: FPMambaForCausalLM) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_packed_training_equals_each_document_alone(backbone, fmt):
    """Logits, the loss with the collator's -100 labels, and every parameter's gradient."""
    model = fp64_model(backbone, "householder", **TIGHT).train()
    docs = documents()
    batch = packed_batch(docs, fmt)
    out = model(**batch)
    # The model's loss is computed in fp32 (transformers' ForCausalLMLoss): the gradients are compared through the
    # same loss in fp64, from the packed logits and the collator's labels.
    labels = batch["labels"][0, 1:]
    F.cross_entropy(out.logits[0, :-1], labels, ignore_index=-100).backward()
    packed_grads = gradients(model)
    logits, loss = separate_loss(model, docs)
    loss.backward()
    alone_grads = gradients(model)
    torch.testing.assert_close(out.logits[0], logits, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.loss, loss.float(), rtol=1e-6, atol=0)
    assert packed_grads.keys() == alone_grads.keys()
    for name, g in alone_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-7, atol=1e-10, msg=name)
    # Without its boundaries the same row leaks state from one document into the next.
    with torch.no_grad():
        leaked = model(batch["input_ids"]).logits[0]
    assert (leaked - logits).abs().max() > 1e-4


@pytest.mark.parametrize("mixer_type", MIXERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_packed_rows_equal_each_document_alone(backbone, mixer_type):
    """Two rows of packed documents (position_ids per row, as a collator for several rows makes them): every
    document's logits and hidden states as alone; fp_iterations / fp_residual per row, its slowest document's."""
    model = fp64_model(backbone, mixer_type, **TIGHT)
    rows = [documents((4, 6, 2), seed=2), documents((7, 5), seed=3)]
    ids = torch.stack([torch.cat(r) for r in rows])
    position_ids = torch.stack([torch.cat([torch.arange(len(d)) for d in r]) for r in rows])
    with torch.no_grad():
        out = model(ids, position_ids=position_ids, output_hidden_states=True)
        alone = [[model(d[None], output_hidden_states=True) for d in r] for r in rows]
    assert out.cache is None  # use_cache unset: a packed batch builds none
    for r, row in enumerate(alone):
        torch.testing.assert_close(out.logits[r], torch.cat([a.logits[0] for a in row]), rtol=0, atol=1e-9)
        for i, hidden in enumerate(out.hidden_states):
            torch.testing.assert_close(hidden[r], torch.cat([a.hidden_states[i][0] for a in row]), rtol=0,
                                       atol=1e-9)
        assert torch.equal(out.fp_iterations[r], torch.stack([a.fp_iterations[0] for a in row]).amax(0))
        torch.testing.assert_close(out.fp_residual[r], torch.stack([a.fp_residual[0] for a in row]).amax(0),
                                   rtol=1e-6, atol=1e-13)  # a ratio of rounding-sized differences


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cu_seqlens_over_several_rows(backbone):
    """fla's cu_seqlens over the flattened rows: the same documents as per-row position_ids."""
    model = fp64_model(backbone, QUICK_MIXER, **TIGHT)
    docs = documents((3, 5, 4, 4))
    ids = torch.cat(docs).view(2, 8)
    position_ids = torch.cat([torch.arange(len(d)) for d in docs]).view(2, 8)
    with torch.no_grad():
        by_cu = model(ids, cu_seqlens=torch.tensor([0, 3, 8, 12, 16], dtype=torch.int32)).logits
        by_position = model(ids, position_ids=position_ids).logits
        alone = torch.cat([model(d[None]).logits[0] for d in docs]).view(2, 8, -1)
    torch.testing.assert_close(by_cu, alone, rtol=0, atol=1e-9)
    torch.testing.assert_close(by_position, alone, rtol=0, atol=1e-9)


def test_position_ids_that_count_up_are_not_boundaries():
    """0..T-1, and the ids generate() derives from a left-padded mask (padding at 0 in transformers 5.25, at 1
    before), run as the plain batch; generate() (which now passes them) gives the tokens of each prompt alone."""
    model = fp64_model("mamba2", QUICK_MIXER, **TIGHT)
    ids = torch.randint(0, VOCAB, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    counted = mask.cumsum(-1) - 1
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
        for position_ids in (torch.arange(6).expand(2, 6), counted.masked_fill(mask == 0, 0),
                             counted.masked_fill(mask == 0, 1)):
            torch.testing.assert_close(model(ids, attention_mask=mask, position_ids=position_ids).logits, plain,
                                       rtol=0, atol=0)
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        first = model.generate(ids[:1, 2:], max_new_tokens=4, do_sample=False)
    assert torch.equal(batched[0, 2:], first[0])


def test_packed_input_with_a_cache_is_refused():
    model = fp64_model("mamba2", QUICK_MIXER, **TIGHT)
    batch = packed_batch(documents(), "position_ids")
    del batch["labels"]
    with pytest.raises(ValueError, match="packed sequences .* cannot use a cache"):
        model(**batch, use_cache=True)
    cache = model(batch["input_ids"][:, :3], use_cache=True).cache
    with pytest.raises(ValueError, match="packed sequences .* cannot use a cache"):
        model(**batch, cache=cache)
    with pytest.raises(ValueError, match="packed sequences .* cannot use a cache"):
        model.generate(batch["input_ids"], position_ids=batch["position_ids"], max_new_tokens=2)


def test_malformed_or_disagreeing_boundaries_raise():
    model = fp64_model("mamba2", QUICK_MIXER, **TIGHT)
    docs = documents()
    batch = packed_batch(docs, "every_collator_output")
    ids, n = batch["input_ids"], batch["input_ids"].shape[1]
    with pytest.raises(ValueError, match="position_ids and seq_idx describe different document boundaries"):
        model(ids, position_ids=batch["position_ids"], seq_idx=torch.zeros_like(batch["seq_idx"]))
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k describe different"):
        model(ids, cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=torch.tensor([0, 9, n], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens must increase strictly from 0 to .* 17"):
        model(ids, cu_seqlens=torch.tensor([0, 5, 14]))
    with pytest.raises(ValueError, match="cu_seqlens must increase strictly"):
        model(ids, cu_seqlens=torch.tensor([0, 5, 5, n]))
    with pytest.raises(ValueError, match="seq_idx must be non-decreasing"):
        model(ids, seq_idx=batch["seq_idx"].flip(1))
    with pytest.raises(ValueError, match="max_length_q=5 but the longest document has 9"):
        model(ids, cu_seq_lens_q=batch["cu_seq_lens_q"], max_length_q=5)
    with pytest.raises(ValueError, match="crosses from one row of the batch into the next"):
        model(ids.view(1, n)[:, :16].reshape(2, 8), cu_seqlens=torch.tensor([0, 5, 16]))
    with pytest.raises(ValueError, match="boundaries together with padding"):
        model(ids, position_ids=batch["position_ids"], attention_mask=(torch.arange(n) > 0).long()[None])
    with pytest.raises(ValueError, match=r"position_ids must have shape \(batch, sequence\)"):
        model(ids, position_ids=batch["position_ids"][:, :-1])


def test_the_training_doc_s_packing_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/training.md, "Packing and padding": a real Trainer for a few steps on DataCollatorWithFlattening."""
    section = TRAINING_DOC.read_text().split("## Packing and padding")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the section has no python example"
    monkeypatch.chdir(tmp_path)  # the Trainer writes its output_dir
    scope = {"__name__": "__doc__"}
    exec(compile(blocks[0], str(TRAINING_DOC), "exec"), scope)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "True"  # as its comment says
    losses = [entry["loss"] for entry in scope["trainer"].state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
