"""Fused-iteration checks, executed under TRITON_INTERPRET=1 (see _triton_interp.py).

The reference is the layer's own composed map: the iteration function `f` a layer hands the solver runs the
fused kernels without autograd and the composed PyTorch code with it, so one captured `f` evaluated both ways on
the same iterate compares the two paths exactly where they differ.
"""

from __future__ import annotations

import os

import torch

import modeling.layer as layer_module
from modeling.fixed_point import relative_residual
from modeling.layer import FPMambaLayerConfig, FPMambaMixer, LayerState


def _layer(seed: int, **overrides) -> FPMambaMixer:
    torch.manual_seed(seed)
    cfg = dict(hidden_size=32, state_size=16, head_dim=8, n_groups=2, chunk_size=16, mixer_rank=2,
               mixer_reflection_scale=2, fp_tol=1e-6, fp_max_iter=4, fp_max_iter_eval=4)
    cfg.update(overrides)
    layer = FPMambaMixer(FPMambaLayerConfig(**cfg), 0)
    with torch.no_grad():  # y-projections away from their zero initialisation, so every y-path matters
        layer.bc_y_proj.weight.normal_(0, 0.1)
        if layer.dt_y_proj is not None:
            layer.dt_y_proj.weight.normal_(0, 0.1)
        layer.dt_bias.add_(torch.randn_like(layer.dt_bias))
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def _capture_f(layer: FPMambaMixer, *args, **kwargs):
    """Runs the layer once and returns the iteration function it handed the solver."""
    captured = []
    real = layer_module.solve

    def spy(f, *a, **k):
        captured.append(f)
        return real(f, *a, **k)

    layer_module.solve = spy
    try:
        layer(*args, **kwargs)
    finally:
        layer_module.solve = real
    return captured[0]


def _close(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = float((got - ref).abs().max() / (ref.abs().max() + 1e-6))
    assert err < tol, f"{name}: relative max error {err:.2e}"


def check_fused_map(seed: int, b: int, T: int, masked: bool, with_state: bool, **overrides) -> None:
    """f(y) fused (no grad) == f(y) composed (grad), on all rows and on a subset; residual included."""
    os.environ["FPMAMBA_KERNELS"] = "triton"
    layer = _layer(seed, **overrides)
    hs = torch.randn(b, T, layer.config.hidden_size)
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.long)
        mask[0, : T // 3] = 0  # left padding of row 0
    state = None
    if with_state:
        state = LayerState(torch.randn(b, layer.conv_dim, layer.conv_kernel_size),
                           torch.randn(b, layer.num_heads, layer.head_dim, layer.ssm_state_size) * 0.3,
                           torch.randn(b, layer.d_inner))
    f = _capture_f(layer, hs, attention_mask=mask, state=state)
    # The solver passes every row (arange) or a strict subset of them, in order.
    subsets = [torch.arange(b)] + ([torch.tensor([0, b - 1]), torch.tensor([b - 2])] if b > 2 else [])
    for rows in subsets:
        y = torch.randn(rows.numel(), T, layer.d_inner)
        with torch.no_grad():
            yhat, (H,), res = f(y, rows)
        with torch.enable_grad():
            out = f(y, rows)
        assert len(out) == 2, "with autograd the layer must use the composed map"
        ref, (H_ref,) = out
        _close(f"yhat {overrides} rows {rows.tolist()}", yhat, ref.detach())
        _close(f"state {overrides}", H, H_ref.detach())
        _close(f"residual {overrides}", res, relative_residual(ref.detach(), y, 1e-6), 1e-4)


def check_layer_solve(seed: int, **overrides) -> None:
    """A whole layer forward (no grad): Triton (fused iterations + scan) == reference, with equal per-row
    iteration counts under a tolerance stop, rows stopping at different iterations."""
    layer = _layer(seed, fp_tol=1e-3, fp_max_iter_eval=40, **overrides).eval()
    hs = torch.randn(3, 21, layer.config.hidden_size)
    hs[1] *= 3.0  # rows of different difficulty
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[2, :4] = 0
    outs = {}
    for backend in ("reference", "triton"):
        os.environ["FPMAMBA_KERNELS"] = backend
        with torch.no_grad():
            outs[backend] = layer(hs, attention_mask=mask, return_state=True)
    t, r = outs["triton"], outs["reference"]
    assert torch.equal(t.iterations, r.iterations), f"iterations {t.iterations.tolist()} != {r.iterations.tolist()}"
    _close("layer output", t.out, r.out, 1e-4)
    _close("final state", t.state.ssm, r.state.ssm, 1e-4)
    _close("last y*", t.state.y_prev, r.state.y_prev, 1e-4)


def check_nan_reported() -> None:
    """A non-finite iterate makes the fused residual NaN, and the solver raises naming the layer."""
    os.environ["FPMAMBA_KERNELS"] = "triton"
    layer = _layer(0)
    f = _capture_f(layer, torch.randn(2, 5, 32))
    y = torch.randn(2, 5, layer.d_inner)
    y[1, 3, 7] = float("nan")
    with torch.no_grad():
        _, _, res = f(y, torch.arange(2))
    assert torch.isfinite(res[0]) and torch.isnan(res[1]), res
    with torch.no_grad():
        layer.out_proj.weight.fill_(float("nan"))
        layer.in_proj.weight[:5].fill_(float("inf"))
    try:
        layer(torch.randn(2, 5, 32))
    except FloatingPointError as e:
        assert "layer 0" in str(e), e
    else:
        raise AssertionError("a non-finite iteration must raise FloatingPointError")


def check_layer_training_step(seed: int, **overrides) -> None:
    """Training mode (fused iterations without autograd, then the composed one-step application with it):
    loss gradients on the Triton path equal the reference path's."""
    layer = _layer(seed, **overrides).train()
    hs = torch.randn(2, 19, layer.config.hidden_size)
    grads = {}
    for backend in ("reference", "triton"):
        os.environ["FPMAMBA_KERNELS"] = backend
        layer.zero_grad()
        out = layer(hs)
        out.out.square().mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        grads[backend]["iterations"] = out.iterations.float()
    assert grads["triton"].keys() == grads["reference"].keys()
    for name, ref in grads["reference"].items():
        _close(f"grad {name}", grads["triton"][name], ref, 1e-4)
