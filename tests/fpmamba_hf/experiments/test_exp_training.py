"""AlignedLabelTrainer scores the output at position i against labels[:, i] (the tasks' convention), not the
next-token shift of HF causal-LM losses."""

import torch
import torch.nn.functional as F
from transformers import TrainingArguments

from fpmamba_hf.experiments import AlignedLabelTrainer, ModelSpec, build_model, collate
from fpmamba_hf.tasks import get_task


def test_loss_uses_aligned_labels(tmp_path):
    task = get_task("S3")
    torch.manual_seed(0)
    model = build_model("fpmamba", ModelSpec(hidden_size=16, head_dim=8, state_size=8, fp_max_iter=3), task.vocab_size)
    trainer = AlignedLabelTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    batch = collate(task.build(6, 5, 5, seed=3))
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"]).logits
    aligned = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    shifted = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(loss, aligned)
    assert not torch.allclose(loss, shifted)
    # The model's own loss with the aligned labels passed as shift_labels agrees (the documented alternative).
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], labels=batch["labels"], shift_labels=batch["labels"]).loss
    assert torch.allclose(own, aligned, atol=1e-6)
