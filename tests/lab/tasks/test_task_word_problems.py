"""Word-problem datasets: layout, labels from directly composed permutations, metrics."""

import numpy as np
import pytest
import torch

from fpmamba_lab.tasks import IGNORE_INDEX
from fpmamba_lab.tasks.groups import compose, get_group
from fpmamba_lab.tasks.word_problems import (
    bos_id,
    pad_id,
    sequence_accuracy_by_length,
    vocab_size,
    word_problem_dataset,
    word_problem_metrics,
)


def direct_prefix_products(group, word):
    out, product = [], group.elements[0]
    for idx in word:
        product = compose(product, group.elements[idx])
        out.append(group.index(product))
    return out


@pytest.mark.parametrize("name", ["A5", "S5"])
def test_fixed_length_layout_and_labels(name):
    g = get_group(name)
    ds = word_problem_dataset(name, num_examples=20, length=16, seed=0)
    assert ds.column_names == ["input_ids", "shift_labels", "length"]
    for row in ds:
        ids, labels = row["input_ids"], row["shift_labels"]
        assert len(ids) == len(labels) == 17 and row["length"] == 16
        assert ids[0] == bos_id(g.order) == g.order and labels[0] == IGNORE_INDEX
        assert all(0 <= t < g.order for t in ids[1:])
        assert labels[1:] == direct_prefix_products(g, ids[1:])


def test_vocab_sizes_match_paper():
    assert vocab_size(get_group("A5").order) == 67
    assert vocab_size(get_group("S5").order) == 127


def test_variable_length_padding():
    g = get_group("A5")
    ds = word_problem_dataset(g, num_examples=50, length=12, seed=3, min_length=2, pad_to=20)
    lengths = set()
    for row in ds:
        k = row["length"]
        lengths.add(k)
        assert 2 <= k <= 12 and len(row["input_ids"]) == 20
        assert row["input_ids"][k + 1 :] == [pad_id(g.order)] * (19 - k)
        assert [i for i, t in enumerate(row["shift_labels"]) if t != IGNORE_INDEX] == list(range(1, k + 1))
        assert row["shift_labels"][1 : k + 1] == direct_prefix_products(g, row["input_ids"][1 : k + 1])
    assert len(lengths) > 3


def test_deterministic_per_seed():
    a = word_problem_dataset("A5", 30, 10, seed=1)
    b = word_problem_dataset("A5", 30, 10, seed=1)
    c = word_problem_dataset("A5", 30, 10, seed=2)
    assert a["input_ids"] == b["input_ids"] and a["shift_labels"] == b["shift_labels"]
    assert a["input_ids"] != c["input_ids"]


def test_cache_roundtrip(tmp_path):
    a = word_problem_dataset("S3", 10, 5, seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    b = word_problem_dataset("S3", 10, 5, seed=0, cache_dir=tmp_path)
    assert a.to_dict() == b.to_dict()
    word_problem_dataset("S3", 10, 5, seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_torch_batches_stack():
    ds = word_problem_dataset("A5", 8, 6, seed=0, min_length=3).with_format("torch")
    batch = ds[:8]
    assert batch["input_ids"].shape == (8, 7) and batch["shift_labels"].dtype == torch.int64


def test_sequence_accuracy_by_length_hand_made():
    x = IGNORE_INDEX
    labels = np.array([[x, 1, 2, 3, 4], [x, 1, 2, 3, 4], [x, 5, 6, x, x]])
    preds = np.array([[9, 1, 2, 0, 4], [9, 1, 2, 3, 4], [9, 0, 6, 0, 0]])
    # row 0 fails from length 3 on, row 2 (length 2) fails from length 1 on.
    assert sequence_accuracy_by_length(preds, labels) == {1: 2 / 3, 2: 2 / 3, 3: 0.5, 4: 0.5}
    assert sequence_accuracy_by_length(torch.tensor(preds), torch.tensor(labels))[3] == 0.5
    metrics = word_problem_metrics(preds, labels)
    assert metrics["token_acc"] == pytest.approx(8 / 10)
    assert metrics["seq_acc"] == pytest.approx(1 / 3)
    assert metrics["seq_acc@4"] == 0.5
