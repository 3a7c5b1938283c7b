"""backbone="rnn", the vector FP-RNN: the diagonal special case, the exact per-token solve. (Decode == parallel, save,
load and generate: the shared tests, parametrised over every backbone.)"""

import pytest
import torch
import torch.nn.functional as F
from fpmamba_core.backbones import RNNLayer
from fpmamba_core.fixed_point import solve
from fpmamba_core.mixers import MIXERS

from fpmamba_hf.core_settings import fixed_point_settings, layer_settings
from tests.fpmamba_hf.helpers import BACKBONE_SETTINGS, tiny_config
from tests.modeling.core import solver_settings

RNN = dict(backbone="rnn", **BACKBONE_SETTINGS["rnn"])


def _layer(config) -> RNNLayer:
    return RNNLayer(layer_settings(config), fixed_point_settings(config), 0)


def _diagonal_rnn(layer: RNNLayer, hs: torch.Tensor) -> torch.Tensor:
    """The layer's output with Q = I and W_c's h-part at zero, as a loop: h_t = lam_t h_{t-1} + (1 - lam_t) b_t x_t,
    out_t = out_proj(RMSNorm(SiLU(z_t) * SiLU(W_c^x x_t) * h_t)). hs (b, T, hidden) -> (b, T, hidden)."""
    d = layer.d_inner
    x, z = layer.in_proj(hs).split(d, dim=-1)
    lam = torch.sigmoid(layer.lambda_proj(x))
    u = (1 - lam) * F.silu(layer.b_proj(x)) * x
    c = F.silu(x @ layer.c_proj.weight[:, :d].T)
    h, outs = torch.zeros_like(x[:, 0]), []
    for t in range(hs.shape[1]):
        h = lam[:, t] * h + u[:, t]
        v = F.silu(z[:, t]) * c[:, t] * h
        outs.append(layer.out_proj(v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + layer.norm.variance_epsilon)
                                   * layer.norm.weight))
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("mixer_type", ["none", "householder"])
def test_identity_mixer_and_zero_y_projection_is_a_plain_diagonal_rnn(mixer_type):
    layer = _layer(tiny_config(mixer_type=mixer_type, **RNN)).double().eval()
    with torch.no_grad():
        layer.c_proj.weight[:, layer.d_inner:] = 0
        layer.c_proj.weight[:, : layer.d_inner].normal_(std=0.3)
        if mixer_type != "none":
            layer.channel_mixer.gain.zero_()  # Q = I through the gain
    hs = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        out = layer(hs)
        expected = _diagonal_rnn(layer, hs)
    torch.testing.assert_close(out.out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mixer_type", MIXERS)
def test_exact_token_solve_equals_the_iterated_one(mixer_type):
    """decode_token's direct solve of the linear per-token problem == Picard iteration on the same map (fp64)."""
    layer = _layer(tiny_config(mixer_type=mixer_type, **RNN)).double().eval()
    hs = torch.randn(3, 6, 16, dtype=torch.float64)
    tight = solver_settings(2000, 1e-13)
    with torch.no_grad():
        state = layer(hs[:, :5], return_state=True).state
        pre = layer.prelude(hs[:, 5:], None, state)
        exact = layer.decode_token(pre, tight)
        factors = layer.channel_mixer.factors(None if pre.x_part is None else pre.x_part[:, 0], pre.y_prev0)
        iterated = solve(layer.token_map(pre, factors), torch.zeros_like(exact.y_star), tight)
    assert int(iterated.iterations.max()) > 2 or mixer_type == "none"  # the iteration had work to do
    assert exact.iterations.tolist() == [1, 1, 1] and float(exact.residual.max()) < 1e-13
    torch.testing.assert_close(exact.y_star, iterated.y_star, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(exact.state, iterated.y_out, rtol=1e-11, atol=1e-11)
