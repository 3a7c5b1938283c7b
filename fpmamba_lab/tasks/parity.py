"""Parity of a bit string (docs/method.md, "The paper's tasks": vocabulary 3, train 3..40, eval 40..256).

Vocabulary: bit ``0`` = id 0, bit ``1`` = id 1, PAD = id 2; no BOS.

Supervision choice: only the output at the *last* bit is supervised, with the
parity (number of ones mod 2) of the whole string, as in the classification
form of the task (Deletang et al. 2023). Per-position running parity would be
a denser, easier signal; we keep the harder end-only version so that the metric
is "is the whole string's parity right".

Rows (aligned targets, right padding), for bits ``b_1 .. b_n``::

    input_ids    = [b_1,  ..., b_{n-1}, b_n,            PAD, ...]
    shift_labels = [-100, ..., -100,    sum(b) mod 2,   -100, ...]
    length       = n
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ._common import IGNORE_INDEX, cached, make_dataset, row_width, sequences_correct

PAD_ID = 2
VOCAB_SIZE = 3


def parity_dataset(
    num_examples: int,
    min_length: int,
    max_length: int,
    seed: int,
    pad_to: int | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Uniform random bit strings with length uniform in ``[min_length, max_length]``.

    ``pad_to`` defaults to ``max_length``.
    """
    width = row_width(min_length, max_length, max_length, pad_to)

    def build() -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        # Drawn at max_length (not pad_to) so the data does not depend on the padding width.
        bits = rng.integers(0, 2, size=(num_examples, max_length))
        bits = np.pad(bits, ((0, 0), (0, width - max_length)))
        n = rng.integers(min_length, max_length + 1, size=num_examples)
        j = np.arange(width)[None, :]
        input_ids = np.where(j < n[:, None], bits, PAD_ID)
        parity = np.where(j < n[:, None], bits, 0).sum(axis=1) % 2
        labels = np.where(j == n[:, None] - 1, parity[:, None], IGNORE_INDEX)
        return make_dataset(input_ids, labels, n)

    params = {"n": num_examples, "min_length": min_length, "max_length": max_length,
              "seed": seed, "pad_to": width}
    return cached(cache_dir, "parity", params, build)


def parity_metrics(pred_ids: Any, labels: Any) -> dict[str, float]:
    """``acc`` over the supervised (last-bit) positions, from aligned ``(N, T)`` arrays."""
    correct, supervised = sequences_correct(pred_ids, labels)
    return {"acc": float(correct[supervised].mean())}
