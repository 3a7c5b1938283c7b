"""Synthetic tasks of the FP-Mamba paper (docs/method.md, "The paper's tasks") as ``datasets.Dataset`` generators.

Every task yields rows with the same columns, all generated locally from a seed:

* ``input_ids``, ``shift_labels``: equal-width int rows, *right* padded with the
  task's PAD id (``shift_labels`` ``-100`` on padding and on unsupervised
  positions), so any batch of rows stacks without a collate function;
* ``length``: the task-level length (word / string / expression / bit count).

Targets are **aligned**: ``shift_labels[:, i]`` is the target of the model output
at position ``i`` (no next-token shift). That is what transformers' causal-LM
loss (``ForCausalLMLoss``) takes under the name ``shift_labels``, so FP-Mamba and
the lab's LSTM score them as they are, and transformers' ``Trainer`` with its
default collator trains on them given ``TrainingArguments(label_names=
["shift_labels"])`` (docs/tasks.md, "Training on the task datasets"). Elsewhere,
train with ``cross_entropy(logits.flatten(0, 1), shift_labels.flatten(),
ignore_index=-100)``. Metrics take ``pred_ids = logits.argmax(-1)`` and the
aligned targets of the same shape.

Use :func:`get_task` for a uniform :class:`TaskSpec`; the task modules hold
the details (token layouts, supervision, metric definitions).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from . import copying, modular_arithmetic, parity, word_problems
from ._common import IGNORE_INDEX
from .groups import PermutationGroup, get_group


@dataclass(frozen=True)
class TaskSpec:
    """Uniform description of a task for a training script.

    Attributes:
        name: registry key.
        family: what kind of task it is ("word_problem", "copy", "modular_arithmetic", "parity"); the
            harness keys its per-family settings on it (harness.defaults).
        vocab_size: embedding / output size.
        pad_token_id: id used for right padding.
        bos_token_id: id that starts every sequence, or ``None``.
        eos_token_id: id that ends the target (stop token for ``generate()``), or ``None``.
        train_lengths: paper's ``(min_len, max_len)`` for training.
        eval_lengths: paper's ``(min_len, max_len)`` for evaluation.
        supervises_prefixes: whether a row's targets hold the answer after every token (word problems), so that
            training on length ``L`` also trains every shorter length; otherwise only whole rows are supervised.
        build: ``build(num_examples, min_len, max_len, seed, pad_to=None, cache_dir=None)``.
        metrics: ``metrics(pred_ids, labels) -> dict[str, float]`` on aligned ``(N, T)`` arrays.
        seq_len: ``seq_len(max_len)``: tokens in the longest row, the default pad width.
    """

    name: str
    family: str
    vocab_size: int
    pad_token_id: int
    bos_token_id: int | None
    eos_token_id: int | None
    train_lengths: tuple[int, int]
    eval_lengths: tuple[int, int]
    supervises_prefixes: bool
    build: Callable[..., datasets.Dataset]
    metrics: Callable[[Any, Any], dict[str, float]]
    seq_len: Callable[[int], int]

    def dataset(
        self,
        split: Literal["train", "eval"],
        num_examples: int,
        seed: int,
        pad_to: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> datasets.Dataset:
        """Build with the paper's length range for ``split``; use distinct seeds per split."""
        min_len, max_len = self.train_lengths if split == "train" else self.eval_lengths
        return self.build(num_examples, min_len, max_len, seed, pad_to=pad_to, cache_dir=cache_dir)

    def shortest_training_row(self, train_length: int, min_train_length: int | None = None) -> int:
        """The shortest row of a training set up to ``train_length``: ``min_train_length``, or by default the
        paper's shortest training length capped at ``train_length`` (``build`` refuses a value outside
        ``1..train_length``)."""
        return min(self.train_lengths[0], train_length) if min_train_length is None else min_train_length

    def shortest_trained_length(self, train_length: int, min_train_length: int | None = None) -> int:
        """The shortest length a model trained on such a set was supervised at: 1 where every prefix is, else
        its shortest row. Shorter evaluation lengths lie outside what it was trained on."""
        return 1 if self.supervises_prefixes else self.shortest_training_row(train_length, min_train_length)


def word_problem_task(group: PermutationGroup | str) -> TaskSpec:
    """Word-problem task for any group (train on length 16, test on length 50 as in the paper)."""
    group = get_group(group) if isinstance(group, str) else group

    def build(num_examples: int, min_len: int, max_len: int, seed: int,
              pad_to: int | None = None, cache_dir: str | Path | None = None) -> datasets.Dataset:
        return word_problems.word_problem_dataset(
            group, num_examples, max_len, seed, min_length=min_len, pad_to=pad_to, cache_dir=cache_dir
        )

    return TaskSpec(
        name=group.name,
        family="word_problem",
        vocab_size=word_problems.vocab_size(group.order),
        pad_token_id=word_problems.pad_id(group.order),
        bos_token_id=word_problems.bos_id(group.order),
        eos_token_id=None,
        train_lengths=(16, 16),
        eval_lengths=(50, 50),
        supervises_prefixes=True,
        build=build,
        metrics=word_problems.word_problem_metrics,
        seq_len=lambda max_len: max_len + 1,
    )


TASKS: dict[str, TaskSpec] = {
    "A5": word_problem_task("A5"),
    "S5": word_problem_task("S5"),
    "copy": TaskSpec(
        name="copy",
        family="copy",
        vocab_size=copying.vocab_size(),
        pad_token_id=copying.PAD_ID,
        bos_token_id=copying.BOS_ID,
        eos_token_id=copying.EOS_ID,
        train_lengths=(5, 50),
        eval_lengths=(5, 100),
        supervises_prefixes=False,
        build=copying.copy_dataset,
        metrics=copying.copy_metrics,
        seq_len=lambda max_len: 2 * max_len + 3,
    ),
    "modular_arithmetic": TaskSpec(
        name="modular_arithmetic",
        family="modular_arithmetic",
        vocab_size=modular_arithmetic.VOCAB_SIZE,
        pad_token_id=modular_arithmetic.PAD_ID,
        bos_token_id=None,
        eos_token_id=None,
        train_lengths=(3, 40),
        # The paper's eval range is 40..256 in a context of 256; we read the lengths as
        # expression tokens and stop at 254 so that "= result" still fits in 256.
        eval_lengths=(40, 254),
        supervises_prefixes=False,
        build=modular_arithmetic.modular_arithmetic_dataset,
        metrics=modular_arithmetic.modular_arithmetic_metrics,
        seq_len=lambda max_len: max_len + 2,
    ),
    "parity": TaskSpec(
        name="parity",
        family="parity",
        vocab_size=parity.VOCAB_SIZE,
        pad_token_id=parity.PAD_ID,
        bos_token_id=None,
        eos_token_id=None,
        train_lengths=(3, 40),
        eval_lengths=(40, 256),
        supervises_prefixes=False,
        build=parity.parity_dataset,
        metrics=parity.parity_metrics,
        seq_len=lambda max_len: max_len,
    ),
}


def get_task(name: str) -> TaskSpec:
    """Task by name: a key of :data:`TASKS`, or any group name (``"S3"``, ``"A4"``, ``"Z7"``) for its word problem."""
    if name in TASKS:
        return TASKS[name]
    if re.fullmatch(r"[SAZ]\d+", name.strip().upper()):
        return word_problem_task(name)
    raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)} or a group name like 'S3'")


__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "PermutationGroup",
    "TaskSpec",
    "get_group",
    "get_task",
    "word_problem_task",
]
