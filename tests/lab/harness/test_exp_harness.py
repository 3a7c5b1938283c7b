"""Every task runs through the harness on CPU-sized settings: a few Trainer steps, evaluation at every length,
and results files that agree with the printed table and with each other."""

import json
from dataclasses import replace

import matplotlib.image as mpimg
import pytest

from fpmamba_lab.harness import (
    ExperimentConfig,
    ModelSpec,
    TrainSettings,
    eval_lengths,
    load_results_csv,
    run_experiment,
)
from fpmamba_lab.harness.evaluation import primary_metric
from fpmamba_lab.tasks import TASKS
from fpmamba_lab.tasks.modular_arithmetic import scaled_accuracy

TINY_MODEL = ModelSpec(hidden_size=16, state_size=8, head_dim=8, chunk_size=8, fp_max_iter=3, fp_max_iter_eval=5)
TINY_TRAINING = TrainSettings(steps=2, batch_size=4, logging_steps=1, progress_bar=False)


def tiny_config(task: str, models: list[str], out_dir) -> ExperimentConfig:
    return ExperimentConfig(task=task, models=models, output_dir=str(out_dir), train_length=4, eval_points=3,
                            eval_examples=6, eval_batch_size=4, model=TINY_MODEL, training=TINY_TRAINING)


def check_files_match(result, out_dir, train_length):
    """results.csv / results.json / table.txt hold exactly the evaluated numbers; plots are real PNGs."""
    rows = load_results_csv(out_dir / "results.csv")
    flat = [(name, r) for name, results in result.results.items() for r in results]
    assert len(rows) == len(flat)
    for row, (name, r) in zip(rows, flat):
        assert row["model"] == name and int(row["length"]) == r.length
        assert float(row["accuracy"]) == pytest.approx(r.accuracy)
    saved = json.loads((out_dir / "results.json").read_text())
    assert {name: [x["accuracy"] for x in rows] for name, rows in saved["results"].items()} == {
        name: [r.accuracy for r in rows] for name, rows in result.results.items()}
    assert (out_dir / "table.txt").read_text().strip() == result.table.strip()
    table_lines = result.table.splitlines()[2:-1]
    first = next(iter(result.results.values()))
    for line, r in zip(table_lines, first):
        cells = line.split()
        assert cells[0].rstrip("*") == str(r.length) and (cells[0].endswith("*") == (r.length == train_length))
        assert float(cells[1]) == pytest.approx(r.accuracy, abs=5e-4)
    for key in ("accuracy", "iterations"):
        image = mpimg.imread(result.files[key])
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.parametrize("task", sorted(TASKS) + ["S3"])
def test_every_task_trains_and_evaluates(task, tmp_path):
    result = run_experiment(tiny_config(task, ["fpmamba"], tmp_path))
    rows = result.results["fpmamba"]
    assert [r.length for r in rows] == eval_lengths(4, 4, 3)
    lowest = scaled_accuracy(0.0) if task == "modular_arithmetic" else 0.0  # the scaled accuracy is 0 at chance
    for r in rows:
        assert r.accuracy == r.metrics[primary_metric(r.metrics)]
        assert lowest <= r.accuracy <= 1.0
        assert 1.0 <= r.fp_iterations_mean <= r.fp_iterations_max <= TINY_MODEL.fp_max_iter_eval
    summary = result.training["fpmamba"]
    assert summary["steps"] == TINY_TRAINING.steps and summary["final_loss"] > 0
    assert any("fp_iterations_mean" in entry for entry in summary["log_history"])
    check_files_match(result, tmp_path, train_length=4)


def test_all_model_kinds_share_the_harness(tmp_path):
    result = run_experiment(tiny_config("S3", ["fpmamba", "diagonal", "mamba2", "lstm"], tmp_path))
    assert list(result.results) == ["fpmamba", "diagonal", "mamba2", "lstm"]
    assert all(r.fp_iterations_mean == 1.0 for r in result.results["diagonal"])  # one iteration, no mixer
    assert all(r.fp_iterations_mean is None for kind in ("mamba2", "lstm") for r in result.results[kind])
    assert result.models["mamba2"].config.num_hidden_layers == 2  # the paper's diagonal baselines have 2 layers
    check_files_match(result, tmp_path, train_length=4)


def test_the_evaluation_solve_is_set_on_the_trained_model_and_checked_before_training(tmp_path):
    config = replace(tiny_config("S3", ["fpmamba", "diagonal"], tmp_path), eval_fp_solve_chunk=2,
                     eval_fp_solver="anderson")
    result = run_experiment(config)
    trained = result.models["fpmamba"].config
    assert (trained.fp_solve_chunk, trained.fp_solver) == (2, "anderson")  # evaluated, saved and generated so
    assert result.models["diagonal"].config.fp_solve_chunk == 0  # the ablation stays as trained
    with pytest.raises(ValueError, match="fp_solve_chunk"):
        run_experiment(replace(config, eval_fp_solve_chunk=-1, output_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()  # refused before any training
