"""The checks of a forward that continues a cache: the cache is this model's, and the input starts where the cache
stopped.

- `check_cache_matches`: a cache built for another number of layers, or filled by a model with other structural
  fields (backbone, widths, mixer, switches), would be read with the wrong layout: refused, naming the fields.
- `note_unfed_tokens` / `check_unfed_tokens`: generate() never feeds the token it generated last, so the cache it
  returns holds the sequences without it; a plain forward continuing it must start with that token. generate()
  itself continues by position (`forget_unfed_tokens`), which needs no such rule.

What each check needs is kept beside the cache in weak maps (as fpmamba_hf/cache.py keeps its position count), never
on the cache.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin

from .cache import has_state, seen_tokens, stored_tensors

# Beside each cache, as its count: the structural fields (`FPMambaConfig.structural_fields`) of the model that filled
# it, and what generate() left unfed in it: (the positions it held then, the ids of the token generated last (b, 1)),
# or why it cannot continue.
_FILLED_BY: weakref.WeakKeyDictionary[Cache, dict[str, Any]] = weakref.WeakKeyDictionary()
_UNFED: weakref.WeakKeyDictionary[Cache, tuple[int | None, torch.Tensor] | str] = weakref.WeakKeyDictionary()


def check_continuation(cache: Cache | None, fields: dict[str, Any], input_ids: torch.Tensor | None,
                       inputs_embeds: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """The checks of a forward handed `cache` (None: nothing to check), once per call before any block runs: the
    cache is this model's (`check_cache_matches`, `fields`: the model's structural fields) and the input continues
    it where it stopped (`check_unfed_tokens`; input_ids (b, T) if given, inputs_embeds (b, T, hidden), `embed`: the
    model's embedding)."""
    if cache is None:
        return
    check_cache_matches(cache, fields)
    check_unfed_tokens(cache, input_ids, inputs_embeds, embed)


def check_cache_matches(cache: Cache, fields: dict[str, Any]) -> None:
    """Refuse a cache of another model: built for another number of layers, or holding the state of a model with
    other structural fields (backbone, widths, mixer, switches: `fields`, the values of the model about to continue
    it), whose tensors would be read with the wrong layout. A cache this model fills is recorded as this model's; a
    state filled elsewhere (a copy) is checked for its number of layers only."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, Cache) or not layers or not isinstance(layers[0], LinearAttentionCacheLayerMixin):
        return  # not a cache built from an FPMambaConfig: `_check_layer` names it
    if len(layers) != fields["num_hidden_layers"]:
        raise ValueError(f"the cache was built for a model of {len(layers)} layers, this one has "
                         f"{fields['num_hidden_layers']}: pass a cache built for it "
                         "(DynamicCache(config=model.config)) or the one its own forward or generate() returned")
    if not has_state(cache):
        _FILLED_BY[cache] = fields
        return
    filled_by = _FILLED_BY.get(cache)
    if filled_by is None or filled_by is fields:
        return
    other = [f"{name}={filled_by.get(name)!r} (this model: {value!r})" for name, value in fields.items()
             if filled_by.get(name) != value]
    if other:
        raise ValueError(f"the cache holds the state of another model: {', '.join(other)}. A cache continues only a "
                         "model of the architecture that filled it: pass that model, or a new cache")


def note_unfed_tokens(cache: Cache | None, output: Any) -> None:
    """Record what generate()'s `output` (its sequences, or a ModelOutput holding them) leaves unfed in `cache`: the
    token it generated last, which no forward of the call fed (`check_unfed_tokens`). Where the sequences are not the
    cache's rows (beam search returns its best sequences, the cache holds the last step's beams), the cache cannot
    be continued at all."""
    sequences = output if isinstance(output, torch.Tensor) else output.get("sequences")
    stored = None if cache is None or sequences is None else stored_tensors(cache, 0)
    if stored is None:
        return
    rows = stored[1].shape[0]
    if sequences.shape[0] != rows:
        _UNFED[cache] = (f"this cache holds the {rows} rows of the last step of a generate() call that returned "
                         f"{sequences.shape[0]} sequences (beam search): it continues none of them. Continue from the "
                         "sequences with generate() and no cache")
    else:
        _UNFED[cache] = (seen_tokens(cache), sequences[:, -1:].clone())


def forget_unfed_tokens(cache: Cache | None) -> None:
    """Drop what `note_unfed_tokens` recorded for `cache`: a generate() step continues it by position (the full
    sequence after the positions it holds), so any token may follow, as in assisted decoding, where the model's own
    token replaces a rejected draft."""
    if cache is not None:
        _UNFED.pop(cache, None)


def check_unfed_tokens(cache: Cache, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor,
                       embed: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """A cache returned by generate() lacks the token generated last (generate() never feeds it): the next input of
    a forward must start with it, else the logits would continue a sequence without it. One host sync, in the first
    forward after generate() only; then the record is dropped, as it is once the cache was rolled back (`crop`)."""
    unfed = _UNFED.get(cache)
    if unfed is None:
        return
    if isinstance(unfed, str):
        raise ValueError(unfed)
    positions, ids = unfed
    if seen_tokens(cache) != positions:
        del _UNFED[cache]
        return
    if ids.shape[0] != inputs_embeds.shape[0]:
        return  # another batch: `read_state` names that
    first = ids.to(inputs_embeds.device)
    if input_ids is not None:
        fed = bool((input_ids[:, :1] == first).all())
    else:
        fed = torch.equal(inputs_embeds[:, :1], embed(first).to(inputs_embeds.dtype))
    if not fed:
        raise ValueError(
            "this cache was returned by generate(), which does not feed the token it generated last: the cache "
            "holds the sequences without it. Start the input with it, the last column of generate()'s sequences: "
            "model(torch.cat([sequences[:, -1:], new_ids], dim=1), cache=cache); or continue with generate(), given "
            "the full sequences followed by the new tokens (it continues by position, so another token may replace "
            "the last one there)"
        )
    del _UNFED[cache]
