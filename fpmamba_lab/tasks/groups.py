"""Finite groups as permutation groups, with precomputed multiplication tables.

A permutation of degree ``d`` is a tuple ``p`` with ``p[x]`` the image of ``x``.

Composition convention (left to right): ``g * h`` means *apply g first, then h*,
i.e. ``(g * h)[x] = h[g[x]]``. A word ``g1 g2 ... gk`` therefore has product
``g1 * g2 * ... * gk``, the permutation obtained by applying ``g1``, then ``g2``,
..., then ``gk``; its prefix products satisfy ``p_t = p_{t-1} * g_t``, so the
running product of a word is read from ``mul[p_{t-1}, g_t]``.

Elements are stored in a fixed order with the identity at index 0; group tables
use element *indices*, which are also the token ids of the word-problem task.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np

Permutation = tuple[int, ...]

# S_8 already has 40320 elements and a 1.6e9-entry table; refuse such sizes up front.
MAX_ORDER = 5040


def compose(g: Permutation, h: Permutation) -> Permutation:
    """Return ``g * h``: apply ``g`` first, then ``h``."""
    return tuple(h[x] for x in g)


def is_even(p: Permutation) -> bool:
    """True iff ``p`` has an even number of inversions."""
    inversions = sum(1 for i, j in itertools.combinations(range(len(p)), 2) if p[i] > p[j])
    return inversions % 2 == 0


def _check_order(order: int) -> None:
    # Checked before enumerating permutations, which would already be too slow for large n.
    if order > MAX_ORDER:
        raise ValueError(f"group order {order} exceeds MAX_ORDER={MAX_ORDER}")


@dataclass(frozen=True, eq=False)
class PermutationGroup:
    """A finite permutation group with index-based multiplication and inverse tables.

    Attributes:
        name: human-readable name such as ``"A5"``.
        degree: number of points the permutations act on.
        elements: the permutations; ``elements[0]`` is the identity.
        mul: ``mul[i, j]`` is the index of ``elements[i] * elements[j]`` (left to right).
        inv: ``inv[i]`` is the index of the inverse of ``elements[i]``.
    """

    name: str
    degree: int
    elements: tuple[Permutation, ...] = field(repr=False)
    mul: np.ndarray = field(repr=False)
    inv: np.ndarray = field(repr=False)

    @property
    def order(self) -> int:
        return len(self.elements)

    @property
    def identity(self) -> int:
        return 0

    def index(self, p: Permutation) -> int:
        """Index of permutation ``p`` (raises ``ValueError`` if not in the group)."""
        return self.elements.index(tuple(p))

    def is_abelian(self) -> bool:
        return bool(np.array_equal(self.mul, self.mul.T))

    def prefix_products(self, words: np.ndarray) -> np.ndarray:
        """Running products of element-index words, shape ``(..., k)`` -> same shape.

        ``out[..., t]`` is the index of ``g_0 * g_1 * ... * g_t``.
        """
        words = np.asarray(words)
        out = np.empty_like(words)
        if words.shape[-1] == 0:
            return out
        out[..., 0] = words[..., 0]
        for t in range(1, words.shape[-1]):
            out[..., t] = self.mul[out[..., t - 1], words[..., t]]
        return out

    @classmethod
    def from_permutations(cls, name: str, perms: list[Permutation]) -> PermutationGroup:
        """Build the tables for ``perms``, which must be closed under composition.

        The identity is moved to index 0; the remaining order is kept.
        """
        if not perms:
            raise ValueError("a group needs at least one element")
        _check_order(len(perms))
        degree = len(perms[0])
        identity = tuple(range(degree))
        if identity not in perms:
            raise ValueError("the identity permutation is missing")
        ordered = [identity] + [tuple(p) for p in perms if tuple(p) != identity]
        table = np.array(ordered, dtype=np.int64)  # (n, d)
        n = len(ordered)
        # Encode each permutation as a base-`degree` integer to look indices up vectorised.
        weights = degree ** np.arange(degree, dtype=np.int64)
        codes = table @ weights
        sorter = np.argsort(codes)
        mul = np.empty((n, n), dtype=np.int64)
        for i in range(n):  # one row at a time keeps memory at O(n * degree)
            # row[j, x] = table[j, table[i, x]]: apply elements[i], then elements[j].
            row_codes = table[:, table[i]] @ weights
            pos = np.minimum(np.searchsorted(codes, row_codes, sorter=sorter), n - 1)
            found = sorter[pos]
            if not np.array_equal(codes[found], row_codes):
                raise ValueError("the permutations are not closed under composition")
            mul[i] = found
        inv = np.argmax(mul == 0, axis=1)
        if not np.all(mul[np.arange(n), inv] == 0):
            raise ValueError("some element has no inverse")
        mul.setflags(write=False)
        inv.setflags(write=False)
        return cls(name=name, degree=degree, elements=tuple(ordered), mul=mul, inv=inv)


def symmetric_group(n: int) -> PermutationGroup:
    """S_n: all permutations of ``n`` points, in lexicographic order."""
    _check_order(math.factorial(n))
    return PermutationGroup.from_permutations(f"S{n}", list(itertools.permutations(range(n))))


def alternating_group(n: int) -> PermutationGroup:
    """A_n: the even permutations of ``n`` points, in lexicographic order."""
    _check_order(max(1, math.factorial(n) // 2))
    perms = [p for p in itertools.permutations(range(n)) if is_even(p)]
    return PermutationGroup.from_permutations(f"A{n}", perms)


def cyclic_group(n: int) -> PermutationGroup:
    """Z_n as the rotations of ``n`` points; element ``k`` is the shift ``x -> x + k mod n``."""
    perms = [tuple((x + k) % n for x in range(n)) for k in range(n)]
    return PermutationGroup.from_permutations(f"Z{n}", perms)


_CONSTRUCTORS = {"S": symmetric_group, "A": alternating_group, "Z": cyclic_group}


def get_group(name: str) -> PermutationGroup:
    """Group by name: ``"S<n>"``, ``"A<n>"`` or ``"Z<n>"`` (e.g. ``"A5"``, ``"S5"``, ``"Z7"``).

    Names are case-insensitive; each group is built once and then shared.
    """
    match = re.fullmatch(r"([SAZ])(\d+)", name.strip().upper())
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"unknown group {name!r}; expected S<n>, A<n> or Z<n> with n >= 1")
    return _build_group(match.group(1), int(match.group(2)))


@cache
def _build_group(kind: str, n: int) -> PermutationGroup:
    return _CONSTRUCTORS[kind](n)
