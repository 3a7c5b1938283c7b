"""Group tables checked against permutations composed directly."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpmamba_lab.tasks.groups import (
    alternating_group,
    compose,
    cyclic_group,
    get_group,
    symmetric_group,
)

NAMES = ["S3", "A4", "A5", "S5", "Z5", "Z7"]


def sign(p):
    """Permutation sign from its cycle count, independent of inversion counting."""
    seen, cycles = set(), 0
    for start in range(len(p)):
        if start not in seen:
            cycles += 1
            x = start
            while x not in seen:
                seen.add(x)
                x = p[x]
    return (-1) ** (len(p) - cycles)


def test_compose_is_apply_left_first():
    g, h = (1, 2, 0), (0, 2, 1)  # g: 0->1->2->0, h swaps 1 and 2
    assert compose(g, h) == tuple(h[g[x]] for x in range(3)) == (2, 1, 0)


@pytest.mark.parametrize("name,order", [("S3", 6), ("A4", 12), ("A5", 60), ("S5", 120), ("Z5", 5), ("Z7", 7)])
def test_orders(name, order):
    assert get_group(name).order == order


@pytest.mark.parametrize("name", NAMES)
def test_identity_inverse_closure(name):
    g = get_group(name)
    n = g.order
    assert g.elements[0] == tuple(range(g.degree))
    assert len(set(g.elements)) == n
    np.testing.assert_array_equal(g.mul[0], np.arange(n))
    np.testing.assert_array_equal(g.mul[:, 0], np.arange(n))
    for i, j in itertools.product(range(n), repeat=2):
        assert g.elements[g.mul[i, j]] == compose(g.elements[i], g.elements[j])
    for i in range(n):
        assert compose(g.elements[i], g.elements[g.inv[i]]) == g.elements[0]
        assert compose(g.elements[g.inv[i]], g.elements[i]) == g.elements[0]
        # Latin square: each row and column is a permutation of the elements.
        assert sorted(g.mul[i]) == list(range(n)) == sorted(g.mul[:, i])


@pytest.mark.parametrize("name", NAMES)
def test_associativity_full(name):
    mul = get_group(name).mul
    n = len(mul)
    left = mul[mul[:, :, None], np.arange(n)[None, None, :]]  # (a*b)*c
    right = mul[np.arange(n)[:, None, None], mul[None, :, :]]  # a*(b*c)
    np.testing.assert_array_equal(left, right)


def test_abelian():
    assert not get_group("A5").is_abelian()
    assert not get_group("S5").is_abelian()
    assert not get_group("S3").is_abelian()
    assert get_group("Z7").is_abelian()


@pytest.mark.parametrize("n", [3, 4, 5])
def test_alternating_is_all_even_permutations(n):
    a, s = alternating_group(n), symmetric_group(n)
    assert all(sign(p) == 1 for p in a.elements)
    assert s.order == math.factorial(n)
    assert set(a.elements) == {p for p in s.elements if sign(p) == 1}


def test_cyclic_elements_are_shifts():
    z = cyclic_group(6)
    for k, p in enumerate(z.elements):
        assert p == tuple((x + k) % 6 for x in range(6))
    for i, j in itertools.product(range(6), repeat=2):
        assert z.mul[i, j] == (i + j) % 6


def test_get_group_names():
    assert get_group("a5") is get_group("A5")
    for bad in ["B5", "S", "A0", "S5x"]:
        with pytest.raises(ValueError):
            get_group(bad)
    with pytest.raises(ValueError):
        symmetric_group(9)  # too large for a dense table


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.data())
def test_prefix_products_match_direct_composition(name, data):
    g = get_group(name)
    word = data.draw(st.lists(st.integers(0, g.order - 1), min_size=1, max_size=30))
    prefix = g.prefix_products(np.array(word))
    product = g.elements[0]
    for t, idx in enumerate(word):
        product = compose(product, g.elements[idx])
        assert g.elements[prefix[t]] == product
