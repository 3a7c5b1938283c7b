"""Shared helpers: padded dataset assembly, on-disk caching and array conversion.

Target convention used by every task: ``shift_labels[i]`` is the target for the
model output at position ``i`` (logits ``[:, i]``), *without* the next-token shift
that Hugging Face causal-LM losses apply to ``labels``; ``IGNORE_INDEX`` marks
unsupervised positions. The column is named ``shift_labels`` because that is the
name under which transformers' causal-LM loss takes targets that are already
aligned (a ``labels`` column would be shifted once more inside the model). All
datasets are right-padded to a fixed width, so rows stack into batches directly.
There is no ``attention_mask`` column: trailing padding cannot change a causal
model's outputs before it, and FP-Mamba is not given a right-padded mask.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

IGNORE_INDEX = -100

# Bump when the generated content of any task changes, so stale caches are not reused.
CACHE_VERSION = 2  # 2: aligned targets under `shift_labels`, no attention_mask


def row_width(min_length: int, max_length: int, longest: int, pad_to: int | None) -> int:
    """Validate a length range and return the row width: `pad_to`, or `longest` (the longest row's token count)."""
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={width} is shorter than the longest sequence ({longest} tokens)")
    return width


def pad_rows(
    rows: Sequence[Sequence[int]], width: int, pad_value: int, dtype: type = np.int32
) -> np.ndarray:
    """Right-pad variable-length rows into a ``(len(rows), width)`` array."""
    out = np.full((len(rows), width), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} tokens, more than pad_to={width}")
        out[i, : len(row)] = row
    return out


def make_dataset(input_ids: np.ndarray, shift_labels: np.ndarray, length: np.ndarray) -> datasets.Dataset:
    """Assemble the standard columns: ``input_ids`` and aligned ``shift_labels`` ``(N, T)``, and ``length`` ``(N,)``,
    the task-level length (word length, string length, ...) kept for metrics."""
    return datasets.Dataset.from_dict(
        {
            "input_ids": input_ids.astype(np.int32),
            "shift_labels": shift_labels.astype(np.int32),
            "length": np.asarray(length, dtype=np.int32),
        }
    )


def cached(
    cache_dir: str | Path | None, name: str, params: dict[str, Any], build: Callable[[], datasets.Dataset]
) -> datasets.Dataset:
    """Load ``name`` with ``params`` from ``cache_dir`` if present, else build and save it.

    The directory name carries a hash of all parameters, so any change of
    parameters (or of ``CACHE_VERSION``) produces a fresh dataset.
    """
    if cache_dir is None:
        return build()
    key = json.dumps({"version": CACHE_VERSION, **params}, sort_keys=True)
    path = Path(cache_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if path.exists():
        return datasets.load_from_disk(str(path))
    dataset = build()
    # Save under a per-process temporary name and rename, so an interrupted or
    # concurrent save is never loaded half-written.
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    dataset.save_to_disk(str(tmp))
    try:
        tmp.rename(path)
    except OSError:  # another process finished the same dataset first
        shutil.rmtree(tmp)
    return datasets.load_from_disk(str(path))


def to_numpy(x: Any) -> np.ndarray:
    """Convert a torch tensor (any device), array or nested list to a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def sequences_correct(pred_ids: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-position correctness and supervision masks for aligned predictions.

    Returns ``(correct, supervised)``, both boolean ``(N, T)``; ``correct`` is
    True on unsupervised positions so that ``all(axis=1)`` gives sequence accuracy.
    """
    pred, lab = to_numpy(pred_ids), to_numpy(labels)
    if pred.shape != lab.shape:
        raise ValueError(f"pred_ids shape {pred.shape} != labels shape {lab.shape}")
    supervised = lab != IGNORE_INDEX
    return (pred == lab) | ~supervised, supervised
