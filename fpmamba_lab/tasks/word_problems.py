"""Group word problems (A5 / S5 state tracking, docs/method.md, "Word problems (A5, S5)").

Each example is a word ``g_1 ... g_k`` of uniformly random group elements; the
target at every position ``t`` is the running product ``g_1 * ... * g_t``
(left to right, see :mod:`fpmamba_lab.tasks.groups`).

Token layout for a group of order ``n``:

* ids ``0 .. n-1`` are group elements (element index; id 0 is the identity);
* ``bos_id(n) = n`` and ``pad_id(n) = n + 1``;
* ids ``n + 2 .. n + 6`` are reserved and never produced, so that the vocabulary
  is ``n + 7`` as in the paper (67 for A5, 127 for S5).

Rows (aligned targets, right padding)::

    input_ids    = [BOS, g_1, ..., g_k, PAD, ...]
    shift_labels = [-100, p_1, ..., p_k, -100, ...]   # p_t = g_1 * ... * g_t
    length       = k
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ._common import IGNORE_INDEX, cached, make_dataset, row_width, sequences_correct
from .groups import PermutationGroup, get_group

# The paper's vocabulary is |G| + 7; we use two of the specials (BOS, PAD).
NUM_SPECIAL_TOKENS = 7


def bos_id(order: int) -> int:
    """BOS token id for a group with ``order`` elements."""
    return order


def pad_id(order: int) -> int:
    """PAD token id for a group with ``order`` elements."""
    return order + 1


def vocab_size(order: int) -> int:
    """Vocabulary size for a group with ``order`` elements (elements + 7 specials)."""
    return order + NUM_SPECIAL_TOKENS


def word_problem_dataset(
    group: PermutationGroup | str,
    num_examples: int,
    length: int,
    seed: int,
    min_length: int | None = None,
    pad_to: int | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Random words with prefix-product labels.

    Args:
        group: a group or a name understood by :func:`get_group` (``"A5"``, ``"S5"``).
        num_examples: number of rows.
        length: maximum word length ``k`` (all words have this length unless
            ``min_length`` is given).
        seed: seed of the numpy generator; same arguments give the same dataset.
        min_length: if given, each word length is uniform in ``[min_length, length]``.
        pad_to: row width; defaults to ``length + 1`` (BOS + longest word).
        cache_dir: if given, the dataset is saved there and reloaded on later calls.
    """
    group = get_group(group) if isinstance(group, str) else group
    min_length = length if min_length is None else min_length
    width = row_width(min_length, length, length + 1, pad_to)

    def build() -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        words = rng.integers(0, group.order, size=(num_examples, length))
        lengths = rng.integers(min_length, length + 1, size=num_examples)
        prefix = group.prefix_products(words)
        real = np.arange(length)[None, :] < lengths[:, None]
        input_ids = np.full((num_examples, width), pad_id(group.order), dtype=np.int64)
        labels = np.full((num_examples, width), IGNORE_INDEX, dtype=np.int64)
        input_ids[:, 0] = bos_id(group.order)
        input_ids[:, 1 : length + 1] = np.where(real, words, pad_id(group.order))
        labels[:, 1 : length + 1] = np.where(real, prefix, IGNORE_INDEX)
        return make_dataset(input_ids, labels, lengths)

    params = {"group": group.name, "n": num_examples, "length": length, "seed": seed,
              "min_length": min_length, "pad_to": width}
    return cached(cache_dir, f"word_problem-{group.name}", params, build)


def sequence_accuracy_by_length(pred_ids: Any, labels: Any) -> dict[int, float]:
    """Sequence accuracy at every prefix length.

    ``pred_ids`` and ``labels`` are aligned ``(N, T)`` arrays/tensors with the
    BOS at position 0, so prefix length ``L`` ends at position ``L``. A prefix
    of length ``L`` is correct iff every supervised position ``1..L`` is
    correct; the accuracy at ``L`` is taken over the rows whose position ``L``
    is supervised (i.e. whose word has at least ``L`` elements). Lengths that no
    row reaches are omitted.
    """
    correct, supervised = sequences_correct(pred_ids, labels)
    prefix_ok = np.logical_and.accumulate(correct, axis=1)
    result: dict[int, float] = {}
    for pos in range(1, correct.shape[1]):
        rows = supervised[:, pos]
        if rows.any():
            result[pos] = float(prefix_ok[rows, pos].mean())
    return result


def word_problem_metrics(pred_ids: Any, labels: Any) -> dict[str, float]:
    """``token_acc``, full-sequence ``seq_acc`` and ``seq_acc@L`` for every prefix length ``L``."""
    correct, supervised = sequences_correct(pred_ids, labels)
    metrics = {
        "token_acc": float(correct[supervised].mean()),
        "seq_acc": float(correct.all(axis=1).mean()),
    }
    metrics.update({f"seq_acc@{k}": v for k, v in sequence_accuracy_by_length(pred_ids, labels).items()})
    return metrics
