"""The uniform TaskSpec interface over all tasks."""

import numpy as np
import pytest
import torch

from fpmamba_lab.harness import ExperimentConfig, TrainSettings, run_experiment
from fpmamba_lab.tasks import IGNORE_INDEX, TASKS, get_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_uniform_interface(name):
    spec = get_task(name)
    assert spec.name == name
    min_len, max_len = spec.train_lengths
    ds = spec.build(16, min_len, max_len, 0)
    assert ds.column_names == ["input_ids", "shift_labels", "length"]
    batch = ds.with_format("torch")[:]
    ids, labels = batch["input_ids"], batch["shift_labels"]
    assert ids.shape == labels.shape == (16, spec.seq_len(max_len))
    assert ids.dtype == labels.dtype == torch.int64
    assert ((ids >= 0) & (ids < spec.vocab_size)).all()
    padding = ids == spec.pad_token_id  # no task uses its PAD id inside a row
    assert (labels[padding] == IGNORE_INDEX).all()
    assert (padding.int().diff(dim=1) >= 0).all()  # right padding: no real token after a PAD
    supervised = labels[labels != IGNORE_INDEX]
    assert supervised.numel() > 0 and ((supervised >= 0) & (supervised < spec.vocab_size)).all()
    if spec.bos_token_id is not None:
        assert (ids[:, 0] == spec.bos_token_id).all()

    perfect = torch.where(labels == IGNORE_INDEX, 0, labels)
    metrics = spec.metrics(perfect, labels)
    assert all(v == 1.0 for k, v in metrics.items() if "acc" in k)
    wrong = torch.where(labels == IGNORE_INDEX, 0, (labels + 1) % spec.vocab_size)
    assert all(v < 1.0 for k, v in spec.metrics(wrong, labels).items() if "acc" in k)


def test_split_lengths_and_padding(tmp_path):
    spec = get_task("parity")
    ds = spec.dataset("eval", 8, seed=1, pad_to=300, cache_dir=tmp_path)
    lengths = np.array(ds["length"])
    assert ((lengths >= 40) & (lengths <= 256)).all()
    assert len(ds[0]["input_ids"]) == 300
    assert ds["input_ids"] == spec.dataset("eval", 8, seed=1, pad_to=300, cache_dir=tmp_path)["input_ids"]


def test_paper_vocab_sizes_and_lookup():
    assert {n: TASKS[n].vocab_size for n in TASKS} == {
        "A5": 67, "S5": 127, "copy": 29, "modular_arithmetic": 12, "parity": 3,
    }
    s3 = get_task("S3")
    assert s3.vocab_size == 13 and s3.pad_token_id == 7 and s3.bos_token_id == 6
    with pytest.raises(KeyError):
        get_task("nonsense")


@pytest.mark.parametrize(("task", "train_length", "min_train_length", "expected"), [
    ("A5", 16, None, 1),  # every prefix of a word problem is supervised
    ("S3", 8, 8, 1),
    ("copy", 20, None, 5),  # the task's shortest training string
    ("copy", 20, 7, 7),  # the run's
    ("copy", 4, None, 4),  # capped at the training length
    ("parity", 16, None, 3),
])
def test_the_shortest_trained_length_of_a_task(task, train_length, min_train_length, expected):
    assert get_task(task).shortest_trained_length(train_length, min_train_length) == expected


@pytest.mark.parametrize("name", sorted(TASKS))
def test_supervises_prefixes_says_whether_a_row_has_an_answer_per_element(name):
    spec = get_task(name)
    row = spec.build(4, 6, 6, 0)[0]
    per_element = sum(label != IGNORE_INDEX for label in row["shift_labels"]) == row["length"]
    assert spec.supervises_prefixes == per_element


@pytest.mark.parametrize("min_train_length", [0, 9])
def test_a_shortest_training_row_outside_the_training_range_is_refused(tmp_path, min_train_length):
    config = ExperimentConfig(task="copy", models=["lstm"], output_dir=str(tmp_path), train_length=6,
                              min_train_length=min_train_length, training=TrainSettings(steps=1))
    with pytest.raises(ValueError, match=f"got {min_train_length}, 6"):
        run_experiment(config)
