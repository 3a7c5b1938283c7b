"""A block's solve while its cache records the past, so that generate() can roll the cache back.

Assisted (speculative) decoding and prompt lookup feed several candidate tokens in one forward, keep those the model
agrees with, and roll the cache back to the last kept one (`cache.crop(-n)`); an assistant model's cache is rolled
back the same way between rounds. Transformers 5.25 can do that with a linear-attention cache layer that records its
past (`activate_past_recording`): until the next `crop` it keeps every new conv column and the recurrent state after
each position it is given.

A recorded call is therefore solved one position at a time, each position exactly as a decode step solves it (the
layer's per-token solve continuing the state the position before left), so that a verified token's logits are the
ones plain greedy decoding computes, and the state after each position is known; fpmamba_hf/cache.py hands them to the
cache (`write_recorded`). On a cache with no state yet (a prompt), the positions before the last
`recurrent_states_to_keep` that transformers asks for, and any left padding, are solved together first: generate()
never rolls back into them. A call that continues a state records every position (generate()'s verification of its
candidates), so a rollback of any of them is exact even when the number of candidates grows past what was asked for.
The record holds one packed state per position until the next `crop`; generate() leaves the cache of an assisted
call recording, so a returned cache continued without rollbacks keeps growing its record (one packed state per token
and layer) until something crops it (`cache.crop(0)` drops the record and keeps the state).
"""

from __future__ import annotations

from typing import Any

import torch
from fpmamba_core.layer import FixedPointLayer, LayerOutput
from transformers.cache_utils import Cache

from .cache import positions_to_keep, write_recorded


def forward_recorded(layer: FixedPointLayer, cache: Cache, layer_idx: int, hidden_states: torch.Tensor,
                     attention_mask: torch.Tensor | None, state: Any, **solve: Any) -> LayerOutput:
    """The layer's call on hidden_states (b, T, hidden) with the cache's `state` (None on an empty cache) and the
    padding mask (b, T) bool (or None), `solve` its other keywords; the states after each position go to the
    recording `cache` for `layer_idx`. Returns out (b, T, hidden), the final state, iterations (b,) per token (the
    calls' counts weighted by their lengths, rounded up, as a chunked solve reports them) and the largest residual
    (b,)."""
    T = hidden_states.shape[1]
    together = 0 if state is not None else _leading_positions(T, positions_to_keep(cache, layer_idx), attention_mask)
    spans = ([(0, together)] if together else []) + [(t, t + 1) for t in range(together, T)]
    outs, steps, residuals, evaluations = [], [], [], 0
    for start, end in spans:
        mask = attention_mask[:, start:end] if attention_mask is not None and start < together else None
        out = layer(hidden_states[:, start:end], attention_mask=mask, state=state, return_state=True, **solve)
        state = out.state
        outs.append(out.out)
        steps.append((state, end - start))
        residuals.append(out.residual)
        evaluations = evaluations + out.iterations * (end - start)
    write_recorded(cache, layer_idx, steps, layer)
    return LayerOutput(torch.cat(outs, dim=1), state, (evaluations + T - 1) // T, torch.stack(residuals, 1).amax(1))


def _leading_positions(length: int, keep: int | None, mask: torch.Tensor | None) -> int:
    """How many leading positions of a call on an empty cache are solved together: those before the last `keep`
    (None: none), and at least every position a row pads (left padding; one host sync)."""
    together = 0 if keep is None else max(length - keep, 0)
    if mask is not None:
        padded = (~mask).any(0).nonzero()
        if padded.numel():
            together = max(together, int(padded.max()) + 1)
    return together
