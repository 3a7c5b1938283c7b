"""How many fixed-point iterations a saved FP-Mamba spends, per length and solve mode, with its accuracy.

For a model saved by `fpmamba task train --save-models` (or `make demo`), at each length (multiples of the training
length) and each solve mode:
  * `full`: the parallel forward solving the whole sequence at once (fp_solve_chunk=0);
  * `chunk=C`: the parallel forward solved chunk by chunk (fp_solve_chunk=C);
  * `decode`: the prompt fed token by token through the cache (the per-token decode solve).
it reports, over rows and layers, the map evaluations each token cost (`evals/token`: a whole-sequence solve of k
iterations costs k; a chunked solve costs the length-weighted mean of its chunks' iterations; decoding costs each
token's own iterations): mean, median, p90 and max; the share of rows with a layer that stopped above the tolerance
(at the cap); the task's accuracy; and the wall time. Evaluations are counted by wrapping each layer's iteration
map (rows x tokens per call), so the figures are what the solver ran, not what it reported.

    python benchmarks/iterations.py --model outputs/demo/fpmamba-s3 --task S3 --train-length 8 \
        --modes full chunk=4 decode --json outputs/iterations_s3.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

import fpmamba_hf  # noqa: F401  (registers "fp_mamba" with the Auto classes)
from fpmamba_hf.configuration_fpmamba import CHOICES
from fpmamba_lab.harness.data import collate
from fpmamba_lab.harness.evaluation import primary_metric
from fpmamba_lab.tasks import get_task


class EvaluationCounter:
    """Counts map evaluations per (row, layer) in token units: every call f(y, rows) on a chunk of T tokens adds T
    to each row in `rows`, every per-token decode solve (`decode_token`, which iterates its own map) its
    iterations. Installed on a model's layers by wrapping their `iteration_map` and `decode_token`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = [block.mixer for block in model.backbone.layers]
        self.counts: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            layer.iteration_map = self._wrap(layer.iteration_map, i)
            layer.decode_token = self._wrap_decode(layer.decode_token, i)

    def reset(self, batch: int) -> None:
        self.counts = torch.zeros(batch, len(self.layers), dtype=torch.float64)

    def _wrap(self, make_map, layer_idx: int):
        def iteration_map(prelude, settings):
            f = make_map(prelude, settings)

            def counted(y, rows):
                self.counts[rows.cpu(), layer_idx] += y.shape[1]
                return f(y, rows)

            return counted

        return iteration_map

    def _wrap_decode(self, decode_token, layer_idx: int):
        def counted(prelude, settings):
            step = decode_token(prelude, settings)
            self.counts[:, layer_idx] += step.iterations.cpu().double()
            return step

        return counted


def parse_mode(mode: str) -> tuple[str, int]:
    """'full' -> ('full', 0); 'chunk=C' -> ('chunk', C); 'decode' -> ('decode', 0)."""
    if mode in ("full", "decode"):
        return mode, 0
    if mode.startswith("chunk="):
        return "chunk", int(mode.split("=", 1)[1])
    raise argparse.ArgumentTypeError(f"mode must be full, decode or chunk=C, got {mode!r}")


@torch.no_grad()
def run_batch(model, counter: EvaluationCounter, ids: torch.Tensor, mode: str, chunk: int, budget: dict):
    """Logits (b, T, vocab), per-token evaluations (b, layers) and the unconverged flag (b,) of one batch."""
    b, T = ids.shape
    counter.reset(b)
    tol = budget.get("fp_tol", model.config.fp_tol)
    if mode == "decode":
        cache, logits, unconverged = None, [], torch.zeros(b, dtype=torch.bool)
        for t in range(T):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True, **budget)
            cache = out.cache
            logits.append(out.logits)
            unconverged |= (out.fp_residual >= tol).any(1)
        return torch.cat(logits, 1), counter.counts / T, unconverged
    out = model(ids, fp_solve_chunk=chunk, **budget)
    return out.logits, counter.counts / T, (out.fp_residual >= tol).any(1)


def measure(model, counter, task, length: int, mode: str, chunk: int, examples: int, batch_size: int, seed: int,
            budget: dict) -> dict[str, Any]:
    rows = task.build(examples, length, length, seed + length)
    preds, labels, evals, unconverged = [], [], [], []
    start = time.perf_counter()
    for s in range(0, examples, batch_size):
        batch = collate(rows.select(range(s, min(s + batch_size, examples))))
        logits, per_token, unconv = run_batch(model, counter, batch["input_ids"], mode, chunk, budget)
        preds.append(logits.argmax(-1))
        labels.append(batch["labels"])
        evals.append(per_token)
        unconverged.append(unconv)
    wall = time.perf_counter() - start
    metrics = task.metrics(torch.cat(preds), torch.cat(labels))
    e = torch.cat(evals).numpy()  # (rows, layers)
    return {
        "length": length, "mode": mode if mode != "chunk" else f"chunk={chunk}",
        "accuracy": metrics[primary_metric(metrics)],
        "evals_per_token_mean": float(e.mean()), "evals_per_token_median": float(np.median(e)),
        "evals_per_token_p90": float(np.quantile(e, 0.9)), "evals_per_token_max": float(e.max()),
        "unconverged_share": float(torch.cat(unconverged).float().mean()), "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder of a saved FP-Mamba")
    parser.add_argument("--task", required=True)
    parser.add_argument("--train-length", type=int, required=True)
    parser.add_argument("--factors", type=float, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--modes", nargs="+", default=["full", "chunk=4", "decode"])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=10_000, help="as the harness's evaluation rows")
    parser.add_argument("--fp-max-iter", type=int, help="evaluation cap (default: the model's fp_max_iter_eval)")
    parser.add_argument("--fp-tol", type=float)
    parser.add_argument("--solver", choices=("picard", "anderson"), help="set config.fp_solver (default: as saved)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode-solver", choices=CHOICES["fp_decode_solver"],
                        help="step of the per-token decode solve (default: the model's fp_decode_solver)")
    parser.add_argument("--json", type=Path, help="write the rows and the run's facts here")
    args = parser.parse_args()
    for m in args.modes:
        parse_mode(m)

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    if args.solver:
        model.config.fp_solver = args.solver
    if args.decode_solver is not None:
        model.config.fp_decode_solver = args.decode_solver
    counter = EvaluationCounter(model)
    task = get_task(args.task)
    budget = {k: v for k, v in (("fp_max_iter", args.fp_max_iter), ("fp_tol", args.fp_tol)) if v is not None}
    results = []
    print("| length | mode | accuracy | evals/token mean | median | p90 | max | unconverged | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for factor in args.factors:
        length = round(factor * args.train_length)
        for m in args.modes:
            mode, chunk = parse_mode(m)
            r = measure(model, counter, task, length, mode, chunk, args.examples, args.batch_size, args.seed, budget)
            results.append(r)
            print(f"| {length} | {r['mode']} | {r['accuracy']:.3f} | {r['evals_per_token_mean']:.1f} | "
                  f"{r['evals_per_token_median']:.1f} | {r['evals_per_token_p90']:.1f} | "
                  f"{r['evals_per_token_max']:.1f} | {r['unconverged_share']:.3f} | {r['wall_s']:.2f} |", flush=True)
    if args.json:
        facts = {
            "command": "python benchmarks/iterations.py " + " ".join(_argv()), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{torch.get_num_threads()} thread(s), {platform.machine()}", "torch": torch.__version__,
            "transformers": transformers.__version__, "cap": args.fp_max_iter or model.config.fp_max_iter_eval,
            "tol": args.fp_tol or model.config.fp_tol, "solver": model.config.fp_solver,
            "decode_solver": model.config.fp_decode_solver, "rows": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(facts, indent=1))


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
