"""Fine-tune a tiny FP-Mamba with transformers' Trainer on a locally generated synthetic task.

    python examples/train_trainer.py --task copy --max_steps 200 --output_dir runs/copy
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/train_trainer.py --task S3
    torchrun --nproc_per_node 2 examples/train_trainer.py --task parity --use_cpu

Data come from `fpmamba_lab.tasks` (no download). Their targets are *aligned* (shift_labels[:, i] is the target of
position i), so the collator (`fpmamba_lab.harness.collate`, the harness's) hands them to the model as `shift_labels`
(transformers' causal-LM loss then uses them as they are) and also as `labels` (Trainer counts `num_items_in_batch`
from `shift_labels` when a batch has `labels`, which makes gradient accumulation equal to one big batch). Rows are
right padded: FP-Mamba is causal, so padding after the real tokens cannot change their outputs; the padded positions
carry label -100, and no attention mask is passed (the model accepts left padding only). Writes `summary.json`
(losses, eval metrics, iterations) to --output_dir. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_lab.harness import collate
from fpmamba_lab.tasks import TaskSpec, get_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="copy", help="an fpmamba_lab.tasks name (copy, parity, S3, ...)")
    p.add_argument("--output_dir", default="runs/train_trainer")
    p.add_argument("--train_examples", type=int, default=2048)
    p.add_argument("--eval_examples", type=int, default=128)
    p.add_argument("--min_len", type=int, default=None, help="task length range (default: the task's train range)")
    p.add_argument("--max_len", type=int, default=None)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--state_size", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=16)
    p.add_argument("--mixer_type", default="householder")
    p.add_argument("--fp_max_iter", type=int, default=8, help="iteration cap in training")
    p.add_argument("--fp_tol", type=float, default=1e-2)
    p.add_argument("--max_steps", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=16, help="per device")
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights; the solver stays fp32)")
    p.add_argument("--fp16", action="store_true", help="fp16 autocast with a gradient scaler (GPU)")
    p.add_argument("--use_cpu", action="store_true")
    p.add_argument("--save_steps", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--resume_from_checkpoint", default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_model(spec: TaskSpec, args: argparse.Namespace) -> FPMambaForCausalLM:
    config = FPMambaConfig(
        vocab_size=spec.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        state_size=args.state_size, head_dim=args.head_dim, chunk_size=16, mixer_type=args.mixer_type,
        fp_max_iter=args.fp_max_iter, fp_tol=args.fp_tol, pad_token_id=spec.pad_token_id,
        bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id,
    )
    return FPMambaForCausalLM(config)


@torch.no_grad()
def evaluate(model: FPMambaForCausalLM, spec: TaskSpec, dataset, batch_size: int) -> dict[str, float]:
    """The task's own metrics on greedy per-position predictions, plus the mean fixed-point iterations."""
    model.eval()
    preds, labels, iterations = [], [], []
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model(batch["input_ids"].to(device))
        preds.append(out.logits.argmax(-1).cpu())
        labels.append(batch["labels"])
        iterations.append(out.fp_iterations.float().cpu())
    metrics = spec.metrics(torch.cat(preds).numpy(), torch.cat(labels).numpy())
    metrics["fp_iterations_mean"] = float(torch.cat(iterations).mean())
    return {k: float(v) for k, v in metrics.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    spec = get_task(args.task)
    lo, hi = spec.train_lengths
    lo, hi = args.min_len or lo, args.max_len or hi
    width = spec.seq_len(hi)
    train = spec.build(args.train_examples, lo, hi, args.seed, pad_to=width)
    train = train.remove_columns(["length"])
    evalset = spec.build(args.eval_examples, lo, hi, args.seed + 1, pad_to=width)

    torch.manual_seed(args.seed)
    model = build_model(spec, args)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=max(1, args.max_steps // 20),
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        # Named activation_checkpointing from transformers 5.20 on; the old name still works (with a warning).
        **({"gradient_checkpointing": True} if args.gradient_checkpointing else {}),
        bf16=args.bf16,
        fp16=args.fp16,
        use_cpu=args.use_cpu,
        remove_unused_columns=False,  # `shift_labels` is not a named argument of forward()
        report_to=[],
        disable_tqdm=True,
        seed=args.seed,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=collate)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {"task": spec.name, "steps": trainer.state.global_step, "train_losses": losses}
    if trainer.is_world_process_zero():
        summary["eval"] = evaluate(trainer.model, spec, evalset, args.batch_size)
        trainer.save_model()
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
