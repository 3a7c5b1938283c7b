"""GPU correctness check of the Triton kernels against the PyTorch reference, at full shapes (run on a GPU).

    python benchmarks/gpu_check.py [--quick]

Relative RMS error ||out - ref|| / ||ref|| for every output and gradient; limits: fp32 1e-4, bf16 5e-3.
Sections: SSD scan (forward + backward; masks, initial state, n_groups > 1, ragged lengths), the Mamba-1
selective scan and the FP-RNN diagonal scan (forward + backward against their chunked PyTorch forms; masks, initial
state, ragged lengths), decode step (householder / dplr / none), Mamba2Layer layer forward + backward, whole-model
logits, and the loss curve of a few training steps (triton vs reference from the same initialisation).
Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fpmamba_core.ops.ssd_scan_reference import ssd_scan_chunked  # noqa: E402
from fpmamba_core.ops.ssd_scan_triton import ssd_scan_triton  # noqa: E402

LIMITS = {torch.float32: 1e-4, torch.bfloat16: 5e-3}
DEVICE = "cuda"  # the selective / diagonal scan sections run on it (a CPU run needs TRITON_INTERPRET=1)
FAILED: list[str] = []


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def check(name: str, out: torch.Tensor, ref: torch.Tensor, limit: float) -> None:
    finite = bool(torch.isfinite(out).all())
    err = rel_rms(out, ref) if finite else float("nan")
    ok = finite and err <= limit
    if not ok:
        FAILED.append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name:<60} rel_rms={err:.2e} (limit {limit:.0e})", flush=True)


def scan_case(b, T, h, p, g, n, dtype, h0: bool, masked: bool, chunk: int = 64) -> None:
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(T * 7 + h)
    r = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
    x = r(b, T, h, p).to(dtype)
    dt = torch.nn.functional.softplus(r(b, T, h) - 2).to(dtype)
    A = -torch.rand(h, device=dev, generator=gen) * 4 - 0.5
    B = torch.nn.functional.normalize(r(b, T, g, n), dim=-1).to(dtype)
    C = torch.nn.functional.normalize(r(b, T, g, n), dim=-1).to(dtype)
    D = r(h)
    H0 = r(b, h, p, n) * 0.3 if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool, device=dev)
        mask[0, : T // 3] = False  # left padding
    leaves_t = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, D)]
    leaves_r = [t.float().clone().requires_grad_(True) for t in (x, dt, A, B, C, D)]
    h0_t = H0.clone().requires_grad_(True) if h0 else None
    h0_r = H0.clone().requires_grad_(True) if h0 else None
    y_t, hT_t = ssd_scan_triton(*leaves_t, h0_t, mask, chunk)
    y_r, hT_r = ssd_scan_chunked(*leaves_r, h0_r, mask, chunk)
    gy, gh = torch.randn_like(y_r), torch.randn_like(hT_r)
    ins_t = leaves_t + ([h0_t] if h0 else [])
    ins_r = leaves_r + ([h0_r] if h0 else [])
    grads_t = torch.autograd.grad((y_t * gy).sum() + (hT_t * gh).sum(), ins_t)
    grads_r = torch.autograd.grad((y_r * gy).sum() + (hT_r * gh).sum(), ins_r)
    tag = f"scan {str(dtype)[6:]} b{b} T{T} h{h} p{p} g{g} n{n}{' h0' if h0 else ''}{' mask' if masked else ''}"
    lim = LIMITS[dtype]
    check(f"{tag} y", y_t, y_r, lim)
    check(f"{tag} final_state", hT_t, hT_r, lim)
    for nm, gt, gr in zip(["dx", "ddt", "dA", "dB", "dC", "dD", "dh0"], grads_t, grads_r):
        check(f"{tag} {nm}", gt.float(), gr, lim)


def scan_section(quick: bool) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        scan_case(8, 2048, 24, 64, 1, 128, dtype, h0=False, masked=False)
        scan_case(8, 2048, 24, 64, 1, 128, dtype, h0=True, masked=True)
        if not quick:
            scan_case(2, 300, 8, 64, 4, 64, dtype, h0=True, masked=True)
            scan_case(3, 1, 4, 32, 2, 16, dtype, h0=True, masked=False)
            scan_case(2, 8192, 24, 64, 1, 128, dtype, h0=False, masked=False)


def _leaves(tensors, dtype):
    """Kernel leaves in `dtype` (None kept) and reference leaves: fp32 copies of the same values."""
    ker = [None if t is None else t.to(dtype).clone().requires_grad_(True) for t in tensors]
    ref = [None if t is None else t.float().clone().requires_grad_(True) for t in ker]
    return ker, ref


def _grads(out, final, leaves, gy, gh):
    present = [t for t in leaves if t is not None]
    return torch.autograd.grad((out * gy).sum() + (final * gh).sum(), present)


def selective_case(b, T, d, n, dtype, h0: bool, masked: bool, chunk: int = 64) -> None:
    from fpmamba_core.ops.selective_scan_reference import selective_scan_chunked
    from fpmamba_core.ops.selective_scan_triton import selective_scan_triton

    gen = torch.Generator(device=DEVICE).manual_seed(T * 5 + d)
    r = lambda *s: torch.randn(*s, device=DEVICE, generator=gen)  # noqa: E731
    x, dt = r(b, T, d), torch.nn.functional.softplus(r(b, T, d) - 2)
    A = -torch.exp(r(d, n) * 0.5)  # Mamba-1's A = -exp(A_log)
    B, C, D = r(b, T, n), r(b, T, n), r(d)
    H0 = r(b, d, n) * 0.3 if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool, device=DEVICE)
        mask[0, : T // 3] = False  # left padding
    # A, D and the initial state stay fp32 (parameters / the fp32 state); the activations take `dtype`.
    ker, ref = _leaves((x, dt, B, C), dtype)
    ker_p, ref_p = _leaves((A, D, H0), torch.float32)
    (xk, dtk, Bk, Ck), (Ak, Dk, H0k) = ker, ker_p
    (xr, dtr, Br, Cr), (Ar, Dr, H0r) = ref, ref_p
    y_t, hT_t = selective_scan_triton(xk, dtk, Ak, Bk, Ck, Dk, H0k, mask, chunk)
    y_r, hT_r = selective_scan_chunked(xr, dtr, Ar, Br, Cr, Dr, H0r, mask)
    gy, gh = torch.randn_like(y_r), torch.randn_like(hT_r)
    grads_t = _grads(y_t, hT_t, (xk, dtk, Ak, Bk, Ck, Dk, H0k), gy, gh)
    grads_r = _grads(y_r, hT_r, (xr, dtr, Ar, Br, Cr, Dr, H0r), gy, gh)
    tag = f"selective {str(dtype)[6:]} b{b} T{T} d{d} n{n}{' h0' if h0 else ''}{' mask' if masked else ''}"
    lim = LIMITS[dtype]
    check(f"{tag} y", y_t, y_r, lim)
    check(f"{tag} final_state", hT_t, hT_r, lim)
    for nm, gt, gr in zip(["dx", "ddt", "dA", "dB", "dC", "dD", "dh0"], grads_t, grads_r):
        check(f"{tag} {nm}", gt.float(), gr, lim)


def selective_section(quick: bool) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        selective_case(4, 2048, 1536, 16, dtype, h0=False, masked=False)
        selective_case(4, 2048, 1536, 16, dtype, h0=True, masked=True)
        if not quick:
            selective_case(2, 300, 100, 8, dtype, h0=True, masked=True, chunk=16)
            selective_case(3, 1, 40, 16, dtype, h0=True, masked=False)


def diag_case(b, T, d, dtype, h0: bool, masked: bool, chunk: int = 64) -> None:
    from fpmamba_core.ops.diagonal_scan_reference import diag_scan_chunked
    from fpmamba_core.ops.diagonal_scan_triton import diag_scan_triton

    gen = torch.Generator(device=DEVICE).manual_seed(T * 3 + d)
    r = lambda *s: torch.randn(*s, device=DEVICE, generator=gen)  # noqa: E731
    lam = torch.sigmoid(r(b, T, d) + 1)  # decays in (0, 1), as the FP-RNN's
    u = r(b, T, d)
    H0 = r(b, d) if h0 else None
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.bool, device=DEVICE)
        mask[0, : T // 3] = False  # left padding
    (lk, uk), (lr, ur) = _leaves((lam, u), dtype)
    (hk,), (hr,) = _leaves((H0,), torch.float32)
    h_t, hT_t = diag_scan_triton(lk, uk, hk, mask, chunk)
    h_r, hT_r = diag_scan_chunked(lr, ur, hr, mask, chunk)
    gy, gh = torch.randn_like(h_r), torch.randn_like(hT_r)
    grads_t = _grads(h_t, hT_t, (lk, uk, hk), gy, gh)
    grads_r = _grads(h_r, hT_r, (lr, ur, hr), gy, gh)
    tag = f"diag {str(dtype)[6:]} b{b} T{T} d{d} chunk{chunk}{' h0' if h0 else ''}{' mask' if masked else ''}"
    lim = LIMITS[dtype]
    check(f"{tag} h", h_t, h_r, lim)
    check(f"{tag} final_state", hT_t, hT_r, lim)
    for nm, gt, gr in zip(["dlam", "du", "dh0"], grads_t, grads_r):
        check(f"{tag} {nm}", gt.float(), gr, lim)


def diag_section(quick: bool) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        diag_case(8, 2048, 1536, dtype, h0=False, masked=False)
        diag_case(8, 2048, 1536, dtype, h0=True, masked=True)
        if not quick:
            diag_case(2, 300, 100, dtype, h0=True, masked=True, chunk=16)
            diag_case(3, 1, 40, dtype, h0=True, masked=False, chunk=128)


def decode_section() -> None:
    try:
        from fpmamba_core.kernels import decode_step_kernel
    except ImportError as e:
        print(f"skip decode: {e}")
        return
    from dataclasses import replace

    from fpmamba_core.decode_steps import ssd_decode_step
    from fpmamba_core.mixers import MixerFactors, RankOneFactors

    from fpmamba_hf.configuration_fpmamba import FPMambaConfig
    from fpmamba_hf.core_settings import fixed_point_settings

    dev = "cuda"
    for kind in ("householder", "dplr", "none"):
        for b in (1, 32):
            torch.manual_seed(b)
            h, p, n, g, r = 24, 64, 128, 1, 2
            d = h * p
            x = torch.randn(b, h, p, device=dev)
            z = torch.randn(b, d, device=dev)
            dt = torch.nn.functional.softplus(torch.randn(b, h, device=dev) - 2)
            A = -torch.rand(h, device=dev) * 4 - 0.5
            B = torch.nn.functional.normalize(torch.randn(b, g, n, device=dev), dim=-1)
            C = torch.nn.functional.normalize(torch.randn(b, g, n, device=dev), dim=-1)
            D = torch.randn(h, device=dev)
            state = torch.randn(b, h, p, n, device=dev) * 0.3
            u = torch.nn.functional.normalize(torch.randn(b, r, d, device=dev), dim=-1)
            coef = torch.rand(b, r, device=dev) * 0.5
            factors = MixerFactors(kind) if kind == "none" else RankOneFactors(kind, u=u, coef=coef)
            w = torch.rand(d, device=dev) + 0.5
            st = replace(fixed_point_settings(FPMambaConfig()).solve_settings(64, 1e-5), damping=0.9,
                         damping_patience=3)
            args = (x, z, dt, A, B, C, D, state, factors, w, 1e-5, d)
            out_t = decode_step_kernel(*args, st)
            out_r = ssd_decode_step(*args, st)
            tag = f"decode {kind} b{b}"
            for nm in ("y_out", "y_star", "state"):
                check(f"{tag} {nm}", getattr(out_t, nm), getattr(out_r, nm), 1e-4)
            same_it = bool((out_t.iterations == out_r.iterations).all())
            print(f"{'ok  ' if same_it else 'NOTE'} {tag} iterations triton={out_t.iterations.tolist()[:4]} "
                  f"reference={out_r.iterations.tolist()[:4]}", flush=True)


def layer_section() -> None:
    from fpmamba_core.backbones import Mamba2Layer

    from fpmamba_hf.configuration_fpmamba import FPMambaConfig
    from fpmamba_hf.core_settings import fixed_point_settings, layer_settings

    torch.manual_seed(0)
    cfg = FPMambaConfig(hidden_size=768, state_size=128, head_dim=64, mixer_type="householder", mixer_rank=2,
                             fp_max_iter=4, fp_tol=1e-3)
    layer = Mamba2Layer(layer_settings(cfg), fixed_point_settings(cfg), 0).cuda()
    hs = torch.randn(4, 512, 768, device="cuda")
    outs = {}
    for backend in ("reference", "triton"):
        os.environ["FPMAMBA_KERNELS"] = backend
        layer.zero_grad()
        o = layer(hs)
        o.out.square().mean().backward()
        outs[backend] = (o.out.detach(), [p.grad.clone() for p in layer.parameters() if p.grad is not None])
    check("layer fp32 out", outs["triton"][0], outs["reference"][0], 1e-4)
    for i, (gt, gr) in enumerate(zip(outs["triton"][1], outs["reference"][1])):
        check(f"layer fp32 grad[{i}]", gt, gr, 1e-3)
    # Inference at the reference shape with bf16 weights: the fused iterations (bf16 GEMM of every y-projection).
    layer = layer.to(torch.bfloat16).eval()
    hs = torch.randn(8, 2048, 768, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for backend in ("reference", "triton"):
            os.environ["FPMAMBA_KERNELS"] = backend
            outs[backend] = layer(hs, fp_max_iter=6, fp_tol=1e-12).out.float()
    check("layer bf16 inference out (6 fused iterations)", outs["triton"], outs["reference"], 5e-3)
    os.environ.pop("FPMAMBA_KERNELS")


def model_section() -> None:
    from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

    torch.manual_seed(0)
    cfg = FPMambaConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, state_size=64, head_dim=64)
    model = FPMambaForCausalLM(cfg).cuda().eval()
    ids = torch.randint(0, 1000, (2, 300), device="cuda")
    logits = {}
    with torch.no_grad():
        for backend in ("reference", "triton"):
            os.environ["FPMAMBA_KERNELS"] = backend
            logits[backend] = model(ids, fp_max_iter=8, fp_tol=1e-4).logits.float()
    os.environ.pop("FPMAMBA_KERNELS")
    check("model fp32 logits", logits["triton"], logits["reference"], 1e-4)


def train_section() -> None:
    """A few AdamW steps from the same init on each backend: the loss curves must agree."""
    from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

    torch.manual_seed(0)
    cfg = FPMambaConfig(vocab_size=512, hidden_size=256, num_hidden_layers=2, state_size=64, head_dim=64,
                        fp_max_iter=8, fp_tol=1e-3)
    init = FPMambaForCausalLM(cfg).state_dict()
    ids = torch.randint(0, 512, (4, 256), device="cuda")
    curves = {}
    for backend in ("reference", "triton"):
        os.environ["FPMAMBA_KERNELS"] = backend
        model = FPMambaForCausalLM(cfg)
        model.load_state_dict(init)
        model.cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(6):
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves[backend] = torch.tensor(losses)
    os.environ.pop("FPMAMBA_KERNELS")
    print(f"     train losses triton={[round(v, 5) for v in curves['triton'].tolist()]}", flush=True)
    print(f"     train losses reference={[round(v, 5) for v in curves['reference'].tolist()]}", flush=True)
    check("train fp32 loss curve (6 AdamW steps)", curves["triton"], curves["reference"], 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", nargs="+",
                    default=["scan", "selective", "diag", "decode", "layer", "model", "train"])
    args = ap.parse_args()
    sections = {"scan": lambda: scan_section(args.quick), "selective": lambda: selective_section(args.quick),
                "diag": lambda: diag_section(args.quick), "decode": decode_section, "layer": layer_section,
                "model": model_section, "train": train_section}
    for s in args.sections:
        try:
            sections[s]()
        except Exception as e:  # report and go on: one broken section must not hide the others
            FAILED.append(s)
            print(f"FAIL section {s}: {type(e).__name__}: {e}", flush=True)
    print(f"\n{len(FAILED)} failed: {FAILED}" if FAILED else "\nall checks passed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
