"""2-rank FSDP2 on CPU (torchrun, gloo, 30 s collective timeout): rank-dependent iteration needs cannot deadlock."""

from __future__ import annotations

import math

import torch
from train_helpers import HERE, torchrun


def test_fsdp2_per_block_with_rank_dependent_inputs(tmp_path) -> None:
    torchrun(HERE / "fsdp_worker.py", 2, str(tmp_path), timeout=150)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for run in ("plain", "checkpointed"):
        a, b = r0[run], r1[run]
        assert len(a["losses"]) == len(b["losses"]) == 3
        assert all(math.isfinite(v) for v in a["losses"] + b["losses"])
        # Alone, the ranks would have stopped their loops at different iterations ...
        assert a["loops"] != b["loops"]
        # ... together each solve ran as long as the slower rank needed: one agreement round per iteration.
        agreed = sum(max(x, y) for la, lb in zip(a["loops"], b["loops"]) for x, y in zip(la, lb))
        assert a["rounds"] == b["rounds"] == agreed
    # Ranks with different numbers of chunks agree on every chunk solve: no deadlock, the same parameters.
    a, b = r0["chunked"], r1["chunked"]
    assert len(a["losses"]) == len(b["losses"]) == 3 and all(math.isfinite(v) for v in a["losses"] + b["losses"])
    for name, p in a["params"].items():
        assert torch.equal(p, b["params"][name]), name
    # Checkpointing replays the forward's fixed points: the same training trajectory.
    assert r0["checkpointed"]["losses"] == r0["plain"]["losses"]
    for name, p in r0["plain"]["params"].items():
        torch.testing.assert_close(r0["checkpointed"]["params"][name], p, rtol=1e-6, atol=1e-7)
