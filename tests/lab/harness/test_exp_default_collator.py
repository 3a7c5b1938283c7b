"""The task datasets given to transformers' Trainer without a data_collator (its default collator): the aligned
targets travel as `shift_labels`, which the models' causal-LM loss uses as they are, so training, `evaluate()`'s
eval_loss and `predict()` match the lab's own collate, and a setting that cannot work raises instead of shifting
the targets a second time."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from fpmamba_lab.harness import MODEL_KINDS, ModelSpec, build_model, collate
from fpmamba_lab.tasks import get_task

TASK = get_task("S3")
CHANCE = math.log(6)  # S3 has 6 elements: the loss of a uniform guess among them
SPEC = ModelSpec(hidden_size=32, head_dim=16, state_size=8, chunk_size=8)
STEPS, BATCH = 60, 32
TRAIN_ROWS = TASK.build(STEPS * BATCH, 1, 4, seed=0)  # mixed lengths: right padding, -100 past each row's end


def trainer(kind: str, tmp_path, steps: int = 1, lab_collate: bool = False, label_names=("shift_labels",),
            **datasets) -> Trainer:
    """A Trainer on S3 rows; the default collator unless `lab_collate` (then the harness's collate and settings).
    The learning rate is constant, so a shorter run takes the same first steps as a longer one."""
    torch.manual_seed(0)
    model = build_model(kind, SPEC, TASK.vocab_size, TASK.pad_token_id, TASK.bos_token_id)
    args = TrainingArguments(
        output_dir=str(tmp_path / kind), per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
        max_steps=steps, learning_rate=2e-2, lr_scheduler_type="constant", logging_steps=1, report_to="none", seed=0,
        data_seed=0, disable_tqdm=True, save_strategy="no", dataloader_pin_memory=False,
        **({"remove_unused_columns": False} if lab_collate else {"label_names": label_names and list(label_names)}),
    )
    extra = {"data_collator": collate} if lab_collate else {}
    return Trainer(model=model, args=args, train_dataset=TRAIN_ROWS, **datasets, **extra)


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_the_default_collator_trains_evaluates_and_predicts_as_the_lab_collate(tmp_path):
    evalset = TASK.build(64, 4, 4, seed=1)
    default = trainer("fpmamba", tmp_path, steps=STEPS, eval_dataset=evalset)
    default.train()
    lab = trainer("fpmamba", tmp_path, steps=10, lab_collate=True)
    lab.train()
    assert losses(default)[:10] == pytest.approx(losses(lab), rel=1e-5)  # the same seed takes the same steps
    assert sum(losses(default)[-10:]) / 10 < 0.8 < CHANCE  # learned (a second shift would leave it near chance)

    metrics = default.evaluate()
    with torch.no_grad():
        batch = collate(evalset)
        logits = default.model(input_ids=batch["input_ids"].to(default.model.device)).logits.cpu()
    aligned = F.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten(), ignore_index=-100)
    assert metrics["eval_loss"] == pytest.approx(aligned.item(), rel=1e-5)

    predicted = default.predict(evalset)
    assert torch.equal(torch.as_tensor(predicted.label_ids), batch["shift_labels"])  # aligned, for compute_metrics
    torch.testing.assert_close(torch.as_tensor(predicted.predictions), logits, rtol=1e-5, atol=1e-5)
    assert TASK.metrics(predicted.predictions.argmax(-1), predicted.label_ids)["token_acc"] > 0.5


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_kind_gets_the_aligned_loss_from_a_default_collated_batch(kind, tmp_path):
    """Trainer keeps `shift_labels` (a label name) and drops `length`; FP-Mamba, its diagonal ablation and the LSTM
    score the targets as they are. transformers' Mamba2 computes a loss only from `labels`: Trainer refuses."""
    run = trainer(kind, tmp_path)
    batch = next(iter(run.get_train_dataloader()))
    assert set(batch) == {"input_ids", "shift_labels"}
    if kind == "mamba2":
        with pytest.raises(ValueError, match="did not return a loss"):
            run.compute_loss(run.model, batch)
        return
    with torch.no_grad():
        loss = run.compute_loss(run.model, batch)
        logits = run.model(input_ids=batch["input_ids"]).logits
    aligned = F.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, aligned)


def test_without_the_label_name_the_trainer_refuses_instead_of_training_on_shifted_targets(tmp_path):
    """Trainer's defaults drop `shift_labels` (not a named argument of forward()): the model gets no targets and
    Trainer says so, rather than the silent second shift a `labels` column of aligned targets got."""
    run = trainer("fpmamba", tmp_path, label_names=None)
    with pytest.raises(ValueError, match="did not return a loss"):
        run.train()
