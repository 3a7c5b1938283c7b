"""2-rank DDP on CPU (gloo) with rank-dependent iteration counts: the ranks' parameters stay identical."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fpmamba_core import BACKBONES
from train_helpers import HERE, REPO, launch, tiny_model, torchrun

WORKER = HERE / "ddp_worker.py"
# The backbones whose ranks run different iteration counts on these rows (on the others they may agree).
DIFFERENT_LOOPS = ("mamba2",)


def _check_ranks(out: Path, require_different_loops: bool, backbone: str = "mamba2") -> None:
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert len(r0["loop_lengths"]) == len(r1["loop_lengths"]) == 3
    if require_different_loops:
        assert r0["loop_lengths"] != r1["loop_lengths"], "the ranks should have run different iteration counts"
    init = dict(tiny_model(seed=0, backbone=backbone).named_parameters())
    for name, p0 in r0["params"].items():
        assert torch.equal(p0, r1["params"][name]), f"{name} differs across ranks"
    assert not torch.equal(r0["params"]["backbone.layers.0.mixer.in_proj.weight"],
                           init["backbone.layers.0.mixer.in_proj.weight"]), "training did not move the weights"


def test_accelerate_launch_multi_gpu_ddp(tmp_path) -> None:
    """`accelerate launch --config_file examples/accelerate/ddp.yaml` (2 processes) with Accelerator(cpu=True):
    gloo DDP; rank agreement off, so the ranks' loops really have different lengths."""
    launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "examples" / "accelerate" / "ddp.yaml"), str(WORKER), "accelerate", str(tmp_path)], timeout=150)
    _check_ranks(tmp_path, require_different_loops=True)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_torchrun_trainer_ddp(tmp_path, backbone: str) -> None:
    """torchrun + transformers.Trainer (gloo): each rank trains on different rows for 3 steps; the ranks' parameters
    stay identical."""
    torchrun(WORKER, 2, "trainer", str(tmp_path), backbone)
    _check_ranks(tmp_path, require_different_loops=backbone in DIFFERENT_LOOPS, backbone=backbone)
