"""The harness trains on each model's own causal-LM loss with the task's aligned labels passed as `shift_labels`:
every kind scores the output at position i against labels[:, i] (the tasks' convention), -100 ignored, not the
next-token shift of `labels` alone."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from fpmamba_lab.harness import MODEL_KINDS, ModelSpec, build_model, collate
from fpmamba_lab.tasks import get_task


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_trainer_loss_is_the_aligned_cross_entropy(kind, tmp_path):
    task = get_task("S3")
    spec = ModelSpec(hidden_size=16, head_dim=8, state_size=8, chunk_size=8, fp_max_iter=3)
    model = build_model(kind, spec, task.vocab_size, task.pad_token_id, task.bos_token_id).eval()
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    batch = collate(task.build(6, 3, 5, seed=3))  # mixed lengths: right padding, -100 past each row's end
    items = batch["shift_labels"].ne(-100).sum()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
        loss = trainer.compute_loss(model, dict(batch))
        summed = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)  # as Trainer.train passes it
    aligned = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    shifted = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, aligned)
    torch.testing.assert_close(summed, aligned)
    assert not torch.allclose(loss, shifted)


@pytest.mark.parametrize("flag, value", [("--steps", "-1"), ("--steps", "0"), ("--batch-size", "0")])
def test_a_step_count_or_batch_size_below_one_is_refused_before_training(flag, value, tmp_path):
    """Trainer would read max_steps -1 as three epochs and 0 as one step: the CLI refuses them instead."""
    from fpmamba_lab.cli import main
    with pytest.raises(ValueError, match=f"TrainSettings.{flag[2:].replace('-', '_')} must be a positive integer"):
        main(["task", "train", "--task", "S3", "--models", "fpmamba", flag, value, "--output-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
