"""String copying (Jelassi et al. 2024; docs/method.md, "Copying").

A sequence is ``$ s | s .`` for a random string ``s`` of letters. The paper
trains on ``|s|`` in 5..50 and evaluates on 5..100. Only the copy and the final
``.`` are supervised, i.e. the outputs at the positions of ``|`` and of the copy
(each predicts the next token).

Vocabulary: ``PAD=0, $=1 (BOS), |=2 (SEP), .=3 (EOS)`` then ``num_letters``
letters from id 4 (``a`` = 4, ``b`` = 5, ...). The default 25 letters give the
paper's vocabulary size 29; how the paper's 29 splits into letters and symbols
is uncertain (docs/method.md, "Copying"), so ``num_letters`` is a parameter.

Rows (aligned targets, right padding), for ``s = x_1 .. x_n``::

    input_ids    = [$,    x_1,  ..., x_n,  |,   x_1, ..., x_n, .,    PAD, ...]
    shift_labels = [-100, -100, ..., -100, x_1, x_2, ..., .,   -100, -100, ...]
    length       = n

This module pads rows to a fixed width; it does not pack examples into windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ._common import IGNORE_INDEX, cached, make_dataset, row_width, to_numpy

PAD_ID = 0
BOS_ID = 1  # "$"
SEP_ID = 2  # "|"
EOS_ID = 3  # "."
FIRST_LETTER_ID = 4
DEFAULT_NUM_LETTERS = 25

_SYMBOLS = {PAD_ID: "_", BOS_ID: "$", SEP_ID: "|", EOS_ID: "."}


def vocab_size(num_letters: int = DEFAULT_NUM_LETTERS) -> int:
    return FIRST_LETTER_ID + num_letters


def encode(text: str) -> list[int]:
    """Token ids of a string over ``$ | .`` and lowercase letters (``_`` is PAD)."""
    inverse = {c: i for i, c in _SYMBOLS.items()}
    return [inverse[c] if c in inverse else FIRST_LETTER_ID + ord(c) - ord("a") for c in text]


def decode(ids: Sequence[int]) -> str:
    """Inverse of :func:`encode`."""
    return "".join(_SYMBOLS.get(int(i), chr(ord("a") + int(i) - FIRST_LETTER_ID)) for i in ids)


def copy_dataset(
    num_examples: int,
    min_length: int,
    max_length: int,
    seed: int,
    num_letters: int = DEFAULT_NUM_LETTERS,
    pad_to: int | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Copy examples with ``|s|`` uniform in ``[min_length, max_length]``.

    ``pad_to`` defaults to ``2 * max_length + 3``, the longest sequence.
    """
    width = row_width(min_length, max_length, 2 * max_length + 3, pad_to)

    def build() -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        strings = FIRST_LETTER_ID + rng.integers(0, num_letters, size=(num_examples, max_length))
        n = rng.integers(min_length, max_length + 1, size=num_examples)[:, None]
        j = np.arange(width)[None, :]
        # Gather string characters for the source (positions 1..n) and the copy (n+2..2n+1).
        source = np.take_along_axis(strings, np.clip(j - 1, 0, max_length - 1), axis=1)
        copy = np.take_along_axis(strings, np.clip(j - n - 2, 0, max_length - 1), axis=1)
        input_ids = np.select(
            [j == 0, j <= n, j == n + 1, j <= 2 * n + 1, j == 2 * n + 2],
            [BOS_ID, source, SEP_ID, copy, EOS_ID],
            default=PAD_ID,
        )
        # Output at position j predicts token j+1, supervised for the copy and the ".".
        next_tokens = np.concatenate([input_ids[:, 1:], np.full((num_examples, 1), PAD_ID)], axis=1)
        labels = np.where((j >= n + 1) & (j <= 2 * n + 1), next_tokens, IGNORE_INDEX)
        return make_dataset(input_ids, labels, n[:, 0])

    params = {"n": num_examples, "min_length": min_length, "max_length": max_length,
              "seed": seed, "num_letters": num_letters, "pad_to": width}
    return cached(cache_dir, "copy", params, build)


def split_prompt(input_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split one (possibly padded) row into the prompt ``$ s |`` and the continuation ``s .``.

    The prompt is what to feed ``generate()``; the continuation is the expected
    output, ending with ``EOS_ID`` (usable as ``eos_token_id`` to stop generation).
    """
    ids = [int(i) for i in to_numpy(input_ids).tolist()]
    sep = ids.index(SEP_ID)
    end = ids.index(EOS_ID, sep)
    return ids[: sep + 1], ids[sep + 1 : end + 1]


def copy_accuracy(predicted: Sequence[Sequence[int]], expected: Sequence[Sequence[int]]) -> dict[str, float]:
    """String and character accuracy of predicted continuations.

    Each ``expected[i]`` is a continuation ``s .``; ``predicted[i]`` is what the
    model produced there (teacher-forced argmax or ``generate()`` output; extra
    tokens past ``len(expected[i])`` are ignored, missing ones count as wrong).

    * ``string_acc``: fraction of examples whose whole continuation, ``.``
      included, is exact.
    * ``char_acc``: fraction of the copied characters of ``s`` (``.`` excluded)
      that are right, pooled over all examples.
    """
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} targets")
    exact, chars_right, chars_total = 0, 0, 0
    for pred, target in zip(predicted, expected):
        pred, target = [int(t) for t in pred][: len(target)], [int(t) for t in target]
        exact += pred == target
        chars_right += sum(p == t for p, t in zip(pred, target[:-1]))
        chars_total += len(target) - 1
    return {"string_acc": exact / max(len(expected), 1), "char_acc": chars_right / max(chars_total, 1)}


def copy_metrics(pred_ids: Any, labels: Any) -> dict[str, float]:
    """Teacher-forced metrics from aligned ``(N, T)`` predictions and labels.

    Returns :func:`copy_accuracy` overall plus ``string_acc@n`` for every string
    length ``n`` present.
    """
    pred, lab = to_numpy(pred_ids), to_numpy(labels)
    if pred.shape != lab.shape:
        raise ValueError(f"pred_ids shape {pred.shape} != labels shape {lab.shape}")
    supervised = lab != IGNORE_INDEX
    predicted = [p[m].tolist() for p, m in zip(pred, supervised)]
    expected = [t[m].tolist() for t, m in zip(lab, supervised)]
    metrics = copy_accuracy(predicted, expected)
    lengths = np.array([len(t) - 1 for t in expected])
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        sub = copy_accuracy([predicted[i] for i in rows], [expected[i] for i in rows])
        metrics[f"string_acc@{n}"] = sub["string_acc"]
    return metrics
