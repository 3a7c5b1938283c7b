"""The length curriculum: the longest length of each step grows from the start length to the training length in
equal shares of the ramp, the rows come in that order (one batch per step, each padded to its own cap), and the
Trainer consumes them in that order."""

import json
from collections import Counter

import pytest
from transformers import set_seed

from fpmamba_lab.harness import ExperimentConfig, ModelSpec, TrainSettings, build_model, run_experiment
from fpmamba_lab.harness.data import curriculum_caps, curriculum_rows
from fpmamba_lab.harness.training import train
from fpmamba_lab.tasks import get_task

TINY_MODEL = ModelSpec(hidden_size=16, state_size=8, head_dim=8, chunk_size=8, fp_max_iter=3, fp_max_iter_eval=5)


@pytest.mark.parametrize("steps, fraction, start, longest", [
    (20, 0.5, 2, 6), (7, 1.0, 3, 16), (100, 0.3, 2, 16), (5, 0.5, 4, 12), (9, 0.25, 5, 5),
])
def test_caps_ramp_in_equal_shares_then_hold(steps, fraction, start, longest):
    caps = curriculum_caps(steps, fraction, start, longest)
    ramp = max(1, round(fraction * steps))
    assert len(caps) == steps and caps[0] >= start and caps[ramp - 1] == longest
    assert all(a <= b for a, b in zip(caps, caps[1:]))
    assert all(c == longest for c in caps[ramp:])
    shares = Counter(caps[:ramp])
    if ramp >= longest - start + 1:  # every length gets a step, none more than one step above another
        assert set(shares) == set(range(start, longest + 1))
        assert max(shares.values()) - min(shares.values()) <= 1


@pytest.mark.parametrize("fraction, start, match", [(0.0, 2, "fraction"), (1.5, 2, "fraction"),
                                                    (0.5, 0, "start"), (0.5, 17, "start")])
def test_bad_curricula_are_refused(fraction, start, match):
    with pytest.raises(ValueError, match=match):
        curriculum_caps(10, fraction, start, 16)


@pytest.mark.parametrize("task_name, min_length", [("S5", 16), ("copy", 5), ("parity", 3)])
def test_rows_follow_the_caps_one_batch_per_step(task_name, min_length):
    task = get_task(task_name)
    caps = curriculum_caps(9, 0.6, 3, 10)
    rows = curriculum_rows(task, caps, 4, min_length, seed=1)
    assert len(rows) == 9 * 4
    full_width = len(task.build(1, 10, 10, seed=0)[0]["input_ids"])
    for step, cap in enumerate(caps):
        batch = rows.select(range(4 * step, 4 * step + 4))
        assert len({len(r) for r in batch["input_ids"]}) == 1  # one width per batch: they stack
        assert len(batch[0]["input_ids"]) == len(task.build(1, cap, cap, seed=0)[0]["input_ids"]) <= full_width
        if task_name != "copy":  # copying's `length` counts the string, not the tokens: bounded the same way
            assert all(min(min_length, cap) <= n <= cap for n in batch["length"])


def test_the_trainer_takes_the_rows_in_curriculum_order(tmp_path):
    task = get_task("S3")
    caps = curriculum_caps(6, 0.5, 2, 8)
    rows = curriculum_rows(task, caps, 3, 8, seed=0)
    set_seed(0)
    model = build_model("fpmamba", TINY_MODEL, task.vocab_size, task.pad_token_id, task.bos_token_id)
    widths = []
    model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    train(model, rows, TrainSettings(steps=6, batch_size=3, progress_bar=False), str(tmp_path), in_order=True)
    assert widths == [cap + 1 for cap in caps]  # BOS + the step's longest word


def test_a_curriculum_run_records_its_setting(tmp_path):
    config = ExperimentConfig(task="S3", models=["fpmamba"], output_dir=str(tmp_path), train_length=6,
                              eval_points=3, eval_examples=4, eval_batch_size=4, model=TINY_MODEL,
                              training=TrainSettings(steps=4, batch_size=2, progress_bar=False),
                              curriculum_fraction=0.5, curriculum_start_length=3)
    run_experiment(config)
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert (saved["curriculum_fraction"], saved["curriculum_start_length"]) == (0.5, 3)


def test_a_curriculum_with_a_fixed_row_count_is_refused(tmp_path):
    config = ExperimentConfig(task="S3", models=["fpmamba"], output_dir=str(tmp_path), train_length=6,
                              train_examples=100, model=TINY_MODEL, curriculum_fraction=0.5)
    with pytest.raises(ValueError, match="leave train_examples unset"):
        run_experiment(config)


def test_a_start_length_without_a_curriculum_is_refused(tmp_path):
    config = ExperimentConfig(task="S3", models=["fpmamba"], output_dir=str(tmp_path), train_length=6,
                              model=TINY_MODEL, curriculum_start_length=4)
    with pytest.raises(ValueError, match="no effect without a curriculum"):
        run_experiment(config)
