"""Channel mixers: structure (orthogonal / contractive), application vs dense matrices, near-identity init."""

import pytest
import torch
import torch.nn.functional as F
from fpmamba_core.mixers import (
    MIXER_INPUTS,
    MIXERS,
    ChannelMixer,
    MixerFactors,
    RankOneFactors,
    apply_mixer,
    kronecker_dims,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.modeling.core import mixer_settings


def _dense(factors: MixerFactors, d: int) -> torch.Tensor:
    """Q as a dense matrix (columns = Q e_i), for a single position."""
    eye = torch.eye(d, dtype=torch.float64)
    return torch.stack([apply_mixer(factors, eye[i]) for i in range(d)], dim=1)


def _householder(d, r, alpha, scale):
    u = F.normalize(torch.randn(r, d, dtype=torch.float64), dim=-1)
    return RankOneFactors("householder", u=u, coef=scale * alpha), u


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 12), r=st.integers(1, 4), seed=st.integers(0, 1000))
def test_householder_orthogonal_at_scale_two_alpha_one(d, r, seed):
    torch.manual_seed(seed)
    factors, _ = _householder(d, r, torch.ones(r, dtype=torch.float64), 2.0)
    Q = _dense(factors, d)
    torch.testing.assert_close(Q.T @ Q, torch.eye(d, dtype=torch.float64), rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 12), r=st.integers(1, 4), seed=st.integers(0, 1000))
def test_householder_contractive_at_paper_scale(d, r, seed):
    torch.manual_seed(seed)
    alpha = torch.rand(r, dtype=torch.float64)
    factors, u = _householder(d, r, alpha, 1.0)
    Q = _dense(factors, d)
    assert torch.linalg.matrix_norm(Q, 2) <= 1 + 1e-10
    # One reflection with the paper's scale: ||I - Q|| = alpha < 1 (Theorem 3.1's condition).
    single = RankOneFactors("householder", u=u[:1], coef=alpha[:1])
    assert torch.linalg.matrix_norm(torch.eye(d, dtype=torch.float64) - _dense(single, d), 2) <= alpha[0] + 1e-10


def test_householder_product_order_and_dplr_match_dense():
    d, r = 6, 3
    alpha = torch.rand(r, dtype=torch.float64)
    factors, u = _householder(d, r, alpha, 1.0)
    eye = torch.eye(d, dtype=torch.float64)
    expected = eye.clone()
    for i in range(r):
        expected = expected @ (eye - alpha[i] * torch.outer(u[i], u[i]))
    torch.testing.assert_close(_dense(factors, d), expected)
    dplr = RankOneFactors("dplr", u=u, coef=alpha)
    expected = eye - sum(alpha[i] * torch.outer(u[i], u[i]) for i in range(r))
    torch.testing.assert_close(_dense(dplr, d), expected)


def test_kronecker_matches_dense_and_is_bounded():
    d = 12
    m1, m2 = kronecker_dims(d)
    assert (m1, m2) == (3, 4)
    mixer = ChannelMixer(mixer_settings(mixer_type="kronecker"), d).double()
    factors = mixer.factors(mixer.precompute(torch.randn(d, dtype=torch.float64)), torch.randn(d, dtype=torch.float64))
    K = torch.kron(factors.k1, factors.k2)
    expected = torch.eye(d, dtype=torch.float64) - factors.coef * K
    torch.testing.assert_close(_dense(factors, d), expected)
    assert torch.linalg.matrix_norm(K, 2) <= 1 + 1e-9  # so ||I - Q|| <= c * gain


@pytest.mark.parametrize("kind", [k for k in MIXERS if k != "none"])
@pytest.mark.parametrize("mode", MIXER_INPUTS)
def test_mixer_near_identity_at_init_and_zero_gain_is_identity(kind, mode):
    d = 16
    mixer = ChannelMixer(mixer_settings(mixer_type=kind, mixer_input=mode, mixer_rank=2, mixer_alpha_init=0.05), d)
    x, y = torch.randn(5, d), torch.randn(5, d)
    v = torch.randn(5, d)
    Qv = apply_mixer(mixer.factors(mixer.precompute(x), y), v)
    assert (Qv - v).norm() < 0.5 * v.norm()
    with torch.no_grad():
        mixer.gain.zero_()
    assert torch.equal(apply_mixer(mixer.factors(mixer.precompute(x), y), v), v)


def test_mixer_input_modes_depend_on_y_as_documented():
    d = 8
    x, y1, y2 = torch.randn(d), torch.randn(d), torch.randn(d)
    v = torch.randn(d)
    for mode, depends in (("concat", True), ("sum", True), ("x", False)):
        m = ChannelMixer(mixer_settings(mixer_input=mode, mixer_rank=2, mixer_alpha_init=0.5), d)
        a = apply_mixer(m.factors(m.precompute(x), y1), v)
        b = apply_mixer(m.factors(m.precompute(x), y2), v)
        assert (not torch.allclose(a, b)) == depends, mode
