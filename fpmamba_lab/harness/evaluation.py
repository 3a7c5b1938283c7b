"""Length generalisation: accuracy and mean fixed-point iterations at every evaluated length."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from fpmamba_core.settings import check_call_budget
from tqdm.auto import tqdm

from fpmamba_hf import FPMambaForCausalLM

from ..tasks import TaskSpec, copying
from .data import collate, require_positive_int
from .models import model_kind

# The headline metric of each task family, first match wins: word problems, copy, modular arithmetic (the paper's
# scaled accuracy, 0 at chance), parity.
PRIMARY_METRICS = ("seq_acc", "string_acc", "scaled_acc", "acc")
# Metrics of generated continuations (greedy generate(), not teacher forced) carry this prefix; the results README shows
# the generated counterpart of copying's headline metric.
GENERATED_PREFIX = "ar_"
GENERATED_METRIC = f"{GENERATED_PREFIX}string_acc"


@dataclass
class LengthResult:
    """One evaluated length: the task's primary accuracy, all its metrics, the mean / max fixed-point iterations
    per sequence (averaged over layers), and the share of sequences with a layer that stopped above the tolerance
    (at the cap); the fixed-point entries are None for models without a solver (and the share for results recorded
    before it was)."""

    length: int
    accuracy: float
    metrics: dict[str, float]
    fp_iterations_mean: float | None
    fp_iterations_max: float | None
    fp_unconverged_share: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def primary_metric(metrics: dict[str, float]) -> str:
    """Name of the headline accuracy among a task's metrics."""
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    raise KeyError(f"none of {PRIMARY_METRICS} among the metrics {sorted(metrics)}")


def evaluation_budget(model: nn.Module, fp_max_iter: int | None, fp_tol: float | None) -> dict[str, float | int]:
    """The per-call solver overrides `model` is evaluated with: both for an FP-Mamba; for its diagonal ablation only
    fp_tol, since its one iteration is part of that model (more would make it another model, and change its
    logits), so a cap given for a whole run leaves it alone (with a warning); none for models without a solver."""
    if not isinstance(model, FPMambaForCausalLM):
        return {}
    if fp_max_iter is not None and model_kind(model.config) == "diagonal":
        warnings.warn(f"fp_max_iter={fp_max_iter} is not applied to the diagonal ablation: its one iteration is part "
                      "of the model", stacklevel=2)
        fp_max_iter = None
    return {k: v for k, v in (("fp_max_iter", fp_max_iter), ("fp_tol", fp_tol)) if v is not None}


def check_evaluation(num_examples: int, batch_size: int, fp_max_iter: int | None = None,
                     fp_tol: float | None = None) -> None:
    """Refuse evaluation settings that would fail or mean nothing, before any model is trained or loaded (a
    ValueError names the setting): rows per length and batch size positive integers, the solver overrides as
    forward() takes them (`fpmamba_core.settings.check_call_budget`). The lengths are `data.eval_lengths`'s."""
    require_positive_int("eval_examples", num_examples)
    require_positive_int("eval_batch_size", batch_size)
    check_call_budget(fp_max_iter, fp_tol)


@torch.no_grad()
def greedy_continuations(model: nn.Module, prompts: torch.Tensor, new_tokens: int, fp_kwargs: dict) -> torch.Tensor:
    """Greedy autoregressive continuation (batch, new_tokens) of equal-length prompts (batch, P): through
    `generate()` (and so the cache and the per-token fixed-point solve) where the model has it, else by re-running
    the model on the growing sequence (the LSTM baseline)."""
    if hasattr(model, "generate"):
        out = model.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=copying.PAD_ID, **fp_kwargs)
        return out[:, prompts.shape[1] :]
    seq = prompts
    for _ in range(new_tokens):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
    return seq[:, prompts.shape[1] :]


def autoregressive_copy_metrics(
    model: nn.Module, input_ids: torch.Tensor, batch_size: int, fp_kwargs: dict
) -> dict[str, float]:
    """Copy task scored on generated continuations (not teacher forced): `ar_string_acc`, `ar_char_acc`.
    input_ids: (N, T) rows of one string length, so their prompts `$ s |` have equal length."""
    pairs = [copying.split_prompt(row) for row in input_ids]
    prompts = torch.tensor([p for p, _ in pairs], dtype=torch.long)
    expected = [c for _, c in pairs]
    device = next(model.parameters()).device
    predicted = []
    for start in range(0, len(pairs), batch_size):
        chunk = prompts[start : start + batch_size].to(device)
        predicted.extend(greedy_continuations(model, chunk, len(expected[0]), fp_kwargs).cpu().tolist())
    return {f"{GENERATED_PREFIX}{k}": v for k, v in copying.copy_accuracy(predicted, expected).items()}


@torch.no_grad()
def evaluate_length(
    model: nn.Module, task: TaskSpec, length: int, num_examples: int, batch_size: int, seed: int,
    fp_max_iter: int | None = None, fp_tol: float | None = None,
) -> LengthResult:
    """Evaluate on `num_examples` fresh rows of exactly `length` (seeded per length, so every model sees the
    same rows). fp_max_iter / fp_tol override an FP-Mamba's evaluation budget for this call (`evaluation_budget`)."""
    dataset = task.build(num_examples, length, length, seed + length)
    fp_kwargs = evaluation_budget(model, fp_max_iter, fp_tol)
    device = next(model.parameters()).device
    tol = fp_tol if fp_tol is not None else getattr(getattr(model, "config", None), "fp_tol", None)
    preds, labels, iterations, unconverged = [], [], [], []
    for start in range(0, num_examples, batch_size):
        batch = collate(dataset.select(range(start, min(start + batch_size, num_examples))))
        out = model(input_ids=batch["input_ids"].to(device), **fp_kwargs)
        preds.append(out.logits.argmax(-1).cpu())
        labels.append(batch["shift_labels"])
        its = getattr(out, "fp_iterations", None)
        if its is not None:
            iterations.append(its.float().mean(dim=1).cpu())  # per sequence, averaged over layers
            unconverged.append((out.fp_residual >= tol).any(dim=1).cpu())
    metrics = task.metrics(torch.cat(preds), torch.cat(labels))
    if task.name == "copy":  # the paper scores copying teacher-forced only; generation is the real use
        metrics.update(autoregressive_copy_metrics(model, dataset.with_format("torch")["input_ids"], batch_size,
                                                   fp_kwargs))
    its = torch.cat(iterations).numpy() if iterations else None
    return LengthResult(
        length=length,
        accuracy=metrics[primary_metric(metrics)],
        metrics={k: v for k, v in metrics.items() if "@" not in k},  # per-prefix entries are redundant here
        fp_iterations_mean=float(np.mean(its)) if its is not None else None,
        fp_iterations_max=float(np.max(its)) if its is not None else None,
        fp_unconverged_share=float(torch.cat(unconverged).float().mean()) if unconverged else None,
    )


def evaluate_lengths(
    model: nn.Module, task: TaskSpec, lengths: list[int], num_examples: int = 256, batch_size: int = 128,
    seed: int = 10_000, fp_max_iter: int | None = None, fp_tol: float | None = None, progress_bar: bool = True,
) -> list[LengthResult]:
    """`evaluate_length` at every length, in eval mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return [
            evaluate_length(model, task, n, num_examples, batch_size, seed, fp_max_iter, fp_tol)
            for n in tqdm(lengths, desc="eval lengths", disable=not progress_bar)
        ]
    finally:
        model.train(was_training)


__all__ = [
    "LengthResult",
    "GENERATED_METRIC",
    "GENERATED_PREFIX",
    "PRIMARY_METRICS",
    "autoregressive_copy_metrics",
    "check_evaluation",
    "evaluate_length",
    "evaluate_lengths",
    "evaluation_budget",
    "greedy_continuations",
    "primary_metric",
]
