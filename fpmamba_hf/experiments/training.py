"""Training through transformers' Trainer, with the task's aligned labels.

Loss choice: task labels are aligned (labels[:, i] is the target of the output at position i), while HF causal LMs
shift `labels` internally. Rather than rely on each model forwarding `shift_labels` to its loss (transformers'
Mamba2 and our LSTM do not share that path), `AlignedLabelTrainer.compute_loss` pops the labels and computes the
cross-entropy on the logits itself, identically for every model kind.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from .data import collate


class AlignedLabelTrainer(Trainer):
    """Trainer whose loss is cross-entropy against aligned labels, and which logs the mean fixed-point
    iterations of the training forwards (`fp_iter`) next to the loss when the model reports them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fp_iter_sum = 0.0
        self._fp_iter_count = 0

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        iterations = getattr(outputs, "fp_iterations", None)
        if iterations is not None:
            self._fp_iter_sum += float(iterations.float().mean())
            self._fp_iter_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._fp_iter_count and "loss" in logs:
            logs["fp_iter"] = round(self._fp_iter_sum / self._fp_iter_count, 2)
            self._fp_iter_sum, self._fp_iter_count = 0.0, 0
        super().log(logs, start_time)


@dataclass
class TrainSettings:
    """Optimisation settings (AdamW, cosine schedule with warmup, gradient clipping as in the paper)."""

    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 25
    progress_bar: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def train(model: nn.Module, train_dataset: datasets.Dataset, settings: TrainSettings, output_dir: str) -> dict:
    """Train `model` in place on `train_dataset`; returns a summary (runtime, final loss, log history)."""
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(settings.warmup_fraction * settings.steps),
        max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        remove_unused_columns=False,
        disable_tqdm=not settings.progress_bar,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=False,  # CPU-first harness: fp32 (pass a GPU recipe's own settings for bf16 runs)
    )
    trainer = AlignedLabelTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collate)
    start = time.perf_counter()
    result = trainer.train()
    runtime = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "runtime_s": round(runtime, 2),
        "steps": result.global_step,
        "final_loss": losses[-1] if losses else result.training_loss,
        "log_history": trainer.state.log_history,
    }


__all__ = ["AlignedLabelTrainer", "TrainSettings", "train"]
