"""Parity task: end-only supervision and metric."""

import numpy as np

from fpmamba_lab.tasks import IGNORE_INDEX
from fpmamba_lab.tasks.parity import PAD_ID, VOCAB_SIZE, parity_dataset, parity_metrics


def test_layout_and_label():
    assert VOCAB_SIZE == 3
    ds = parity_dataset(50, min_length=3, max_length=40, seed=0)
    for row in ds:
        n, ids, labels = row["length"], row["input_ids"], row["shift_labels"]
        assert 3 <= n <= 40 and len(ids) == 40
        assert set(ids[:n]) <= {0, 1} and ids[n:] == [PAD_ID] * (40 - n)
        assert [i for i, t in enumerate(labels) if t != IGNORE_INDEX] == [n - 1]
        assert labels[n - 1] == sum(ids[:n]) % 2
    assert set(ds["shift_labels"][i][ds["length"][i] - 1] for i in range(50)) == {0, 1}


def test_deterministic_and_independent_of_padding():
    a = parity_dataset(20, 3, 10, seed=0)
    b = parity_dataset(20, 3, 10, seed=0, pad_to=16)
    assert [r[:10] for r in b["input_ids"]] == a["input_ids"]
    assert a["input_ids"] != parity_dataset(20, 3, 10, seed=1)["input_ids"]


def test_metrics():
    x = IGNORE_INDEX
    labels = np.array([[x, x, 1], [x, 0, x]])
    assert parity_metrics(np.array([[0, 0, 1], [1, 1, 2]]), labels) == {"acc": 0.5}
