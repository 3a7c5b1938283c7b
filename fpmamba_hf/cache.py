"""Glue between a layer's state and transformers' stock `DynamicCache`.

Generation builds `DynamicCache(config=...)`, which gives each block a linear-attention cache layer with one conv
state and one recurrent state. Each backbone packs its state into those two tensors (`FixedPointLayer.pack_state`;
Mamba-2 adds y*_{t-1} as an extra column of the recurrent state), so that beam reordering, batch expansion and
offloading of the stock cache carry it along untouched.

The cache also counts the positions it has consumed (`seen_tokens`; padding included, as generate() feeds it), so
that generate() can continue from a returned cache given the full sequence: it feeds only the positions after
that count.
"""

from __future__ import annotations

from typing import Any

from fpmamba_core.layer import FixedPointLayer


def _layer(cache, layer_idx: int):
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers) or not hasattr(layers[layer_idx], "recurrent_states"):
        raise TypeError(
            "cache_params must be a transformers DynamicCache built from an FPMambaConfig "
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
            f"cache_params holds a batch of {packed.shape[0]} sequences but the input has {batch_size} rows; "
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
