"""A plain Trainer's evaluate() works with an ordinary compute_metrics; the shipped callback logs telemetry."""

from __future__ import annotations

import datasets
import numpy as np
from train_helpers import tiny_model, token_batch
from transformers import Trainer, TrainingArguments

from fpmamba_hf import FixedPointLogCallback


def _data(rows: int, length: int, seed: int) -> datasets.Dataset:
    ids = token_batch(rows, length, seed).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})


def _accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred  # plain arrays: the telemetry and the cache are not predictions
    assert isinstance(logits, np.ndarray) and logits.ndim == 3
    return {"accuracy": float((logits[:, :-1].argmax(-1) == labels[:, 1:]).mean())}


def test_evaluate_with_compute_metrics_and_telemetry_in_the_logs(tmp_path):
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                             max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                             disable_tqdm=True, remove_unused_columns=False, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_data(8, 12, 0), eval_dataset=_data(8, 12, 1),
                      compute_metrics=_accuracy, callbacks=[FixedPointLogCallback()])
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["eval_fp_iterations_mean"] >= 1.0 and metrics["eval_fp_iterations_max"] >= 1.0
    assert "eval_fp_residual_max" in metrics
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(train_logs) == 2 and all(log["fp_iterations_mean"] >= 1.0 for log in train_logs)


def test_attach_puts_the_callback_first(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True)
    trainer = Trainer(model=tiny_model(), args=args)
    callback = FixedPointLogCallback.attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback
    metrics = trainer.evaluate(_data(4, 8, 2))
    assert metrics["eval_fp_iterations_mean"] >= 1.0
