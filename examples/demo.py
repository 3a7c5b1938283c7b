"""FP-Mamba demo (`make demo`): state tracking on the symmetric group S3, on a CPU, in a few minutes.

1. Train a 1-layer FP-Mamba (Householder mixer, reflection scale 2) and its diagonal ablation (mixer "none", one
   iteration: a Mamba-2 layer) with transformers' Trainer on S3 word problems of length 8: the model reads
   g_1 .. g_k and must output every running product g_1 * ... * g_t (S3 is non-abelian, so order matters).
2. Evaluate sequence accuracy and fixed-point iterations at every length from 2 to 32 (4x the training length),
   the FP-Mamba solved token by token (fp_solve_chunk=1) with Anderson steps, although trained with whole-sequence
   solves: about 6 map evaluations per token at every length and no row at the cap, where the whole-sequence solve
   costs 14 at 8 tokens and 46 at 32 with rows at the cap (benchmarks/RESULTS.md, "How many iterations"); print
   the table, write results and plots under outputs/demo/.
3. Save the FP-Mamba, reload it with AutoModelForCausalLM, and generate() under two iteration budgets, printing
   the iterations each new token used.

Everything is seeded (reruns print the same table); the settings below were chosen by short CPU experiments
(see docs/tasks.md). Measured on the 2-core CPU, 2026-11-23: 15 s in all on an otherwise idle machine, 138 s while
other jobs kept it at a load of about 5.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import fpmamba_hf  # noqa: F401  (registers "fp_mamba" with the Auto classes)
from fpmamba_lab.harness import ExperimentConfig, ModelSpec, TrainSettings, run_experiment
from fpmamba_lab.tasks import get_task

TASK = "S3"
TRAIN_LENGTH = 8
PROMPT_LENGTH = 24  # 3x the training length
BUDGETS = (2, 48)  # fp_max_iter for generate(): starved vs. enough to reach the fixed point
# The FP-Mamba is evaluated, saved and generates with these (benchmarks/RESULTS.md, "How many iterations").
EVAL_SOLVE_CHUNK = 1
EVAL_SOLVER = "anderson"


def demo_config(output_dir: Path, steps: int, eval_examples: int) -> ExperimentConfig:
    """The demo's experiment: small enough for a 2-core CPU, large enough to separate the two models."""
    return ExperimentConfig(
        task=TASK,
        models=["fpmamba", "diagonal"],
        output_dir=str(output_dir),
        train_length=TRAIN_LENGTH,
        eval_factor=4,
        eval_points=16,  # every other length: halves the evaluation time
        eval_examples=eval_examples,
        eval_fp_solve_chunk=EVAL_SOLVE_CHUNK,
        eval_fp_solver=EVAL_SOLVER,
        model=ModelSpec(hidden_size=32, state_size=16, head_dim=16, chunk_size=16, mixer_type="householder",
                        mixer_rank=2, mixer_reflection_scale=2, fp_max_iter=10, fp_max_iter_eval=48, fp_tol=1e-2),
        training=TrainSettings(steps=steps, batch_size=64, learning_rate=3e-3, weight_decay=0.01, seed=0,
                               logging_steps=50),
    )


def headline(results: dict) -> str:
    """One sentence on what the table shows: each model's accuracy at the training length and at 4x."""
    parts = []
    for name, rows in results.items():
        by_length = {r.length: r.accuracy for r in rows}
        parts.append(f"{name} {by_length[TRAIN_LENGTH]:.2f} at the training length {TRAIN_LENGTH} and "
                     f"{by_length[4 * TRAIN_LENGTH]:.2f} at {4 * TRAIN_LENGTH}")
    return ("Sequence accuracy: " + "; ".join(parts) + ". FP-Mamba tracks the S3 state past the training length; "
            "the diagonal ablation (Q = I, one iteration: a Mamba-2 layer) cannot represent it.")


def show_generation(model_dir: Path) -> None:
    """Reload with AutoModelForCausalLM and generate from S3 prompts 3x longer than training, at two budgets.
    The first new token is the model's answer for the product of the whole prompt (it comes from the prompt's
    parallel solve); later tokens are decoded one at a time with the per-token fixed-point loop."""
    task = get_task(TASK)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = task.build(8, PROMPT_LENGTH, PROMPT_LENGTH, seed=777).with_format("torch")[:]
    prompts = rows["input_ids"]
    answers = rows["shift_labels"][:, PROMPT_LENGTH]  # the running product after the last prompt element
    print(f"\nReloaded {type(model).__name__} from {model_dir}; 8 prompts of {PROMPT_LENGTH} S3 elements")
    print(f"(fp_max_iter={BUDGETS[0]} is starved on purpose: the 'not reached within the iteration cap' warning it "
          "gives is expected)")
    for budget in BUDGETS:
        with torch.no_grad():
            gen = model.generate(prompts, max_new_tokens=4, do_sample=False, fp_max_iter=budget, fp_tol=1e-2,
                                 return_dict_in_generate=True, pad_token_id=task.pad_token_id)
        first = gen.sequences[:, prompts.shape[1]]
        right = int((first == answers).sum())
        its = gen.fp_iterations[:, :, 0]  # (rows, new tokens), one layer
        print(f"fp_max_iter={budget:>2}: first new token = product of the prompt for {right}/8 prompts; "
              f"iterations per new token (rows 0-2): {its[:3].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--eval-examples", type=int, default=128, help="rows per evaluated length")
    args = parser.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the target machine has 2 cores
    result = run_experiment(demo_config(args.output_dir, args.steps, args.eval_examples))
    print(f"\nLength generalisation on {TASK} (sequence accuracy; mean fixed-point iterations per sequence):")
    print(result.table)
    for name, summary in result.training.items():
        print(f"{name}: {summary['parameters']:,} parameters, train {summary['runtime_s']:.0f} s, "
              f"eval {summary['eval_runtime_s']:.0f} s, final loss {summary['final_loss']:.4f}")
    print("files:", ", ".join(str(p) for p in result.files.values()))
    print(headline(result.results))

    model_dir = args.output_dir / "fpmamba-s3"
    result.models["fpmamba"].save_pretrained(model_dir)
    show_generation(model_dir)
    print(f"\nTotal demo time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
