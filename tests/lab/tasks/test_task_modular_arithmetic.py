"""Modular arithmetic with brackets: generator, evaluator (vs Python eval mod 5), dataset, metrics."""

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpmamba_lab.tasks import IGNORE_INDEX
from fpmamba_lab.tasks.modular_arithmetic import (
    EQUALS_ID,
    PAD_ID,
    VOCAB_SIZE,
    decode,
    encode,
    evaluate,
    generate_expression,
    modular_arithmetic_dataset,
    modular_arithmetic_metrics,
    scaled_accuracy,
)


def python_value(text):
    return eval(text) % 5  # noqa: S307 - test oracle on generated digit/operator strings


def test_vocab():
    assert VOCAB_SIZE == 12
    assert decode(range(12)) == "01234+-*()=_"
    assert encode("(3 * -2) = 4") == [8, 3, 7, 6, 2, 9, 10, 4]


@pytest.mark.parametrize("length", range(1, 61))
def test_generated_length_and_value(length):
    rng = random.Random(length)
    for _ in range(20):
        tokens, value = generate_expression(length, rng)
        assert len(tokens) == length
        assert value == python_value(decode(tokens)) == evaluate(tokens)


def test_leaves():
    rng = random.Random(0)
    shapes = {1: r"\d", 2: r"-\d", 3: r"\(\d\)", 4: r"\(-\d\)"}
    for length, pattern in shapes.items():
        assert re.fullmatch(pattern, decode(generate_expression(length, rng)[0]))


expressions = st.recursive(
    st.sampled_from("01234"),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from("+-*"), inner).map("".join),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"-{e}"),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(expressions)
def test_evaluator_matches_python_precedence(text):
    # Unbracketed strings like "3-2*-4+1" exercise precedence and unary minus.
    assert evaluate(text) == python_value(text)


@pytest.mark.parametrize("bad", ["", "3+", "(3", "3)", "34", "*3", "3=1"])
def test_evaluator_rejects_malformed(bad):
    with pytest.raises(ValueError):
        evaluate(bad)


def test_dataset_layout_and_supervision():
    ds = modular_arithmetic_dataset(60, min_length=3, max_length=40, seed=0)
    assert ds.column_names == ["input_ids", "shift_labels", "length"]
    for row in ds:
        n, ids, labels = row["length"], row["input_ids"], row["shift_labels"]
        assert 3 <= n <= 40 and len(ids) == 42
        value = python_value(decode(ids[:n]))
        assert ids[n] == EQUALS_ID and ids[n + 1] == value
        assert ids[n + 2 :] == [PAD_ID] * (40 - n)
        assert [i for i, t in enumerate(labels) if t != IGNORE_INDEX] == [n]
        assert labels[n] == value
    assert len(set(ds["length"])) > 10


def test_deterministic_per_seed():
    a = modular_arithmetic_dataset(20, 5, 30, seed=0)
    assert a["input_ids"] == modular_arithmetic_dataset(20, 5, 30, seed=0)["input_ids"]
    assert a["input_ids"] != modular_arithmetic_dataset(20, 5, 30, seed=1)["input_ids"]


def test_scaled_accuracy_and_metrics():
    assert scaled_accuracy(1.0) == 1.0
    assert scaled_accuracy(0.2) == pytest.approx(0.0)
    assert scaled_accuracy(0.6) == pytest.approx(0.5)
    x = IGNORE_INDEX
    labels = np.array([[x, 3, x], [x, x, 1], [2, x, x], [x, 0, x]])
    preds = np.array([[0, 3, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    metrics = modular_arithmetic_metrics(preds, labels)
    assert metrics == {"acc": 0.75, "scaled_acc": pytest.approx((0.75 - 0.2) / 0.8)}
