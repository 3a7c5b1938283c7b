"""The one adapter between a layer's state and transformers' stock `DynamicCache`.

Generation builds `DynamicCache(config=...)`, which gives each block a linear-attention cache layer with one conv
state and one recurrent state. Each backbone packs its state into those two tensors (`FixedPointLayer.pack_state`;
Mamba-2 adds y*_{t-1} as an extra column of the recurrent state), so that beam reordering, batch expansion and
offloading of the stock cache carry it along untouched.

The cache is read and written through its public API: `has_previous_state`, `get_conv_state` /
`get_recurrent_state` (transformers 5.24+), and `update_conv_state` / `update_recurrent_state`, which allocate the
two tensors at the first write (at static addresses, which CUDA graphs need). Later writes go into those tensors in
place (`FixedPointLayer.store_state`, no packed copy), so that a compiled or CUDA-graph decode step keeps writing
where it read. Transformers 5.17-5.23 have no getters: `stored_tensors` reads the layer's own tensors there, the one
place that touches a cache layer's internals.

A cache that records its past (`records_past`; generate()'s assisted decoding and prompt lookup turn it on, and
transformers 5.25 can roll it back with `crop`) is written differently: each new position's conv columns and the
packed recurrent state after it go through the update methods (`write_recorded`, fed by fpmamba_hf/rollback.py), and
a read takes the last window of the grown conv tensor (`_conv_window`, which reads the window's width off the layer).

The adapter also counts the positions a cache has consumed through this model (`seen_tokens`; padding included, as
generate() feeds it), so that generate() can continue from a returned cache given the full sequence: it feeds only
the positions after that count. The count is kept beside the cache (a weak map), not on it: a cache copied or filled
elsewhere has no count.

The cache's keyword changed name in transformers 5.24: generate() hands it to forward() as `cache` from then on, as
`cache_params` (the name of models with linear-attention caches) before. forward() takes `cache`; its old names
`cache_params` and `past_key_values` go through transformers' `deprecate_kwarg` (`accepts_old_cache_names`); the
output reads as `cache`, and before 5.24 also as `cache_params` (`expose_cache`: from 5.24 every ModelOutput reads
the old names as `cache` itself).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import transformers
from fpmamba_core.layer import FixedPointLayer
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin
from transformers.generation.utils import ALL_CACHE_NAMES
from transformers.utils.deprecation import deprecate_kwarg

# The keyword generate() passes the cache under (and looks for in forward()'s outputs) in the installed transformers.
GENERATE_CACHE_NAME = "cache" if "cache" in ALL_CACHE_NAMES else "cache_params"
# forward()'s name for the cache, then its old names (accepted with a deprecation warning).
CACHE_NAMES = ("cache", "cache_params", "past_key_values")
# transformers' own removal of the old names (its Mamba2 models deprecate `cache_params` for the same version).
OLD_CACHE_NAMES_REMOVED_IN = "5.40.0"
# Transformers 5.24+ read a linear-attention layer's tensors through the cache (`get_recurrent_state`).
_PUBLIC_GETTERS = hasattr(Cache, "get_recurrent_state")
# Transformers 5.25 rolls a recording linear-attention layer back (`crop`) to the recurrent state after any position it
# was given (`update_recurrent_state` with a list); 5.17 and 5.18 record only the conv columns.
_ROLLBACK = hasattr(Cache, "get_recurrent_states_to_keep")


def accepts_old_cache_names(forward: Callable) -> Callable:
    """`forward` also taking the cache as `cache_params` or `past_key_values`, with transformers' deprecation
    warning; the cache under two names raises a ValueError."""
    for old_name in CACHE_NAMES[1:]:
        forward = deprecate_kwarg(old_name, OLD_CACHE_NAMES_REMOVED_IN, new_name="cache", raise_if_both_names=True,
                                  additional_message="Pass the cache once, as `cache`.")(forward)
    return forward


def for_generate(kwargs: dict[str, Any]) -> dict[str, Any]:
    """generate()'s keyword arguments with a user's cache under the name generate() reads. From transformers 5.24
    generate() takes every name itself (and warns on the old ones); before, it reads only `cache_params`."""
    if GENERATE_CACHE_NAME == "cache":
        return kwargs
    given = {name: kwargs.pop(name) for name in CACHE_NAMES if kwargs.get(name) is not None}
    if len({id(c) for c in given.values()}) > 1:
        raise ValueError(f"pass the cache once: {' and '.join(given)} hold different caches")
    if given:
        kwargs[GENERATE_CACHE_NAME] = next(iter(given.values()))
    return kwargs


def expose_cache(output: Any) -> Any:
    """`output` (a ModelOutput) with its `cache` also under the name generate() reads in this transformers."""
    if GENERATE_CACHE_NAME != "cache" and output.get("cache") is not None:
        output[GENERATE_CACHE_NAME] = output["cache"]
    return output


def expose_generated_cache(output: Any) -> Any:
    """generate()'s output with the cache as `cache` on every transformers version (before 5.24 it is returned as
    `past_key_values`)."""
    if output.get("cache") is None and output.get("past_key_values") is not None:
        output["cache"] = output["past_key_values"]
    return output


def _check_layer(cache: Any, layer_idx: int) -> None:
    """Refuse a cache without a linear-attention layer at `layer_idx`. Both of transformers' caches built from an
    FPMambaConfig have one per block: DynamicCache and StaticCache (generate()'s `cache_implementation="static"`)
    build the same layer class for a `linear_attention` layer type, with the same static-address tensors."""
    layers = getattr(cache, "layers", None)
    if (not isinstance(cache, Cache) or layer_idx >= len(layers)
            or not isinstance(layers[layer_idx], LinearAttentionCacheLayerMixin)):
        raise TypeError(
            "the cache must be a transformers DynamicCache or StaticCache built from an FPMambaConfig "
            "(DynamicCache(config=model.config), StaticCache(config=model.config, max_cache_len=...)), got "
            f"{type(cache).__name__}"
        )


def stored_tensors(cache: Cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (conv, recurrent) tensors the cache holds for `layer_idx`, or None while it holds no state."""
    _check_layer(cache, layer_idx)
    if not cache.has_previous_state(layer_idx, 0):
        return None
    if _PUBLIC_GETTERS:
        return cache.get_conv_state(layer_idx), cache.get_recurrent_state(layer_idx)
    layer = cache.layers[layer_idx]  # transformers 5.17-5.23: no getters, the layer's own tensors
    return layer.conv_states[0], layer.recurrent_states[0]


def read_state(cache: Cache, layer_idx: int, batch_size: int, owner: FixedPointLayer) -> Any:
    """The state stored for `layer_idx` (unpacked by its layer, `owner`), or None if the cache holds none for that
    layer."""
    stored = stored_tensors(cache, layer_idx)
    if stored is None:
        return None
    conv, packed = stored
    if packed.shape[0] != batch_size:
        raise ValueError(
            f"the cache holds a batch of {packed.shape[0]} sequences but the input has {batch_size} rows; "
            "pass a cache built for this batch (or none)"
        )
    return owner.unpack_state(_conv_window(cache, layer_idx, conv), packed)


def write_state(cache: Cache, layer_idx: int, state: Any, owner: FixedPointLayer) -> None:
    """Store `state` for `layer_idx` (laid out by its layer, `owner`): the first write allocates the cache's tensors
    through its public update methods; later writes go into them in place, keeping their addresses (a CUDA graph of
    the decode step replays on them)."""
    stored = stored_tensors(cache, layer_idx)
    if stored is None:
        conv, packed = owner.pack_state(state)
        cache.update_conv_state(conv, layer_idx)
        cache.update_recurrent_state(packed, layer_idx)
        return
    conv, packed = stored
    owner.store_state(state, _conv_window(cache, layer_idx, conv, writable=True), packed)


def _conv_window(cache: Cache, layer_idx: int, conv: torch.Tensor, writable: bool = False) -> torch.Tensor:
    """The conv state the layer reads in the stored `conv` (..., columns): `conv` itself, or the window ending at
    its last column. A layer that records its past (`records_past`) keeps the columns of every new position until
    `crop` cuts them back to the window ending at the position kept; a record begun on an empty cache may hold fewer
    columns than the window, the missing ones being the zeros before the sequence (padded here; `writable`: refused,
    as a padded copy would not be the cache's)."""
    if not _ROLLBACK:
        return conv
    width, held = cache.layers[layer_idx].conv_kernel_size[0], conv.shape[-1]  # the window: set at the first write
    if held > width:
        return conv[..., held - width:]
    if held < width:
        if writable:
            raise ValueError(
                f"layer {layer_idx} of the cache holds {held} conv columns, fewer than its window of {width}: it "
                "was rolled back (crop) to fewer positions than that while recording from an empty cache, then "
                "stopped recording. Continue it while it records (activate_past_recording), or fill a new cache")
        return torch.nn.functional.pad(conv, (width - held, 0))
    return conv


def records_past(cache: Cache, layer_idx: int | None = None) -> bool:
    """Whether the cache records its past for `layer_idx` (None: for any layer), so that `crop` can roll it back: the
    caches of generate()'s assisted decoding and prompt lookup, an assistant model's. Raises on a transformers that
    records such a cache but cannot roll back its recurrent state (5.17, 5.18: they refuse a stateful main model for
    assisted decoding themselves, not a stateful assistant)."""
    indices = range(len(cache.layers)) if layer_idx is None else (layer_idx,)
    if _ROLLBACK:
        return any(cache.is_recording_past(i) for i in indices)
    if any(getattr(cache.layers[i], "record_past", False) for i in indices):  # 5.17, 5.18: the layer's own flag
        raise NotImplementedError(
            f"the cache records its past to be rolled back (an assistant model's cache in assisted decoding), but "
            f"transformers {transformers.__version__} cannot roll back a recurrent state (its `crop` cuts only conv "
            "states): FP-Mamba as an assistant needs a transformers that can (5.25 does)")
    return False


def positions_to_keep(cache: Cache, layer_idx: int) -> int | None:
    """How many of a call's last positions a rollback of a recording cache may return to (None: any)."""
    return cache.get_recurrent_states_to_keep(layer_idx)


def write_recorded(cache: Cache, layer_idx: int, steps: list[tuple[Any, int]], owner: FixedPointLayer) -> None:
    """Store the states a call left for `layer_idx` in a cache that records its past, through its public update
    methods, so that `crop(-n)` restores the state after any of the call's steps. steps: (state, positions it
    advanced) in order, the call's final state last. The cache gets one conv column per position (a step over several
    positions gives the columns its window holds, then zeros: no rollback returns inside it) and the packed recurrent
    state after each step. The first write also sets the conv window's width, which a recording cache cannot infer."""
    packed = [owner.pack_state(state) for state, _ in steps]
    columns = torch.cat([_last_columns(conv, n) for (conv, _), (_, n) in zip(packed, steps)], dim=-1)
    cache.update_conv_state(columns, layer_idx, conv_kernel_size=packed[-1][0].shape[-1])
    cache.update_recurrent_state([recurrent for _, recurrent in packed], layer_idx)


def _last_columns(window: torch.Tensor, n: int) -> torch.Tensor:
    """The conv columns (..., n) of the last n positions, read off the window (..., width) after them: its last
    min(n, width) columns, zeros for earlier positions it does not reach."""
    kept = min(n, window.shape[-1])
    return torch.nn.functional.pad(window[..., window.shape[-1] - kept:], (n - kept, 0))


def has_state(cache: Cache) -> bool:
    """Whether any layer of the cache already holds a state (i.e. the cache continues a sequence)."""
    return any(stored_tensors(cache, i) is not None for i in range(len(getattr(cache, "layers", [None]))))


def state_tensors(cache: Cache) -> Iterator[torch.Tensor]:
    """Every tensor the cache holds a state in (what a CUDA graph of the decode step reads and writes)."""
    for i in range(len(cache.layers)):
        yield from stored_tensors(cache, i) or ()


# Per cache: (positions consumed, transformers' own count of them then if the cache recorded its past, else None).
_SEEN: weakref.WeakKeyDictionary[Cache, tuple[int, torch.Tensor | None]] = weakref.WeakKeyDictionary()


def seen_tokens(cache: Cache) -> int | None:
    """Positions the cache has consumed through this model; None if it holds a state filled elsewhere. A cache that
    recorded its past may have been rolled back since (`crop`, which lowers transformers' count by the positions it
    drops): those are taken off (one host sync)."""
    if not has_state(cache):
        return 0
    positions, count = _SEEN.get(cache, (None, None))
    if count is None:
        return positions
    return positions - int(count - cache.get_seq_length())


def set_seen_tokens(cache: Cache, positions: int | None) -> None:
    """Record how many positions the cache has consumed (None: unknown)."""
    if positions is None:
        _SEEN.pop(cache, None)
        return
    # Only a recording cache can be cropped before its next write: keep transformers' count (a tensor it updates in
    # place) to see the positions a crop drops.
    count = torch.as_tensor(cache.get_seq_length()).clone() if records_past(cache) else None
    _SEEN[cache] = (positions, count)
