"""Backend dispatch of the ops: a chunk size the kernels cannot take is refused, not replaced; without triton,
CUDA-bound calls take the PyTorch path (and forcing triton says why it cannot)."""

from __future__ import annotations

import pytest
import torch
from fpmamba_core import kernels


def _scan_args(T: int = 8):
    b, h, p, g, n = 2, 2, 4, 1, 4
    return (torch.randn(b, T, h, p), torch.rand(b, T, h), -torch.rand(h), torch.randn(b, T, g, n),
            torch.randn(b, T, g, n))


@pytest.mark.parametrize("chunk_size", [8, 48, 100, 256])
def test_an_unsupported_chunk_size_is_refused_by_the_kernels(monkeypatch, chunk_size):
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    with pytest.raises(ValueError, match=f"chunk_size={chunk_size} is not supported by the Triton scan kernels"):
        kernels.ssd_scan(*_scan_args(), chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [8, 48, 100])
def test_the_pytorch_path_takes_any_chunk_size(monkeypatch, chunk_size):
    monkeypatch.setenv("FPMAMBA_KERNELS", "reference")
    args = _scan_args(T=13)
    y, H = kernels.ssd_scan(*args, chunk_size=chunk_size)
    y_ref, H_ref = kernels.ssd_scan(*args, chunk_size=64)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(H, H_ref, rtol=1e-5, atol=1e-5)


def test_without_triton_forcing_it_is_refused(monkeypatch):
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    with pytest.raises(ValueError, match="triton is not installed"):
        kernels.backend_for(torch.zeros(1))
    monkeypatch.delenv("FPMAMBA_KERNELS")
    assert kernels.backend_for(torch.zeros(1)) == "reference"
