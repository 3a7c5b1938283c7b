"""Triton decode step == `reference.decode_step` under TRITON_INTERPRET=1 (fp32, tiny shapes): outputs, new
state, per-row iteration counts (rows stop on their own) and residuals, for householder / dplr / none, with
damping + patience, several norm groups and n_groups > 1; plus the dispatch (kronecker falls back)."""

from __future__ import annotations

from _triton_interp import run_interpreted

CASES = [
    # kind, b, h, p, g, n, r, norm_groups, max_iter, tol, damping, patience, coef_scale
    ("householder", 3, 4, 16, 2, 16, 2, 2, 30, 1e-5, 1.0, 5, 0.5),
    ("dplr", 4, 2, 16, 1, 32, 3, 1, 40, 1e-4, 0.9, 2, 1.9),
    ("none", 2, 3, 8, 3, 16, 1, 3, 30, 1e-5, 1.0, 5, 0.5),
    ("householder", 4, 2, 16, 1, 16, 1, 1, 3, 1e-9, 0.7, 1, 0.5),  # every row at the cap
]


def test_decode_matches_reference() -> None:
    code = "from tests.modeling.ops._triton_decode_cases import check_decode\n" + "".join(
        f"check_decode(*{c})\n" for c in CASES
    )
    run_interpreted(code)


def test_layer_decode_and_prefill_triton_equal_reference() -> None:
    """A tiny FPMambaMixer: prefill (scan kernel) then two decode tokens (decode kernel) under
    FPMAMBA_KERNELS=triton equal the reference path; a kronecker decode falls back to the reference."""
    code = """
import os, torch
torch.set_num_threads(1)
from modeling.layer import FPMambaLayerConfig, FPMambaMixer
for kind in ("householder",):
    torch.manual_seed(0)
    cfg = FPMambaLayerConfig(hidden_size=32, state_size=16, head_dim=16, n_groups=2, chunk_size=16,
                             mixer_type=kind, fp_tol=1e-5, fp_max_iter_eval=6)
    layer = FPMambaMixer(cfg, 0).eval()
    with torch.no_grad():
        layer.bc_y_proj.weight.normal_(0, 0.02)
    hs = torch.randn(2, 20, 32)
    mask = torch.ones(2, 20, dtype=torch.long); mask[1, :5] = 0
    steps = torch.randn(2, 2, 32)
    outs = {}
    for backend in ("reference", "triton"):
        os.environ["FPMAMBA_KERNELS"] = backend
        with torch.no_grad():
            o = layer(hs, attention_mask=mask, return_state=True)
            res = [o.out]
            st = o.state
            for t in range(2):
                o2 = layer(steps[:, t:t + 1], state=st, return_state=True)
                res += [o2.out, o2.state.ssm]
                st = o2.state
        outs[backend] = res
    for a, b in zip(outs["triton"], outs["reference"]):
        err = float((a - b).abs().max() / (b.abs().max() + 1e-6))
        assert err < 1e-4, (kind, err)

# kronecker: ops.decode_step must route to the reference (no kernel for it).
from modeling import ops
from modeling.ops import reference
import modeling.ops.decode as dk
dk.decode_step_triton = None  # any use of the kernel would fail
from modeling.fixed_point import SolverSettings
from modeling.mixers import MixerFactors
b, h, p, n, d = 2, 2, 8, 16, 16
k1 = torch.rand(b, 4, 4) * 0.1; k2 = torch.rand(b, 4, 4) * 0.1
fac = MixerFactors("kronecker", k1=k1, k2=k2, coef=torch.ones(b))
args = (torch.randn(b, h, p), torch.randn(b, d), torch.rand(b, h), -torch.rand(h), torch.randn(b, 1, n),
        torch.randn(b, 1, n), torch.randn(h), torch.randn(b, h, p, n), fac, torch.ones(d), 1e-5, d,
        SolverSettings(max_iter=5, tol=1e-5))
os.environ["FPMAMBA_KERNELS"] = "triton"
out = ops.decode_step(*args)
ref = reference.decode_step(*args)
assert all(torch.equal(a, b) for a, b in zip(out, ref))
"""
    run_interpreted(code)
