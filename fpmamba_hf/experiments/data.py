"""Batches for the harness: task rows -> tensors, and the lengths evaluated for length generalisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack task rows into `input_ids`, `labels` and `shift_labels` (LongTensor (batch, T)).

    Task labels are aligned (labels[:, i] is the target of the output at position i), so they go to the models'
    causal-LM loss (transformers' ForCausalLMLoss) as `shift_labels`, which it uses as they are instead of shifting
    `labels`. `labels` (the same tensor) is there because Trainer and transformers' Mamba2 compute a loss only when
    it is; Trainer counts the targets (`num_items_in_batch`) on `shift_labels`.
    The attention mask is left out on purpose: task rows are right padded, FP-Mamba accepts left padding only, and
    in a causal model trailing padding cannot change the outputs at the real positions before it.
    """
    labels = torch.as_tensor(np.stack([np.asarray(r["labels"]) for r in rows]), dtype=torch.long)
    return {
        "input_ids": torch.as_tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long),
        "labels": labels,
        "shift_labels": labels,
    }


def eval_lengths(train_length: int, factor: int = 4, max_points: int = 32) -> list[int]:
    """Lengths from 2 to `factor` x `train_length`, evenly stepped (at most about `max_points`), always including
    the training length and the longest length."""
    longest = factor * train_length
    step = max(1, -(-(longest - 2) // max_points))
    lengths = set(range(2, longest + 1, step)) | {train_length, longest}
    return sorted(lengths)


__all__ = ["collate", "eval_lengths"]
