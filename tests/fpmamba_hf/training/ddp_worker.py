"""One rank of the 2-rank CPU DDP tests (gloo). Usage: `ddp_worker.py accelerate|trainer OUT_DIR [BACKBONE]`.

accelerate: Accelerator(cpu=True) under `accelerate launch --multi_gpu`, 3 AdamW steps on rank-dependent batches
(different tokens and lengths), rank agreement off, so the ranks really run different numbers of iterations.
trainer: transformers.Trainer under torchrun, 3 steps; the distributed sampler gives each rank different rows.
Each rank writes OUT_DIR/rank{r}.pt: its parameters after training and the per-step loop lengths of its solves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import torch
from train_helpers import tiny_model, token_batch


def loop_lengths(model) -> list[list[int]]:
    """Records, per forward, the longest row's iterations in each layer (= the loop length with quantile 1)."""
    record: list[list[int]] = []
    model.backbone.register_forward_hook(lambda mod, args, out: record.append(out.fp_iterations.amax(0).tolist()))
    return record


def run_accelerate(out: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    assert accelerator.num_processes == 2, "expected 2 DDP processes"
    model = tiny_model(seed=0, fp_sync_ranks=False)
    record = loop_lengths(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    assert isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel)
    ddp_model.train()
    for step in range(3):
        ids = token_batch(4, 8 + 8 * rank, seed=100 * rank + step)
        loss = ddp_model(ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    save(out, rank, model, record)


def run_trainer(out: Path, backbone: str = "mamba2") -> None:
    from transformers import Trainer, TrainingArguments

    model = tiny_model(seed=0, backbone=backbone)
    record = loop_lengths(model)
    ids = token_batch(24, 12, seed=3)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(out / "trainer"), use_cpu=True, ddp_backend="gloo", max_steps=3,
                             per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], save_strategy="no",
                             disable_tqdm=True, seed=0, ddp_find_unused_parameters=False)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    assert trainer.args.world_size == 2, "expected 2 ranks"
    trainer.train()
    save(out, trainer.args.process_index, model, record)


def save(out: Path, rank: int, model, record: list[list[int]]) -> None:
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"params": params, "loop_lengths": record}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    mode, out_dir, *backbone = sys.argv[1], Path(sys.argv[2]), *sys.argv[3:]
    {"accelerate": run_accelerate, "trainer": run_trainer}[mode](out_dir, *backbone)
    # Tear the process group down before exit: left to interpreter shutdown, gloo's threads can abort a rank
    # ("terminate called without an active exception") after the work is done.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
