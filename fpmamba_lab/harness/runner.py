"""One experiment = one task, several model kinds: train each with Trainer, evaluate length generalisation,
write results (JSON, CSV), the table and the plots. The CLI and examples/demo.py both go through here."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, set_seed

from fpmamba_hf import FPMambaConfig

from ..tasks import get_task
from .data import curriculum_caps, curriculum_rows, eval_lengths
from .evaluation import LengthResult, check_evaluation, evaluate_lengths
from .models import ModelSpec, build_model, count_parameters
from .reporting import format_table, plot_results, write_results
from .training import TrainSettings, train


@dataclass
class ExperimentConfig:
    """What to run. min_train_length None = the task's own minimum (`TaskSpec.shortest_training_row`); train_examples
    None = steps x batch size (every training row is seen once). curriculum_fraction > 0: a length curriculum, the
    longest training length grows from curriculum_start_length to train_length over that fraction of the steps
    (`data.curriculum_caps`; rows in that order, one pass). Evaluation covers 2 .. eval_factor x train_length (at
    most eval_points lengths) with eval_examples fresh rows per length. eval_fp_max_iter / eval_fp_tol override an
    FP-Mamba's budget per evaluation call (the diagonal ablation keeps its one iteration, part of that model);
    eval_fp_solve_chunk / eval_fp_solver (None: as trained) are set on a trained FP-Mamba's config before its
    evaluation, so it is evaluated, saved and generates with them (e.g. trained with whole-sequence solves, evaluated
    chunk by chunk with Anderson steps: docs/method.md, "How many iterations"). Every evaluation setting is checked
    before training."""

    task: str
    models: list[str]
    output_dir: str
    train_length: int
    min_train_length: int | None = None
    train_examples: int | None = None
    curriculum_fraction: float = 0.0
    curriculum_start_length: int = 2
    eval_factor: int = 4
    eval_points: int = 32
    eval_examples: int = 256
    eval_batch_size: int = 128
    eval_fp_max_iter: int | None = None
    eval_fp_tol: float | None = None
    eval_fp_solve_chunk: int | None = None
    eval_fp_solver: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    training: TrainSettings = field(default_factory=TrainSettings)
    save_models: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExperimentResult:
    """Per-model evaluation rows, training summaries, trained models, the printed table and written files."""

    results: dict[str, list[LengthResult]]
    training: dict[str, dict]
    models: dict[str, nn.Module]
    table: str
    files: dict[str, Path]


def _report(out_dir: Path, payload: dict, results: dict[str, list[LengthResult]], train_length: int,
            title: str, iteration_cap: int | None) -> tuple[str, dict[str, Path]]:
    """Write results.json, results.csv, table.txt and the plots; return the table and the file paths."""
    table = format_table(results, train_length)
    files = write_results(out_dir, payload, results)
    files["table"] = out_dir / "table.txt"
    files["table"].write_text(table + "\n")
    files.update(plot_results(out_dir, results, train_length, title=title, iteration_cap=iteration_cap))
    return table, files


def _training_rows(config: ExperimentConfig, task, min_len: int):
    """The training dataset: `train_examples` rows (default steps x batch size) of lengths in [min_len,
    train_length], or with a curriculum one pass of steps x batch size rows in curriculum order."""
    settings = config.training
    if not config.curriculum_fraction:
        if config.curriculum_start_length != ExperimentConfig.curriculum_start_length:  # the field's default
            raise ValueError(f"curriculum_start_length={config.curriculum_start_length} has no effect without a "
                             "curriculum: set curriculum_fraction > 0 too (or leave the start length out)")
        n_train = config.train_examples or settings.steps * settings.batch_size
        return task.build(n_train, min_len, config.train_length, settings.seed)
    if config.train_examples:
        raise ValueError("a length curriculum makes one pass over steps x batch_size rows in order: leave "
                         f"train_examples unset (got {config.train_examples})")
    caps = curriculum_caps(settings.steps, config.curriculum_fraction, config.curriculum_start_length,
                           config.train_length)
    return curriculum_rows(task, caps, settings.batch_size, min_len, settings.seed)


def run_experiment(config: ExperimentConfig) -> ExperimentResult:
    """Train and evaluate every model of `config`, then write results.json, results.csv, table.txt and plots."""
    task = get_task(config.task)
    out_dir = Path(config.output_dir)
    # Every evaluation setting is refused before training, not after it.
    lengths = eval_lengths(config.train_length, config.eval_factor, config.eval_points)
    check_evaluation(config.eval_examples, config.eval_batch_size, config.eval_fp_max_iter, config.eval_fp_tol)
    set_evaluation_solve(FPMambaConfig(), config.eval_fp_solve_chunk, config.eval_fp_solver)
    min_len = task.shortest_training_row(config.train_length, config.min_train_length)
    train_rows = _training_rows(config, task, min_len)

    results: dict[str, list[LengthResult]] = {}
    summaries: dict[str, dict] = {}
    models: dict[str, nn.Module] = {}
    for kind in config.models:
        set_seed(config.training.seed)  # the same initial draw for a kind, whatever ran before it
        model = build_model(kind, config.model, task.vocab_size, task.pad_token_id, task.bos_token_id)
        print(f"[{config.task}] training {kind}: {count_parameters(model):,} parameters")
        summary = train(model, train_rows, config.training, str(out_dir / "trainer" / kind),
                        in_order=config.curriculum_fraction > 0)
        if kind == "fpmamba":
            set_evaluation_solve(model.config, config.eval_fp_solve_chunk, config.eval_fp_solver)
        start = time.perf_counter()
        results[kind] = evaluate_lengths(
            model, task, lengths, config.eval_examples, config.eval_batch_size,
            fp_max_iter=config.eval_fp_max_iter, fp_tol=config.eval_fp_tol,
            progress_bar=config.training.progress_bar,
        )
        summary["eval_runtime_s"] = round(time.perf_counter() - start, 2)
        summary["parameters"] = count_parameters(model)
        summaries[kind] = summary
        models[kind] = model
        if config.save_models:
            model.save_pretrained(out_dir / "models" / kind)

    payload = {"config": config.to_dict(), "training": summaries, "torch_threads": torch.get_num_threads()}
    cap = (config.eval_fp_max_iter or config.model.fp_max_iter_eval) if "fpmamba" in config.models else None
    table, files = _report(out_dir, payload, results, config.train_length, config.task, cap)
    return ExperimentResult(results=results, training=summaries, models=models, table=table, files=files)


def set_evaluation_solve(model_config: FPMambaConfig, solve_chunk: int | None, solver: str | None) -> None:
    """Set a trained FP-Mamba's chunked solve and solver step for evaluation (None: leave as trained); the config
    checks the values (a ValueError names a bad one)."""
    values = {k: v for k, v in (("fp_solve_chunk", solve_chunk), ("fp_solver", solver)) if v is not None}
    for name, value in values.items():
        setattr(model_config, name, value)
    if values:
        model_config.check()


def run_evaluation(
    model_dirs: list[str | Path], task_name: str, train_length: int, output_dir: str | Path, eval_factor: int = 4,
    eval_points: int = 32, eval_examples: int = 256, eval_batch_size: int = 128,
    fp_max_iter: int | None = None, fp_tol: float | None = None, progress_bar: bool = True,
) -> ExperimentResult:
    """Evaluate saved models (any AutoModelForCausalLM directory: FP-Mamba, Mamba2, the LSTM) on one task and
    write the same files as run_experiment; models are named by their directory name. fp_max_iter / fp_tol apply
    to the FP-Mamba models (the diagonal ablation keeps its one iteration: `evaluation.evaluation_budget`); every
    setting is checked before a model is loaded."""
    task = get_task(task_name)
    lengths = eval_lengths(train_length, eval_factor, eval_points)
    check_evaluation(eval_examples, eval_batch_size, fp_max_iter, fp_tol)
    results: dict[str, list[LengthResult]] = {}
    models: dict[str, nn.Module] = {}
    for model_dir in map(Path, model_dirs):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        results[model_dir.name] = evaluate_lengths(model, task, lengths, eval_examples, eval_batch_size,
                                                   fp_max_iter=fp_max_iter, fp_tol=fp_tol, progress_bar=progress_bar)
        models[model_dir.name] = model
    payload = {"task": task_name, "train_length": train_length, "model_dirs": [str(d) for d in model_dirs],
               "fp_max_iter": fp_max_iter, "fp_tol": fp_tol, "eval_examples": eval_examples}
    table, files = _report(Path(output_dir), payload, results, train_length, task_name, fp_max_iter)
    return ExperimentResult(results=results, training={}, models=models, table=table, files=files)


def config_from_dict(raw: dict) -> ExperimentConfig:
    """An ExperimentConfig from a recipe's fields: top-level fields plus nested "model" (ModelSpec fields) and
    "training" (TrainSettings fields); "description" and "status" are notes; unknown keys are an error."""
    raw = {k: v for k, v in raw.items() if k not in ("description", "status")}
    model = ModelSpec(**raw.pop("model", {}))
    training = TrainSettings(**raw.pop("training", {}))
    return ExperimentConfig(model=model, training=training, **raw)


def load_config(path: str | Path) -> ExperimentConfig:
    """An ExperimentConfig from a JSON recipe (examples/recipes/*.json; schema: `config_from_dict`)."""
    return config_from_dict(json.loads(Path(path).read_text()))


__all__ = [
    "ExperimentConfig", "ExperimentResult", "config_from_dict", "load_config", "run_evaluation", "run_experiment",
]
