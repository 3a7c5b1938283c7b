"""Does the implicit gradient's adjoint solve converge on a trained model, and how far is the one-step gradient from it?

    python benchmarks/implicit_adjoint.py --task S3 --model-dir outputs/demo/fpmamba-s3 --lengths 4 8 16 \
        --max-iters 32 128 --out benchmarks/implicit_adjoint_s3.json

For each saved FP-Mamba (and, with --init, the same config freshly initialised), each length and each adjoint cap
(fp_backward_max_iter): --batches batches of the task's rows of exactly that length (seeded per length), one
training-mode forward (the model's own training cap and quantile, or --forward-max-iter to solve the forward
further, so that the adjoint is taken at the fixed point rather than at a capped iterate) and backward of the
task loss with fp_backward="implicit", then the same with the default one-step gradient. Reported per row:
  fallbacks        backward passes of a layer whose adjoint solve missed fp_backward_tol within the cap and fell
                   back to the one-step gradient (ImplicitGradientFallback), out of layers x batches;
  residual_max     the largest adjoint residual those fallbacks reported (null if none fell back);
  cosine           cosine between the implicit and the one-step gradient over all parameters, mean over the
                   batches in which no layer fell back (null if every batch had one): where the adjoint
                   converged, the implicit gradient is the fixed point's exact gradient, so this measures how far
                   the one-step approximation is from it.
Prints a markdown table and writes the JSON list to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import warnings
from pathlib import Path

import torch
from fpmamba_core.fixed_point import ImplicitGradientFallback
from transformers import AutoModelForCausalLM

import fpmamba_hf  # noqa: F401  (registers fp_mamba with the Auto classes)
from fpmamba_lab.harness.data import collate
from fpmamba_lab.tasks import get_task

RESIDUAL = re.compile(r"relative residual ([0-9.e+-]+|nan|inf)")


def gradient(model: torch.nn.Module, batch: dict, backward: str, forward_max_iter: int | None
             ) -> tuple[torch.Tensor, list[float]]:
    """The flat gradient of the task loss under `backward`, and the residuals of the adjoint fallbacks it hit."""
    model.config.fp_backward = backward
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImplicitGradientFallback)
        model(input_ids=batch["input_ids"], shift_labels=batch["shift_labels"],
              fp_max_iter=forward_max_iter).loss.backward()
    residuals = [float(RESIDUAL.search(str(w.message)).group(1)) for w in caught
                 if issubclass(w.category, ImplicitGradientFallback)]
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return flat, residuals


def study(model: torch.nn.Module, name: str, task_name: str, lengths: list[int], max_iters: list[int],
          batches: int, batch_size: int, forward_max_iter: int | None = None) -> list[dict]:
    """One row per (length, adjoint cap); the model's fp_backward and fp_backward_max_iter are restored after."""
    saved = model.config.fp_backward, model.config.fp_backward_max_iter
    try:
        return _study(model, name, task_name, lengths, max_iters, batches, batch_size, forward_max_iter)
    finally:
        model.config.fp_backward, model.config.fp_backward_max_iter = saved


def _study(model: torch.nn.Module, name: str, task_name: str, lengths: list[int], max_iters: list[int],
           batches: int, batch_size: int, forward_max_iter: int | None) -> list[dict]:
    task = get_task(task_name)
    model.train()
    layers = model.config.num_hidden_layers
    rows = []
    for length in lengths:
        data = task.build(batches * batch_size, length, length, seed=20_000 + length)
        for cap in max_iters:
            model.config.fp_backward_max_iter = cap
            fallbacks, residuals, cosines = 0, [], []
            for b in range(batches):
                batch = collate([data[i] for i in range(b * batch_size, (b + 1) * batch_size)])
                torch.manual_seed(b)  # the same random training draws (if any) for both gradients
                implicit, missed = gradient(model, batch, "implicit", forward_max_iter)
                torch.manual_seed(b)
                one_step, _ = gradient(model, batch, "one_step", forward_max_iter)
                fallbacks += len(missed)
                residuals += missed
                if not missed:
                    cosines.append(float(torch.nn.functional.cosine_similarity(implicit, one_step, dim=0)))
            rows.append({"model": name, "task": task_name, "length": length, "forward_max_iter": forward_max_iter,
                         "adjoint_max_iter": cap,
                         "fallbacks": fallbacks, "backwards": layers * batches,
                         "residual_max": max(residuals) if residuals else None,
                         "cosine": sum(cosines) / len(cosines) if cosines else None,
                         "converged_batches": len(cosines), "batches": batches})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | length | adjoint cap | fallbacks | residual max | cosine(implicit, one-step) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        res = "-" if r["residual_max"] is None else f"{r['residual_max']:.3g}"
        cos = "-" if r["cosine"] is None else f"{r['cosine']:.3f} ({r['converged_batches']}/{r['batches']} batches)"
        lines.append(f"| {r['model']} | {r['length']} | {r['adjoint_max_iter']} | "
                     f"{r['fallbacks']}/{r['backwards']} | {res} | {cos} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--model-dir", dest="model_dirs", nargs="+", required=True)
    p.add_argument("--init", action="store_true", help="also each model's config freshly initialised (seed 0)")
    p.add_argument("--lengths", type=int, nargs="+", required=True)
    p.add_argument("--max-iters", dest="max_iters", type=int, nargs="+", default=[32])
    p.add_argument("--forward-max-iter", dest="forward_max_iter", type=int,
                   help="iteration cap of the training forward (default: the model's fp_max_iter)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    rows = []
    for model_dir in args.model_dirs:
        trained = AutoModelForCausalLM.from_pretrained(model_dir)
        models = [(Path(model_dir).name, trained)]
        if args.init:
            torch.manual_seed(0)
            models.append((Path(model_dir).name + " (initialised)", type(trained)(trained.config)))
        for name, model in models:
            rows += study(model, name, args.task, args.lengths, args.max_iters, args.batches, args.batch_size,
                          args.forward_max_iter)
    print(table(rows))
    meta = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps([{**meta, **r} for r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
