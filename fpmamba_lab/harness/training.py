"""Training through transformers' Trainer, with the task's aligned labels.

The loss is each model's own causal-LM loss: the collator (`data.collate`) passes the aligned task labels as
`shift_labels`, which FP-Mamba, transformers' Mamba2 and our LSTM all hand to transformers' ForCausalLMLoss, so
every kind is scored the same way (labels[:, i] against the output at position i, -100 ignored). The mean
fixed-point iterations of the training forwards are logged by `FixedPointLogCallback` (`fp_iterations_mean`,
`fp_iterations_max`, `fp_residual_max`) for the models that report them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import datasets
import torch
import torch.nn as nn
from transformers import Trainer, TrainingArguments

from fpmamba_hf import FixedPointLogCallback

from .data import collate, require_positive_int


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

    def __post_init__(self) -> None:
        # Trainer reads max_steps <= 0 as "train by epochs" (3 of them) and one step as 0: refuse, do not reinterpret.
        for name in ("steps", "batch_size", "logging_steps"):
            require_positive_int(f"TrainSettings.{name}", getattr(self, name))
        if not self.learning_rate > 0:
            raise ValueError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.warmup_fraction < 1 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(f"TrainSettings: warmup_fraction must be in [0, 1), weight_decay and max_grad_norm >= 0 "
                             f"(0: no clipping), got {self.warmup_fraction!r}, {self.weight_decay!r}, "
                             f"{self.max_grad_norm!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def train(model: nn.Module, train_dataset: datasets.Dataset, settings: TrainSettings, output_dir: str,
          in_order: bool = False) -> dict:
    """Train `model` in place on `train_dataset` (shuffled, or in its own order if `in_order`: a curriculum);
    returns a summary (runtime, final loss, log history)."""
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
        train_sampling_strategy="sequential" if in_order else "random",
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=False,  # CPU-first harness: fp32 (pass a GPU recipe's own settings for bf16 runs)
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collate)
    FixedPointLogCallback.attach(trainer)
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


__all__ = ["TrainSettings", "train"]
