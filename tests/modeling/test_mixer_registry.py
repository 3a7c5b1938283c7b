"""The mixer registry: every kind is built, initialised and dispatched from its own class (modeling/mixers).

A kind that no Triton kernel implements runs the PyTorch path on the Triton backend (never a kernel that raises);
a kind added to the registry needs nothing else to run in a layer, in parallel and token by token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from fpmamba_core import kernels
from fpmamba_core.backbones import Mamba2Layer
from fpmamba_core.mixers import (
    KERNEL_OPS,
    MIXERS,
    ChannelMixer,
    MixerFactors,
    MixerKind,
    apply_mixer,
    kernel_supports,
    mixer_kind,
)
from fpmamba_core.mixers import registry as mixer_registry

from tests.modeling.core import build_layer, mixer_settings, solver_settings


@dataclass
class _ScaledFactors(MixerFactors):
    """coef (...,): the strength times the position's gate."""

    coef: torch.Tensor


class _Scaled(MixerKind):
    """A test kind: Q = I - c g sigmoid(w p + b) I (one gate per position). No kernel implements it."""

    name = "scaled"

    @staticmethod
    def split_sizes(d: int, rank: int) -> list[int]:
        return [1]

    @staticmethod
    def gate_chunks(d: int, rank: int) -> int:
        return 0

    @staticmethod
    def factors(pre, strength, act, d, rank) -> _ScaledFactors:
        return _ScaledFactors("scaled", coef=strength * torch.sigmoid(pre[..., 0]))

    @staticmethod
    def apply(factors: _ScaledFactors, v: torch.Tensor) -> torch.Tensor:
        return v - factors.coef[..., None] * v


@pytest.fixture
def scaled_registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "scaled", _Scaled)
    return _Scaled


@pytest.mark.parametrize("kind", list(MIXERS))
def test_each_kind_builds_and_is_the_identity_at_gain_zero(kind):
    """The projection has the kind's layout; a zero gain makes Q = I exactly (what a Mamba-2 conversion relies on)."""
    torch.manual_seed(0)
    d = 12
    mixer = ChannelMixer(mixer_settings(mixer_type=kind, mixer_rank=2, mixer_reflection_scale=2), d)
    sizes = mixer_kind(kind).split_sizes(d, 2)
    assert (mixer.proj is None) == (not sizes)
    if mixer.proj is not None:
        assert mixer.proj.out_features == sum(sizes)
        with torch.no_grad():
            mixer.gain.zero_()
    x, y = torch.randn(3, 5, d), torch.randn(3, 5, d)
    v = torch.randn(3, 5, d)
    factors = mixer.factors(mixer.precompute(x), y)
    torch.testing.assert_close(apply_mixer(factors, v), v, rtol=0, atol=0)


def test_kernel_support_is_the_kinds_declaration():
    for name, kind in MIXERS.items():
        for op in KERNEL_OPS:
            assert kernel_supports(name, op) == (op in kind.kernel_ops)
            assert (kind.kernel_code is not None) or not kind.kernel_ops, f"{name} names kernels without a code"
    with pytest.raises(ValueError, match="unknown mixer kind 'nope'"):
        kernel_supports("nope", "decode")


@pytest.mark.parametrize("kind", [k for k in MIXERS if not MIXERS[k].kernel_ops] + ["scaled"])
def test_a_kind_without_kernels_takes_the_pytorch_path_on_the_triton_backend(monkeypatch, scaled_registered, kind):
    """FPMAMBA_KERNELS=triton: the fused iteration is not offered and decode_step runs the reference; the kernels
    are replaced by ones that raise, so reaching one fails the test."""
    from fpmamba_core.decode_steps import ssd_decode_step
    from fpmamba_core.ops import decode_triton

    def boom(*args, **kwargs):
        raise AssertionError(f"a Triton kernel ran for mixer {kind!r}")

    monkeypatch.setattr(decode_triton, "decode_step_triton", boom)
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    x = torch.randn(2, 4, 16)
    assert not kernels.fused_iteration_supported(x, kind)
    b, h, p, n, d = 2, 2, 8, 4, 16
    mixer = ChannelMixer(mixer_settings(mixer_type=kind, mixer_rank=1), d)
    factors = mixer.factors(mixer.precompute(torch.randn(b, d)), torch.randn(b, d))
    args = (torch.randn(b, h, p), torch.randn(b, d), torch.rand(b, h), -torch.rand(h), torch.randn(b, 1, n),
            torch.randn(b, 1, n), torch.randn(h), torch.randn(b, h, p, n), factors, torch.ones(d), 1e-5, d,
            solver_settings(5, 1e-5))
    out = kernels.decode_step(*args)
    ref = ssd_decode_step(*args)
    for field in dataclasses.fields(ref):
        torch.testing.assert_close(getattr(out, field.name), getattr(ref, field.name), rtol=0, atol=0)


def test_a_registered_kind_runs_in_a_layer_parallel_and_token_by_token(scaled_registered):
    """Adding a mixer is its class (and its factor type) plus its registry entry: a Mamba-2 layer with it decodes
    token by token exactly as its parallel forward (fp64, tight tolerance)."""
    assert "scaled" in mixer_registry.MIXERS
    torch.manual_seed(0)
    layer = build_layer(Mamba2Layer, hidden_size=16, state_size=8, head_dim=8, chunk_size=4, fp_tol=1e-12,
                        fp_max_iter_eval=200, mixer_type="scaled").double().eval()
    with torch.no_grad():
        layer.bc_y_proj.weight.normal_(0, 0.05)
    hs = torch.randn(2, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        parallel = layer(hs).out
        state = layer(hs[:, :1], return_state=True).state
        steps = [layer(hs[:, :1]).out]
        for t in range(1, 6):
            out = layer(hs[:, t : t + 1], state=state, return_state=True)
            steps.append(out.out)
            state = out.state
    torch.testing.assert_close(torch.cat(steps, dim=1), parallel, rtol=1e-9, atol=1e-9)
