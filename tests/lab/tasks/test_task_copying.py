"""Copy task: sequence layout, supervised positions, prompt split and accuracies."""

import re

import numpy as np
import pytest

from fpmamba_lab.tasks import IGNORE_INDEX
from fpmamba_lab.tasks.copying import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SEP_ID,
    copy_accuracy,
    copy_dataset,
    copy_metrics,
    decode,
    encode,
    split_prompt,
    vocab_size,
)


def test_vocab():
    assert vocab_size() == 29
    assert encode("$ab|ab._") == [BOS_ID, 4, 5, SEP_ID, 4, 5, EOS_ID, PAD_ID]
    assert decode(encode("$zy|zy.")) == "$zy|zy."


def test_layout_and_supervision():
    ds = copy_dataset(40, min_length=5, max_length=12, seed=0)
    for row in ds:
        n, ids, labels = row["length"], row["input_ids"], row["shift_labels"]
        assert 5 <= n <= 12 and len(ids) == 2 * 12 + 3
        text = decode(ids)
        match = re.fullmatch(r"\$([a-y]+)\|([a-y]+)\.(_*)", text)
        assert match and match.group(1) == match.group(2) and len(match.group(1)) == n
        assert ids[2 * n + 3 :] == [PAD_ID] * (len(ids) - 2 * n - 3)
        supervised = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        # Outputs at "|" and at each copied letter, predicting the next token.
        assert supervised == list(range(n + 1, 2 * n + 2))
        assert [labels[i] for i in supervised] == ids[n + 2 : 2 * n + 3]
        assert labels[supervised[-1]] == EOS_ID


def test_num_letters_and_determinism():
    a = copy_dataset(30, 5, 10, seed=4, num_letters=3)
    assert {t for row in a["input_ids"] for t in row} <= {PAD_ID, BOS_ID, SEP_ID, EOS_ID, 4, 5, 6}
    assert a["input_ids"] == copy_dataset(30, 5, 10, seed=4, num_letters=3)["input_ids"]
    assert a["input_ids"] != copy_dataset(30, 5, 10, seed=5, num_letters=3)["input_ids"]


def test_split_prompt():
    prompt, continuation = split_prompt(encode("$abc|abc.__"))
    assert decode(prompt) == "$abc|" and decode(continuation) == "abc."
    row = copy_dataset(1, 7, 7, seed=0)[0]
    prompt, continuation = split_prompt(np.array(row["input_ids"]))
    assert prompt + continuation == row["input_ids"][: 2 * 7 + 3]


def test_copy_accuracy_hand_made():
    expected = [encode("abc."), encode("de.")]
    assert copy_accuracy(expected, expected) == {"string_acc": 1.0, "char_acc": 1.0}
    # one wrong letter; second prediction misses its "." (truncated generation).
    predicted = [encode("abd."), encode("de")]
    assert copy_accuracy(predicted, expected) == {"string_acc": 0.0, "char_acc": pytest.approx(4 / 5)}
    # extra tokens after the expected continuation are ignored.
    assert copy_accuracy([encode("abc.xx")], [encode("abc.")])["string_acc"] == 1.0


def test_copy_metrics_teacher_forced():
    ds = copy_dataset(6, 3, 4, seed=1)
    labels = np.array(ds["shift_labels"])
    perfect = np.where(labels == IGNORE_INDEX, 0, labels)
    metrics = copy_metrics(perfect, labels)
    assert metrics["string_acc"] == metrics["char_acc"] == 1.0
    assert {k for k in metrics if k.startswith("string_acc@")} == {f"string_acc@{n}" for n in set(ds["length"])}
    wrong = perfect.copy()
    first = np.flatnonzero(labels[0] != IGNORE_INDEX)[0]
    wrong[0, first] = EOS_ID  # first copied letter of row 0 is wrong
    metrics = copy_metrics(wrong, labels)
    assert metrics["string_acc"] == pytest.approx(5 / 6)
    assert metrics["char_acc"] == pytest.approx(1 - 1 / sum(ds["length"]))
