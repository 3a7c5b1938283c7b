"""Glue between a layer's state and transformers' stock `DynamicCache`.

Generation builds `DynamicCache(config=...)`, which gives each block a linear-attention cache layer with one conv
state and one recurrent state. Each backbone packs its state into those two tensors (`FixedPointLayer.pack_state`;
Mamba-2 adds y*_{t-1} as an extra column of the recurrent state), so that beam reordering, batch expansion and
offloading of the stock cache carry it along untouched.

The cache also counts the positions it has consumed (`seen_tokens`; padding included, as generate() feeds it), so
that generate() can continue from a returned cache given the full sequence: it feeds only the positions after
that count.

The cache's keyword changed name in transformers 5.24: generate() hands it to forward() as `cache` from then on, as
`cache_params` (the name of models with linear-attention caches) before. This model reads all of its names
(`cache`, `cache_params`, `past_key_values`: `resolve_cache`) and returns it as `cache`, before 5.24 also as
`cache_params` (`expose_cache`; from 5.24 every ModelOutput reads the old names as `cache` itself), so it runs the
same on either side of the rename.
"""

from __future__ import annotations

from typing import Any

from fpmamba_core.layer import FixedPointLayer
from transformers.generation.utils import ALL_CACHE_NAMES

# The keyword generate() passes the cache under (and looks for in forward()'s outputs) in the installed transformers.
GENERATE_CACHE_NAME = "cache" if "cache" in ALL_CACHE_NAMES else "cache_params"
CACHE_NAMES = ("cache", "cache_params", "past_key_values")


def resolve_cache(**named: Any) -> Any:
    """The one cache handed in under any of `CACHE_NAMES` (None if none), or a ValueError if two names hold
    different caches."""
    given = {name: c for name, c in named.items() if c is not None}
    if len({id(c) for c in given.values()}) > 1:
        raise ValueError(f"pass the cache once: {' and '.join(given)} hold different caches")
    return next(iter(given.values()), None)


def expose_cache(output: Any) -> Any:
    """`output` (a ModelOutput) with its `cache` also under the name generate() reads in this transformers."""
    if GENERATE_CACHE_NAME != "cache" and output.get("cache") is not None:
        output[GENERATE_CACHE_NAME] = output["cache"]
    return output


def _layer(cache, layer_idx: int):
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers) or not hasattr(layers[layer_idx], "recurrent_states"):
        raise TypeError(
            "the cache must be a transformers DynamicCache built from an FPMambaConfig "
            f"(DynamicCache(config=model.config)), got {type(cache).__name__}"
        )
    return layers[layer_idx]


def read_state(cache, layer_idx: int, batch_size: int, owner: FixedPointLayer) -> Any:
    """The state stored for `layer_idx` (unpacked by its layer, `owner`), or None if the cache is still empty for
    that layer."""
    layer = _layer(cache, layer_idx)
    if not layer.is_recurrent_states_initialized[0]:
        return None
    packed = layer.recurrent_states[0]
    if packed.shape[0] != batch_size:
        raise ValueError(
            f"the cache holds a batch of {packed.shape[0]} sequences but the input has {batch_size} rows; "
            "pass a cache built for this batch (or none)"
        )
    return owner.unpack_state(layer.conv_states[0], packed)


def write_state(cache, layer_idx: int, state: Any, owner: FixedPointLayer) -> None:
    """Store `state` for `layer_idx` (laid out by its layer, `owner`; in place, keeping the tensors' addresses once
    allocated, which a CUDA graph of the decode step relies on)."""
    layer = _layer(cache, layer_idx)
    # Allocated once from the first state; later states have its shapes (`read_state` refuses another batch size).
    if not layer.is_recurrent_states_initialized[0]:
        conv, packed = owner.pack_state(state)
        layer.is_recurrent_states_initialized[0] = False
        layer.is_conv_states_initialized[0] = False
        layer.lazy_initialization(conv_states=conv, recurrent_states=packed)
    owner.store_state(state, layer.conv_states[0], layer.recurrent_states[0])
    layer.has_previous_state[0] = True


_SEEN = "fp_seen_tokens"  # attribute on the DynamicCache instance (reordering and expansion keep the object)


def seen_tokens(cache) -> int | None:
    """Positions the cache has consumed through this model; None if it holds a state filled elsewhere."""
    if not has_state(cache):
        return 0
    return getattr(cache, _SEEN, None)


def set_seen_tokens(cache, positions: int | None) -> None:
    """Record how many positions the cache has consumed (None: unknown)."""
    setattr(cache, _SEEN, positions)


def has_state(cache) -> bool:
    """Whether any layer of the cache already holds a state (i.e. the cache continues a sequence)."""
    n_layers = len(getattr(cache, "layers", [None]))
    return any(_layer(cache, i).is_recurrent_states_initialized[0] for i in range(n_layers))
