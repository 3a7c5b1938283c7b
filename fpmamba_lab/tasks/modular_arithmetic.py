"""Modular arithmetic with brackets, mod 5 (docs/method.md, "Modular arithmetic").

Vocabulary (12 tokens): digits ``0..4`` are ids ``0..4``; then ``+``=5, ``-``=6,
``*``=7, ``(``=8, ``)``=9, ``=``=10 and PAD=11. There is no BOS.

Expressions are generated recursively to an exact token length ``L`` (after
Deletang et al. 2023): ``L = 1..4`` give the leaves ``n``, ``-n``, ``(n)``,
``(-n)``; ``L >= 5`` gives ``( left op right )`` with ``op`` uniform in
``+ - *`` and ``len(left) + len(right) = L - 3``. Every binary operation is
bracketed, so the generated strings never depend on precedence.

Semantics (used by :func:`evaluate`, identical to Python's ``eval`` followed by
``% 5``): unary minus applies to the following factor and binds tightest, ``*``
binds tighter than binary ``+``/``-``, binary operators are left-associative,
and the result is taken mod 5 in ``0..4``. Since reduction mod 5 is a ring
homomorphism, reducing at every step gives the same result as reducing once.

Rows (aligned targets, right padding), for an expression ``e_1 .. e_L`` with value ``r``::

    input_ids    = [e_1,  ..., e_L,  =,    r,    PAD, ...]
    shift_labels = [-100, ..., -100, r,    -100, -100, ...]   # only the output at "=" is supervised
    length       = L   (expression tokens; the sequence has L + 2 real tokens)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ._common import IGNORE_INDEX, cached, make_dataset, pad_rows, row_width, sequences_correct

MODULUS = 5
PLUS_ID, MINUS_ID, TIMES_ID, LPAREN_ID, RPAREN_ID, EQUALS_ID, PAD_ID = range(MODULUS, MODULUS + 7)
VOCAB_SIZE = MODULUS + 7
# Chance level for a uniform guess among 5 residues; see scaled_accuracy.
CHANCE = 1 / MODULUS

_CHARS = "01234+-*()=_"  # index = token id; "_" is PAD
_OPS = (PLUS_ID, MINUS_ID, TIMES_ID)


def encode(text: str) -> list[int]:
    """Token ids of a string such as ``"(3*-2)=4"`` (whitespace ignored)."""
    return [_CHARS.index(c) for c in text if not c.isspace()]


def decode(ids: Sequence[int]) -> str:
    """Inverse of :func:`encode`."""
    return "".join(_CHARS[int(i)] for i in ids)


def generate_expression(length: int, rng: random.Random) -> tuple[list[int], int]:
    """A random bracketed expression of exactly ``length`` tokens and its value mod 5."""
    if length < 1:
        raise ValueError(f"expression length must be >= 1, got {length}")
    if length <= 4:
        n = rng.randrange(MODULUS)
        negate = length in (2, 4)
        leaf = [MINUS_ID, n] if negate else [n]
        tokens = [LPAREN_ID, *leaf, RPAREN_ID] if length >= 3 else leaf
        return tokens, (-n if negate else n) % MODULUS
    left_len = rng.randint(1, length - 4)
    left, a = generate_expression(left_len, rng)
    right, b = generate_expression(length - 3 - left_len, rng)
    op = rng.choice(_OPS)
    value = a + b if op == PLUS_ID else a - b if op == MINUS_ID else a * b
    return [LPAREN_ID, *left, op, *right, RPAREN_ID], value % MODULUS


def evaluate(tokens: Sequence[int] | str) -> int:
    """Value mod 5 of an expression (token ids or a string), by recursive descent.

    Grammar: ``expr := term (("+"|"-") term)*``, ``term := factor ("*" factor)*``,
    ``factor := "-" factor | digit | "(" expr ")"``. Raises ``ValueError`` on
    malformed input.
    """
    toks = encode(tokens) if isinstance(tokens, str) else [int(t) for t in tokens]
    pos = 0

    def peek() -> int | None:
        return toks[pos] if pos < len(toks) else None

    def take(expected: int | None = None) -> int:
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"unexpected token at {pos} in {decode(toks)!r}")
        pos += 1
        return tok

    def expr() -> int:
        value = term()
        while peek() in (PLUS_ID, MINUS_ID):
            sign = 1 if take() == PLUS_ID else -1
            value = value + sign * term()
        return value % MODULUS

    def term() -> int:
        value = factor()
        while peek() == TIMES_ID:
            take()
            value = value * factor() % MODULUS
        return value

    def factor() -> int:
        tok = take()
        if tok == MINUS_ID:
            return -factor() % MODULUS
        if tok == LPAREN_ID:
            value = expr()
            take(RPAREN_ID)
            return value
        if tok < MODULUS:
            return tok
        raise ValueError(f"unexpected token at {pos - 1} in {decode(toks)!r}")

    result = expr()
    if pos != len(toks):
        raise ValueError(f"trailing tokens at {pos} in {decode(toks)!r}")
    return result


def modular_arithmetic_dataset(
    num_examples: int,
    min_length: int,
    max_length: int,
    seed: int,
    pad_to: int | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Expressions with token length uniform in ``[min_length, max_length]``.

    ``pad_to`` defaults to ``max_length + 2`` (expression, ``=``, result).
    """
    width = row_width(min_length, max_length, max_length + 2, pad_to)

    def build() -> datasets.Dataset:
        rng = random.Random(seed)
        rows, label_rows, lengths = [], [], []
        for _ in range(num_examples):
            length = rng.randint(min_length, max_length)
            tokens, value = generate_expression(length, rng)
            rows.append([*tokens, EQUALS_ID, value])
            label_rows.append([IGNORE_INDEX] * length + [value])
            lengths.append(length)
        lengths_arr = np.array(lengths, dtype=np.int64)
        input_ids = pad_rows(rows, width, PAD_ID)
        labels = pad_rows(label_rows, width, IGNORE_INDEX)
        return make_dataset(input_ids, labels, lengths_arr)

    params = {"n": num_examples, "min_length": min_length, "max_length": max_length,
              "seed": seed, "pad_to": width}
    return cached(cache_dir, "modular_arithmetic", params, build)


def scaled_accuracy(accuracy: float) -> float:
    """``(acc - 0.2) / 0.8``: 1 is perfect, 0 is chance (1/5).

    This is our reading of the paper's "scaled accuracy"; the exact formula is
    uncertain (docs/method.md, "Modular arithmetic").
    """
    return (accuracy - CHANCE) / (1 - CHANCE)


def modular_arithmetic_metrics(pred_ids: Any, labels: Any) -> dict[str, float]:
    """``acc`` over supervised (result) positions and ``scaled_acc``, from aligned ``(N, T)`` arrays."""
    correct, supervised = sequences_correct(pred_ids, labels)
    accuracy = float(correct[supervised].mean())
    return {"acc": accuracy, "scaled_acc": scaled_accuracy(accuracy)}
