"""Batches for the harness: task rows -> tensors, and the lengths evaluated for length generalisation."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

if TYPE_CHECKING:
    from ..tasks import TaskSpec


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack task rows into `input_ids`, `shift_labels` and `labels` (LongTensor (batch, T)).

    The rows' `shift_labels` are aligned (shift_labels[:, i] is the target of the output at position i), which is
    how the models' causal-LM loss (transformers' ForCausalLMLoss) takes them. `labels` (the same tensor) is added
    because transformers' Mamba2 computes a loss only when it is given, and Trainer counts the targets of a batch
    (`num_items_in_batch`, which weighs every target equally under gradient accumulation) only when a batch has
    it; the loss itself uses `shift_labels` and never shifts `labels`. With transformers' default collator instead
    (no `labels`), FP-Mamba and the LSTM train the same (docs/tasks.md, "Training on the task datasets").
    Task rows are right padded and carry no attention mask: in a causal model trailing padding cannot change the
    outputs at the real positions before it.
    """
    shift_labels = torch.as_tensor(np.stack([np.asarray(r["shift_labels"]) for r in rows]), dtype=torch.long)
    return {
        "input_ids": torch.as_tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long),
        "shift_labels": shift_labels,
        "labels": shift_labels,
    }


def require_positive_int(name: str, value: Any) -> None:
    """A ValueError naming `name` unless `value` is a positive int (a bool is refused: True would count as 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def eval_lengths(train_length: int, factor: int = 4, max_points: int = 32) -> list[int]:
    """Lengths from 2 to `factor` x `train_length`, evenly stepped (at most about `max_points`), always including
    the training length and the longest length. Each argument must be a positive integer (a ValueError names it)."""
    for name, value in (("train_length", train_length), ("eval_factor", factor), ("eval_points", max_points)):
        require_positive_int(name, value)
    longest = factor * train_length
    step = max(1, -(-(longest - 2) // max_points))
    lengths = set(range(2, longest + 1, step)) | {train_length, longest}
    return sorted(lengths)


def curriculum_caps(steps: int, fraction: float, start: int, longest: int) -> list[int]:
    """The longest length of each training step under a length curriculum: it grows from `start` to `longest` over
    the first `fraction` of the steps, each length in between taking an equal share (within one step; with fewer
    ramp steps than lengths some are skipped), reaching `longest` at the last step of the ramp, then stays there."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the curriculum fraction must be in (0, 1], got {fraction}")
    if not 1 <= start <= longest:
        raise ValueError(f"the curriculum must start at a length in [1, {longest}], got {start}")
    ramp = max(1, round(fraction * steps))
    n_lengths = longest - start + 1
    return [start + (n_lengths * (s + 1) - 1) // ramp if s < ramp else longest for s in range(steps)]


def curriculum_rows(task: TaskSpec, caps: list[int], batch_size: int, min_length: int, seed: int
                    ) -> datasets.Dataset:
    """Training rows in curriculum order, `batch_size` per step, for non-decreasing `caps` (`curriculum_caps`): a
    step whose cap is L holds lengths drawn uniformly in [min(min_length, L), L], padded to L's own row width
    (every batch is one step, so short steps cost less). Each cap's rows come from their own seed. Train on them in
    this order (sequentially)."""
    if any(a > b for a, b in zip(caps, caps[1:])):
        raise ValueError("curriculum caps must not decrease")
    steps_per_cap = Counter(caps)  # insertion order = the order of the steps
    return datasets.concatenate_datasets([
        task.build(n * batch_size, min(min_length, cap), cap, seed=seed * 100_003 + cap)
        for cap, n in steps_per_cap.items()
    ])


__all__ = ["collate", "curriculum_caps", "curriculum_rows", "eval_lengths", "require_positive_int"]
