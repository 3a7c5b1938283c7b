"""Packed sequences: several documents in one row of the batch, each computed exactly as if it ran alone.

Padding-free training (transformers' `DataCollatorWithFlattening`, fla's `cu_seqlens`, Mamba-2 kernels' `seq_idx`)
concatenates documents into rows of shape (rows, N). A recurrent layer would carry its state from one document into
the next, so the model never runs the packed layout: `PackedDocuments.gather` moves the documents into a
left-padded batch (documents, longest) right after the embeddings, the blocks run that batch with its padding mask
(left padding is exact: a padded position leaves every state untouched), and `PackedDocuments.scatter` puts the
result back in the packed layout. Each document is a row of its own there, so its conv window, scan state and
y*_{t-1} start at zero, and the solver stops per document. The cost is the padded batch's memory and compute:
documents x longest document positions instead of rows x N.

The boundaries are read once, by `find_documents`, from whichever of these the caller gives (several must agree):
  - `position_ids` (rows, N): a document starts wherever a position does not continue the previous one by 1
    (`DataCollatorWithFlattening` restarts them at 0 for each document). Ids that count up (0..N-1, or the ids
    generate() derives from a left-padded mask, which stay constant or restart only across padding) hold one
    document per row;
  - `seq_idx` (rows, N): the document index of each position, non-decreasing along a row (Mamba-2 kernels);
  - `cu_seqlens` (documents + 1,): cumulative document lengths over the flattened rows, 0 to rows * N (fla), and
    flash-attention's `cu_seq_lens_q` / `cu_seq_lens_k` (with `max_length_q` / `max_length_k`, the longest length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# The document boundaries forward() reads: its named arguments, then flash-attention's keyword arguments.
BOUNDARY_ARGUMENTS = ("position_ids", "seq_idx", "cu_seqlens")
FLASH_ATTENTION_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def boundary_inputs(position_ids: Any, seq_idx: Any, cu_seqlens: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The boundary inputs of a call that were given (not None): the named ones and the flash-attention keywords,
    which are taken out of `kwargs` (edited) so that nothing else reads them."""
    given = dict(zip(BOUNDARY_ARGUMENTS, (position_ids, seq_idx, cu_seqlens)))
    given.update((key, kwargs.pop(key)) for key in FLASH_ATTENTION_KEYS if key in kwargs)
    return {key: value for key, value in given.items() if value is not None}


@dataclass
class PackedDocuments:
    """The documents of a packed batch (rows, N) as a left-padded batch (documents, longest).

    gather_index (documents, longest): for each slot of the padded batch, its flat packed position r * N + t, or
    rows * N (a zero row) for padding. scatter_index (rows, N): for each packed position, its flat slot d * longest
    + j. mask (documents, longest) bool: True at real positions. row_of_document (documents,): the packed row each
    document comes from."""

    gather_index: torch.Tensor
    scatter_index: torch.Tensor
    mask: torch.Tensor
    row_of_document: torch.Tensor
    rows: int

    @classmethod
    def from_starts(cls, starts: torch.Tensor) -> PackedDocuments:
        """The documents of `starts` (rows, N) bool: True at the first position of each document (every row's t = 0
        among them)."""
        rows, length = starts.shape
        flat = starts.reshape(-1)
        document = flat.long().cumsum(0) - 1  # (rows * N,) the document of each packed position
        first = flat.nonzero().squeeze(1)  # (documents,) each document's first flat position
        lengths = torch.diff(first, append=first.new_tensor([flat.numel()]))
        longest = int(lengths.max())  # the one host sync of the layout
        positions = torch.arange(flat.numel(), device=starts.device)
        # Left padding: document d's token j sits in column longest - length_d + j.
        slot = document * longest + longest - lengths[document] + positions - first[document]
        gather = torch.full((first.numel() * longest,), flat.numel(), dtype=torch.long, device=starts.device)
        gather[slot] = positions
        gather = gather.view(first.numel(), longest)
        return cls(gather_index=gather, scatter_index=slot.view(rows, length), mask=gather < flat.numel(),
                   row_of_document=first // length, rows=rows)

    @property
    def longest(self) -> int:
        return self.mask.shape[1]

    def gather(self, packed: torch.Tensor) -> torch.Tensor:
        """(rows, N, ...) -> (documents, longest, ...), zeros at padding."""
        flat = packed.reshape(-1, *packed.shape[2:])
        flat = torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])
        return flat[self.gather_index]

    def scatter(self, documents: torch.Tensor) -> torch.Tensor:
        """(documents, longest, ...) -> (rows, N, ...): each packed position's value."""
        return documents.reshape(-1, *documents.shape[2:])[self.scatter_index]

    def per_row(self, telemetry: torch.Tensor) -> torch.Tensor:
        """(documents, layers) -> (rows, layers): each packed row's largest value over its documents (the slowest
        document's iterations, the largest residual)."""
        index = self.row_of_document[:, None].expand_as(telemetry)
        out = telemetry.new_zeros(self.rows, telemetry.shape[1])
        return out.scatter_reduce(0, index, telemetry, "amax", include_self=False)


def find_documents(boundaries: dict[str, Any], shape: tuple[int, int], mask: torch.Tensor | None,
                   device: torch.device) -> PackedDocuments | None:
    """The documents of a packed batch of `shape` (rows, N), from its `boundaries` (`boundary_inputs`); None when
    every row holds one document (nothing packed). `mask` (rows, N) bool | None: the padding mask, already checked.
    Raises ValueError for malformed or disagreeing boundaries, and for boundaries together with padding."""
    rows, length = shape
    found: dict[str, torch.Tensor] = {}  # per input, its starts (rows, N) bool
    for name in ("position_ids", "seq_idx"):
        if name in boundaries:
            ids = _per_position(name, boundaries[name], shape, device)
            if name == "position_ids":
                new = ids[:, 1:] != ids[:, :-1] + 1
                if mask is not None:  # ids at padding mean nothing (generate() fills them with 0 or 1)
                    new &= mask[:, 1:] & mask[:, :-1]
            else:
                if bool((ids[:, 1:] < ids[:, :-1]).any()):
                    raise ValueError("seq_idx must be non-decreasing along each row (the document index of each "
                                     "position, documents one after another)")
                new = ids[:, 1:] != ids[:, :-1]
            found[name] = torch.cat([torch.ones_like(new[:, :1]), new], 1)
    for name in ("cu_seqlens", "cu_seq_lens_q", "cu_seq_lens_k"):
        if name in boundaries:
            found[name] = _starts_from_cumulative(name, boundaries[name], shape, device)
    if not found:
        if any(key in boundaries for key in ("max_length_q", "max_length_k")):
            raise ValueError("max_length_q / max_length_k were given without cu_seq_lens_q / cu_seq_lens_k")
        return None
    (first_name, starts), *others = found.items()
    for name, other in others:
        if not torch.equal(starts, other):
            raise ValueError(f"{first_name} and {name} describe different document boundaries; pass one of them, "
                             "or make them agree")
    packed = bool(starts[:, 1:].any()) if length > 1 else False
    if not packed:
        return None
    if mask is not None and not bool(mask.all()):
        raise ValueError("document boundaries together with padding (attention_mask has zeros): pack the documents "
                         "without padding, or pad one document per row without boundaries")
    documents = PackedDocuments.from_starts(starts)
    for name in ("max_length_q", "max_length_k"):
        if name in boundaries and int(boundaries[name]) != documents.longest:
            raise ValueError(f"{name}={int(boundaries[name])} but the longest document has {documents.longest} "
                             "positions")
    return documents


def _per_position(name: str, ids: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """`ids` checked as integers of shape (rows, N) or (1, N) (broadcast over rows), on `device`."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} must be an integer torch.Tensor of shape (batch, sequence)")
    if ids.dim() != 2 or ids.shape[1] != shape[1] or ids.shape[0] not in (1, shape[0]):
        raise ValueError(f"{name} must have shape (batch, sequence) = {shape} (or (1, {shape[1]})), "
                         f"got {tuple(ids.shape)}")
    return ids.to(device).expand(shape)


def _starts_from_cumulative(name: str, cu: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The starts (rows, N) of cumulative document lengths `cu` (documents + 1,) over the flattened rows."""
    rows, length = shape
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.is_floating_point() or cu.is_complex():
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor of cumulative document lengths")
    cu = cu.to(device=device, dtype=torch.long)
    total = rows * length
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu[1:] <= cu[:-1]).any()):
        raise ValueError(f"{name} must increase strictly from 0 to the number of positions, batch x sequence = "
                         f"{total} (documents of at least one position, covering every row), got "
                         f"{cu.tolist() if cu.numel() <= 16 else tuple(cu.shape)}")
    starts = torch.zeros(total, dtype=torch.bool, device=device)
    starts[cu[:-1]] = True
    starts = starts.view(rows, length)
    if not bool(starts[:, 0].all()):
        raise ValueError(f"{name} has a document that crosses from one row of the batch into the next: each row "
                         "must begin a document")
    return starts
