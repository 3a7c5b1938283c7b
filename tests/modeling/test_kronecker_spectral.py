"""mixer_kron_norm="spectral": every Kronecker factor has spectral norm <= 1 (torch.linalg.matrix_norm(ord=2)), near
1 at open gates; the bound of the top eigenvalue holds where a vector power iteration would fall short."""

import dataclasses

import pytest
import torch
from fpmamba_core.backbones import BACKBONES
from fpmamba_core.mixers import MIXERS, ChannelMixer, top_eigenvalue_bound

from tests.modeling.core import build_layer, mixer_settings

# d_inner (factors m1 x m1 and m2 x m2), mixer input, activation.
CASES = [(12, "concat", "silu"), (30, "sum", "identity"), (49, "concat", "relu"), (7, "x", "tanh")]


@pytest.mark.parametrize("d, mode, act", CASES, ids=[f"d{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_spectral_factors_have_norm_at_most_one(d, mode, act):
    settings = mixer_settings(mixer_type="kronecker", mixer_input=mode, mixer_activation=act,
                              mixer_kron_norm="spectral")
    mixer = ChannelMixer(settings, d).double()
    with torch.no_grad():
        mixer.proj.weight.normal_(std=1.0)
        mixer.proj.bias[-(mixer.split_sizes[2] + mixer.split_sizes[3]):] = 30.0  # gates at 1: ||K|| = ||S / N||
    x, y = torch.randn(64, d, dtype=torch.float64), torch.randn(64, d, dtype=torch.float64)
    with torch.no_grad():
        factors = mixer.factors(mixer.precompute(x), y)
    for k in (factors.k1, factors.k2):
        norms = torch.linalg.matrix_norm(k, ord=2)
        assert float(norms.max()) <= 1.0
        if k.shape[-1] > 1:  # the bound is tight: far nearer 1 than the Frobenius normalisation's lambda / ||S||_F
            assert float(norms[norms > 0].min()) > 0.9


def test_the_bound_holds_at_a_near_degenerate_top_and_at_zero():
    """Top eigenvalues 1 and 0.999 (a vector power iteration converges like 0.999^k) and S = 0."""
    q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    S = q @ torch.diag(torch.tensor([1.0, 0.999, 0.5, 0.2, 0.1, 0.0], dtype=torch.float64)) @ q.T
    bound = top_eigenvalue_bound(S)
    assert 1.0 <= float(bound) <= 6 ** (1 / 128)
    zero = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.isfinite(top_eigenvalue_bound(zero)).all()
    S = S.clone().requires_grad_()
    (grad,) = torch.autograd.grad(top_eigenvalue_bound(S), S)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_the_option_reaches_every_backbones_mixer(backbone):
    """The default keeps today's Frobenius kind (Mamba-2 unchanged); "spectral" reaches the layer's mixer; an unknown
    normalisation, or an option of another kind, is refused."""
    small = dict(hidden_size=16, head_dim=8, state_size=4, mixer_type="kronecker")
    default = build_layer(backbone, **small)
    spectral = build_layer(backbone, **small, mixer_kron_norm="spectral")
    assert default.channel_mixer.spec is MIXERS["kronecker"] and default.channel_mixer.spec.norm == "frobenius"
    assert spectral.channel_mixer.spec.norm == "spectral" and spectral.channel_mixer.spec.name == "kronecker"
    with pytest.raises(ValueError, match="Kronecker normalisation 'rowwise'"):
        build_layer(backbone, **small, mixer_kron_norm="rowwise")
    householder = mixer_settings(mixer_type="householder")
    with pytest.raises(ValueError, match="takes the options"):
        ChannelMixer(dataclasses.replace(householder, options={"kron_norm": "spectral"}), 16)
