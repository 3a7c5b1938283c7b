"""transformers.Trainer on a tiny FP-Mamba: loss contract, gradient accumulation, resume, the example script."""

from __future__ import annotations

import importlib.util

import datasets
import pytest
import torch
import torch.nn.functional as F
from train_helpers import REPO, tiny_model, token_batch
from transformers import Trainer, TrainingArguments


def _example():
    spec = importlib.util.spec_from_file_location("train_trainer_example", REPO / "examples" / "train_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _aligned_dataset(rows: int, length: int, seed: int) -> datasets.Dataset:
    """Random tokens with aligned targets; row i supervises only its first 1 + (i * 5) % length positions, so
    micro-batches hold different numbers of targets (-100 elsewhere)."""
    ids = token_batch(rows, length, seed)
    targets = token_batch(rows, length, seed + 1)
    keep = torch.arange(length)[None, :] < (1 + (torch.arange(rows) * 5) % length)[:, None]
    labels = torch.where(keep, targets, torch.full_like(targets, -100))
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "shift_labels": labels.tolist()})


def _args(out, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(out), use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, seed=0,
                  disable_tqdm=True, remove_unused_columns=False, lr_scheduler_type="constant", weight_decay=0.0)
    values.update(overrides)
    return TrainingArguments(**values)


def test_shift_labels_loss_is_aligned_cross_entropy() -> None:
    """shift_labels are used as given (no shift); num_items_in_batch turns the mean into sum / items."""
    model = tiny_model().eval()
    data = _aligned_dataset(4, 10, seed=5)
    ids, labels = torch.tensor(data["input_ids"]), torch.tensor(data["shift_labels"])
    with torch.no_grad():
        out = model(ids, shift_labels=labels)
        summed = model(ids, labels=labels, shift_labels=labels, num_items_in_batch=torch.tensor(1000)).loss
        shifted = model(ids, labels=labels).loss
    expected = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    n = int((labels != -100).sum())
    torch.testing.assert_close(summed, expected * n / 1000)
    # `labels` alone are next-token targets (shifted inside): a different loss on the same tensors.
    assert not torch.allclose(shifted, expected)


def test_gradient_accumulation_equals_big_batch(tmp_path) -> None:
    """2 x batch 4 with accumulation == batch 8 (one SGD step with lr 1 and no clipping: the update is the gradient).
    fp_train_quantile = 1 keeps every row's fixed point independent of the rest of its batch."""
    collate = _example().collate
    data = _aligned_dataset(8, 12, seed=7)
    updates = []
    for batch, accum in ((8, 1), (4, 2)):
        model = tiny_model(fp_train_quantile=1.0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = _args(tmp_path / f"b{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                     max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collate).train()
        updates.append({n: before[n] - p.detach() for n, p in model.named_parameters()})
    for name in updates[0]:
        torch.testing.assert_close(updates[1][name], updates[0][name], rtol=1e-4, atol=1e-6, msg=name)

    # The data make the contract matter: averaging the two micro-batch means gives another gradient.
    model = tiny_model(fp_train_quantile=1.0).train()
    batch = collate([data[i] for i in range(8)])
    for half in (slice(0, 4), slice(4, 8)):
        (model(batch["input_ids"][half], shift_labels=batch["labels"][half]).loss / 2).backward()
    naive = model.backbone.embeddings.weight.grad
    assert not torch.allclose(naive, updates[0]["backbone.embeddings.weight"], rtol=1e-2, atol=1e-4)


def test_resume_continues_with_the_same_losses(tmp_path) -> None:
    """6 steps straight vs 3 steps, checkpoint, resume to 6: identical losses at steps 4..6 (CPU, deterministic)."""
    collate = _example().collate
    data = _aligned_dataset(32, 12, seed=9)

    def run(out, resume: str | None) -> dict[int, float]:
        args = _args(out, per_device_train_batch_size=4, max_steps=6, save_strategy="steps", save_steps=3,
                     learning_rate=3e-3)
        trainer = Trainer(model=tiny_model(), args=args, train_dataset=data, data_collator=collate)
        trainer.train(resume_from_checkpoint=resume)
        # A resumed run's history starts with the checkpoint's entries (steps 1..3).
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e and e["step"] > 3}

    straight = run(tmp_path / "a", None)
    resumed = run(tmp_path / "b", str(tmp_path / "a" / "checkpoint-3"))
    assert sorted(resumed) == sorted(straight) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-7)


def test_example_trainer_loss_falls(tmp_path) -> None:
    """examples/train_trainer.py on the copy task, tiny: the logged training loss falls."""
    summary = _example().main([
        "--task", "copy", "--min_len", "3", "--max_len", "5", "--max_steps", "24", "--batch_size", "8",
        "--hidden_size", "32", "--layers", "1", "--state_size", "8", "--fp_max_iter", "4", "--lr", "1e-2",
        "--train_examples", "192", "--eval_examples", "8", "--use_cpu", "--output_dir", str(tmp_path),
    ])
    losses = summary["train_losses"]
    assert summary["steps"] == 24 and len(losses) >= 6
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    assert (tmp_path / "summary.json").exists() and (tmp_path / "model.safetensors").exists()
