"""Compile every Triton kernel of the package for an NVIDIA architecture, with no GPU: a check of what the CPU
interpreter cannot see (the real compiler's typing, layouts and shared-memory budget).

The kernels' own Python wrappers are called on CPU tensors at the reference shape (d_model 768 -> 24 heads x 64,
d_state 128), bf16 and fp32, while Triton's launcher is replaced by ahead-of-time compilation for the target
(`--arch 90`: H100/H200) through Triton's bundled ptxas; nothing is launched, so the wrappers' outputs are left
uninitialised and not looked at. Prints one JSON line per compiled kernel variant (name, shared memory bytes) and
fails if a kernel does not compile or needs more shared memory than the architecture has.

    python3 benchmarks/compile_check.py --arch 90             # the installed Triton
    PYTHONPATH=/path/to/triton-3.6 python3 benchmarks/compile_check.py --arch 90   # another Triton version
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Opt-in shared memory per block (bytes) by compute capability.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


class _CompileOnlyDriver:
    """Just enough of Triton's driver for `JITFunction.run(warmup=True)`: a device, a stream, a target."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _install(arch: int, compiled: list[dict]) -> None:
    """Routes every kernel launch to an ahead-of-time compile for `arch`, recorded in `compiled`."""
    import triton
    from triton.runtime.jit import JITFunction

    triton.runtime.driver.set_active(_CompileOnlyDriver(arch))
    real_run = JITFunction.run
    seen: set[int] = set()

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = real_run(self, *args, grid=grid, warmup=True, **kwargs)
        if id(kernel) in seen:  # a cached variant
            return kernel
        seen.add(id(kernel))
        shared = int(kernel.metadata.shared)
        compiled.append({"kernel": self.fn.__name__, "module": self.fn.__module__.rsplit(".", 1)[-1],
                         "num_warps": int(kernel.metadata.num_warps), "shared_bytes": shared})
        if shared > SHARED_LIMIT.get(arch, SHARED_LIMIT[90]):
            raise RuntimeError(f"{self.fn.__name__} needs {shared} bytes of shared memory (sm_{arch} limit)")
        return kernel

    JITFunction.run = compile_only


def _scan_variants(dtype: torch.dtype) -> None:
    from fpmamba_core.ops.ssd_scan_triton import ssd_scan_triton

    b, T, h, p, g, n = 1, 256, 24, 64, 1, 128
    x = torch.randn(b, T, h, p, dtype=dtype, requires_grad=True)
    dt = torch.rand(b, T, h, dtype=dtype, requires_grad=True)
    A = -torch.rand(h, requires_grad=True)
    B = torch.randn(b, T, g, n, dtype=dtype, requires_grad=True)
    C = torch.randn(b, T, g, n, dtype=dtype, requires_grad=True)
    D = torch.randn(h, requires_grad=True)
    h0 = torch.randn(b, h, p, n, requires_grad=True)
    mask = torch.ones(b, T, dtype=torch.bool)
    for initial, m in ((None, None), (h0, mask)):
        y, hT = ssd_scan_triton(x, dt, A, B, C, D, initial, m, 64)
        (y.sum() + hT.sum()).backward()


def _selective_variants(dtype: torch.dtype) -> None:
    from fpmamba_core.ops.selective_scan_triton import selective_scan_triton

    b, T, d, n = 1, 256, 1536, 16  # Mamba-1 at d_model 768: d_inner 1536, d_state 16
    x = torch.randn(b, T, d, dtype=dtype, requires_grad=True)
    dt = torch.rand(b, T, d, dtype=dtype, requires_grad=True)
    A = -torch.rand(d, n, requires_grad=True)
    B = torch.randn(b, T, n, dtype=dtype, requires_grad=True)
    C = torch.randn(b, T, n, dtype=dtype, requires_grad=True)
    D = torch.randn(d, requires_grad=True)
    h0 = torch.randn(b, d, n, requires_grad=True)
    mask = torch.ones(b, T, dtype=torch.bool)
    for initial, m in ((None, None), (h0, mask)):
        y, hT = selective_scan_triton(x, dt, A, B, C, D, initial, m)
        (y.sum() + hT.sum()).backward()


def _diag_variants(dtype: torch.dtype) -> None:
    from fpmamba_core.ops.diagonal_scan_triton import diag_scan_triton

    b, T, d = 1, 256, 768  # the FP-RNN at d_model 768
    lam = torch.rand(b, T, d, dtype=dtype, requires_grad=True)
    u = torch.randn(b, T, d, dtype=dtype, requires_grad=True)
    h0 = torch.randn(b, d, requires_grad=True)
    mask = torch.ones(b, T, dtype=torch.bool)
    for initial, m in ((None, None), (h0, mask)):
        h, hT = diag_scan_triton(lam, u, initial, m, 64)
        (h.sum() + hT.sum()).backward()


def _decode_variants() -> None:
    from fpmamba_core.kernels import decode_step_kernel
    from fpmamba_core.mixers import MixerFactors, RankOneFactors

    from fpmamba_hf.configuration_fpmamba import FPMambaConfig
    from fpmamba_hf.core_settings import fixed_point_settings

    b, h, p, g, n, r = 2, 24, 64, 1, 128, 2
    d = h * p
    for kind in ("householder", "dplr", "none"):
        factors = MixerFactors("none") if kind == "none" else RankOneFactors(
            kind, u=torch.randn(b, r, d), coef=torch.rand(b, r))
        try:
            decode_step_kernel(torch.randn(b, h, p), torch.randn(b, d), torch.rand(b, h), -torch.rand(h),
                               torch.randn(b, g, n), torch.randn(b, g, n), torch.randn(h),
                               torch.randn(b, h, p, n), factors, torch.ones(d), 1e-5, d,
                               fixed_point_settings(FPMambaConfig()).solve_settings(16, 1e-2))
        except FloatingPointError:
            pass  # its NaN check read the uninitialised outputs of kernels that were only compiled


def _fused_variants(weight_dtype: torch.dtype) -> None:
    from fpmamba_core.backbones import Mamba2Layer

    from fpmamba_hf.configuration_fpmamba import FPMambaConfig
    from fpmamba_hf.core_settings import fixed_point_settings, layer_settings

    os.environ["FPMAMBA_KERNELS"] = "triton"
    for kind, extra in (("householder", {}), ("dplr", {"dt_hidden_dependence": True}), ("none", {})):
        cfg = FPMambaConfig(hidden_size=768, state_size=128, head_dim=64, mixer_type=kind, mixer_rank=2,
                                 fp_max_iter_eval=1, **extra)
        layer = Mamba2Layer(layer_settings(cfg), fixed_point_settings(cfg), 0).eval().to(weight_dtype)
        with torch.no_grad():
            try:
                layer(torch.randn(1, 128, 768, dtype=weight_dtype), attention_mask=torch.ones(1, 128))
            except (FloatingPointError, RuntimeError) as e:  # outputs of compiled-only kernels are garbage
                if "shared memory" in str(e):
                    raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (this compiles for the GPU)")
    import triton

    os.environ["FPMAMBA_KERNEL_SELFCHECK"] = "0"  # compile-only launches return garbage: nothing to self-check
    compiled: list[dict] = []
    _install(args.arch, compiled)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        _scan_variants(dtype)
        _selective_variants(dtype)
        _diag_variants(dtype)
        _fused_variants(dtype)
    _decode_variants()
    for entry in compiled:
        print(json.dumps(entry))
    names = sorted({e["kernel"] for e in compiled})
    print(json.dumps({"triton": triton.__version__, "arch": args.arch, "variants": len(compiled), "kernels": names}))


if __name__ == "__main__":
    import torch

    main()
