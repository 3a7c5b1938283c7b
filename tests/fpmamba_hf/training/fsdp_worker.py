"""One rank of the 2-rank CPU FSDP2 test (torchrun, gloo with a short timeout). Usage: `fsdp_worker.py OUT_DIR`.

`fully_shard` on every FPMambaBlock (as accelerate does from `_no_split_modules`) and on the root; rank-dependent
batches (different tokens and lengths), so each rank alone would stop its loops at different iterations. Trains
3 AdamW steps three times: plain, with activation checkpointing, and with a chunked solve (fp_solve_chunk=5: rank 0
solves 2 chunks per layer, rank 1 4). Writes OUT_DIR/rank{r}.pt: losses, the local loop
lengths the data asked for, the number of agreement rounds per run, and the full parameters of both runs.
A deadlock (ranks issuing different collectives) fails after the gloo timeout instead of hanging.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from train_helpers import enable_checkpointing, tiny_model, token_batch

import fpmamba_hf.distributed

ROUNDS = [0]


def counting_continue_sync(device, group=None):
    """fpmamba_hf.distributed.continue_sync, counting agreement rounds (one per iteration of every solve)."""
    agree = REAL_CONTINUE_SYNC(device, group)

    def counted(local_continue: bool) -> bool:
        ROUNDS[0] += 1
        return agree(local_continue)

    return counted


REAL_CONTINUE_SYNC = fpmamba_hf.distributed.continue_sync
fpmamba_hf.distributed.continue_sync = counting_continue_sync


def train(rank: int, checkpointing: bool, fp_solve_chunk: int = 0) -> dict:
    model = tiny_model(seed=0, fp_solve_chunk=fp_solve_chunk)
    if checkpointing:
        enable_checkpointing(model, use_reentrant=False)
    loops: list[list[int]] = []
    model.backbone.register_forward_hook(lambda mod, args, out: loops.append(out.fp_iterations.amax(0).tolist()))
    for block in model.backbone.layers:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    ROUNDS[0] = 0
    losses = []
    for step in range(3):
        ids = token_batch(4, 8 + 8 * rank, seed=100 * rank + step)
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    params = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    return {"losses": losses, "loops": loops, "rounds": ROUNDS[0], "params": params}


def main(out: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    result = {"plain": train(rank, checkpointing=False), "checkpointed": train(rank, checkpointing=True),
              "chunked": train(rank, checkpointing=False, fp_solve_chunk=5)}
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()  # no rank tears gloo down while the other still talks to it (a rank aborted once there)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
