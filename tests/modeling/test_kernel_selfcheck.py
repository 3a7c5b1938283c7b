"""Kernels that check themselves (`modeling/kernel_selfcheck.py`): the first use of the fused iteration / decode kernel
in a configuration is compared with the PyTorch path; a disagreement (or a raise) warns once and routes that
configuration to the PyTorch path for good.

In this process (no Triton kernel runs: the kernel is replaced by the PyTorch path, perturbed, or made to raise):
the composed map the fused check compares with equals the layer's own composed map; the dispatch of
`kernels.decode_step` and `kernels.fused_iteration_supported` (pass -> kernel; disagreement or raise -> one warning,
the reference, no re-check; FPMAMBA_KERNEL_SELFCHECK=0; one check per key across threads; no check while
compiling).

Under Triton's CPU interpreter (one child process with TRITON_INTERPRET=1 and FPMAMBA_KERNELS=triton, see
`_interpreted`): the real kernels pass their check for householder, dplr and none in fp32 and are then used by a
layer's prefill and decode; a perturbed real kernel fails it, warns once, and the layer's results are the PyTorch
path's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from fpmamba_core.mixers import MIXERS

from tests.closeness import assert_close, assert_equal
from tests.modeling.core import build_layer, solver_settings

ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "FPMAMBA_TEST_SELFCHECK_RESULTS"


# ------------------------------------------------------------------------------------------------------ helpers
def _layer(seed: int, **overrides):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=32, state_size=16, head_dim=8, n_groups=2, chunk_size=16, mixer_rank=2,
               mixer_reflection_scale=2, fp_tol=1e-6, fp_max_iter=2, fp_max_iter_eval=2)
    cfg.update(overrides)
    layer = build_layer("mamba2", **cfg).eval()
    with torch.no_grad():  # y-projections away from zero, so every y-path matters
        layer.bc_y_proj.weight.normal_(0, 0.1)
        if layer.dt_y_proj is not None:
            layer.dt_y_proj.weight.normal_(0, 0.1)
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def _capture_fused(layer, hs, attention_mask=None, state=None):
    """The layer's call reached as objects (no kernel launched): (the FusedIterationInputs it builds on the Triton
    backend, its iteration map, which with autograd is the composed PyTorch map)."""
    mask = None if attention_mask is None else attention_mask.to(torch.bool)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setenv("FPMAMBA_KERNELS", "triton")
        pre = layer.prelude(hs, mask, state)
        settings = layer.solver_settings()
        inputs = layer.fused_inputs(pre, settings)
    from fpmamba_core.backbones import Mamba2Map

    return inputs, Mamba2Map(layer, pre, None)


def _decode_args(kind: str, b: int = 2, seed: int = 0):
    from fpmamba_core.mixers import MixerFactors, RankOneFactors

    gen = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    h, p, g, n, r = 2, 8, 1, 16, 2
    d = h * p
    factors = MixerFactors("none") if kind == "none" else RankOneFactors(
        kind, u=torch.nn.functional.normalize(rn(b, r, d), dim=-1), coef=torch.rand(b, r, generator=gen))
    return (rn(b, h, p), rn(b, d), torch.rand(b, h, generator=gen), -torch.rand(h, generator=gen) - 0.2,
            rn(b, g, n), rn(b, g, n), rn(h), rn(b, h, p, n), factors, torch.ones(d), 1e-5, d,
            solver_settings(5, 1e-4))


class _Counting:
    """A stand-in kernel: calls `fn`, counts calls, optionally perturbs the first output or raises (`fn`: an entry
    point of `kernels`, returning a MapOutput or DecodeResult, or a Triton kernel, returning a tuple)."""

    def __init__(self, fn, perturb: float = 0.0, raises: bool = False, delay: float = 0.0):
        self.fn, self.perturb, self.raises, self.delay, self.calls = fn, perturb, raises, delay, 0

    def __call__(self, *args):
        self.calls += 1
        time.sleep(self.delay)
        if self.raises:
            raise RuntimeError("simulated kernel failure")
        out = self.fn(*args)
        if self.perturb and isinstance(out, tuple):  # a kernel's outputs: yhat or y_out first
            out = (out[0] * (1 + self.perturb), *out[1:])
        elif self.perturb:  # the first field: yhat of a MapOutput, y_out of a DecodeResult
            first = dataclasses.fields(out)[0].name
            out = dataclasses.replace(out, **{first: getattr(out, first) * (1 + self.perturb)})
        return out


@pytest.fixture
def fresh(monkeypatch):
    """Verdicts forgotten before and after; checks on; warnings recorded; FPMAMBA_KERNELS=triton."""
    from fpmamba_core import kernel_selfcheck as selfcheck

    selfcheck.reset()
    monkeypatch.delenv(selfcheck.ENV, raising=False)
    monkeypatch.setenv("FPMAMBA_KERNELS", "triton")
    yield selfcheck
    selfcheck.reset()


def _selfcheck_warnings(record) -> list[str]:
    from fpmamba_core.kernel_selfcheck import KernelSelfCheckWarning

    return [str(w.message) for w in record if issubclass(w.category, KernelSelfCheckWarning)]


# ----------------------------------------------------------------------------------- in this process (no kernel)
MAP_CASES = [
    pytest.param("householder", True, False, {}, id="householder-masked"),
    pytest.param("dplr", False, True, dict(mixer_rank=3, dt_hidden_dependence=True, mixer_activation="tanh"),
                 id="dplr-state-dt_y-tanh"),
    pytest.param("none", False, False, dict(norm_per_group=False), id="none"),
    pytest.param("householder", True, True, dict(mixer_input="sum", mixer_activation="relu", bc_norm=False,
                                                 time_step_limit=(0.01, 0.5)), id="householder-sum-clamp-nobcnorm"),
    pytest.param("dplr", False, False, dict(mixer_input="x", mixer_activation="identity", n_groups=1),
                 id="dplr-input_x"),
]


@pytest.mark.parametrize("kind, masked, with_state, overrides", MAP_CASES)
def test_composed_fused_iteration_equals_layer_map(monkeypatch, kind, masked, with_state, overrides):
    """The check's reference, written from the fused inputs, is the layer's composed map (all rows and a subset)."""
    from fpmamba_core.backbones import LayerState
    from fpmamba_core.fixed_point import relative_residual
    from fpmamba_core.kernel_selfcheck import composed_fused_iteration

    layer = _layer(1, mixer_type=kind, **overrides)
    b, T = 3, 21
    hs = torch.randn(b, T, 32)
    mask = None
    if masked:
        mask = torch.ones(b, T, dtype=torch.long)
        mask[0, :6] = 0
    state = None
    if with_state:
        state = LayerState(torch.randn(b, layer.conv_dim, layer.conv_kernel_size),
                           torch.randn(b, layer.num_heads, layer.head_dim, layer.ssm_state_size) * 0.3,
                           torch.randn(b, layer.d_inner))
    inputs, f = _capture_fused(layer, hs, attention_mask=mask, state=state)
    monkeypatch.setenv("FPMAMBA_KERNELS", "reference")  # the composed map's scan on the reference
    for rows in (torch.arange(b), torch.tensor([0, 2])):
        y = torch.randn(rows.numel(), T, layer.d_inner)
        with torch.no_grad():
            got = composed_fused_iteration(inputs, y, rows)
        yhat, (H,), res = got.yhat, got.aux, got.residual
        with torch.enable_grad():
            out = f(y, rows)
        ref, (H_ref,) = out.yhat, out.aux
        assert_close(f"yhat rows {rows.tolist()}", yhat, ref.detach(), 1e-5)
        assert_close(f"state rows {rows.tolist()}", H, H_ref.detach(), 1e-5)
        assert_close(f"residual rows {rows.tolist()}", res, relative_residual(ref.detach(), y, 1e-6), 1e-5)


@pytest.mark.parametrize("kind", [name for name, kind in MIXERS.items() if "decode" in kind.kernel_ops])
def test_decode_kernel_passing_its_check_is_used(monkeypatch, fresh, kind):
    from fpmamba_core import kernels
    from fpmamba_core.decode_steps import ssd_decode_step

    kernel = _Counting(ssd_decode_step)
    monkeypatch.setattr(kernels, "decode_step_kernel", kernel)
    args = _decode_args(kind)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            kernels.decode_step(*args)
    assert _selfcheck_warnings(record) == []
    assert kernel.calls == 1 + 3, "one check, then every call on the kernel"
    (verdict,) = fresh.verdicts().values()
    assert verdict.ok and verdict.error == 0.0


@pytest.mark.parametrize("failure", ["perturbed", "raises"])
def test_decode_disagreement_warns_once_and_falls_back(monkeypatch, fresh, failure):
    from fpmamba_core import kernels
    from fpmamba_core.decode_steps import ssd_decode_step

    kernel = _Counting(ssd_decode_step, perturb=1e-2 if failure == "perturbed" else 0.0,
                       raises=failure == "raises")
    monkeypatch.setattr(kernels, "decode_step_kernel", kernel)
    args = _decode_args("householder")
    ref = ssd_decode_step(*args)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        outs = [kernels.decode_step(*args) for _ in range(3)]
    (message,) = _selfcheck_warnings(record)
    for part in ("decode_step", "cpu", "torch.float32", "householder", "max relative error"):
        assert part in message, message
    assert ("raised RuntimeError" in message) == (failure == "raises"), message
    assert kernel.calls == 1, "the check ran once; the calls then took the reference"
    for out in outs:
        for field in dataclasses.fields(ref):
            assert_equal(field.name, getattr(out, field.name), getattr(ref, field.name))
    (verdict,) = fresh.verdicts().values()
    assert not verdict.ok
    # Another configuration (another mixer) is a key of its own: checked on its own first use.
    with pytest.warns(fresh.KernelSelfCheckWarning, match="mixer dplr"):
        kernels.decode_step(*_decode_args("dplr"))
    assert kernel.calls == 2 and len(fresh.verdicts()) == 2


def test_fused_dispatch_follows_the_verdict(monkeypatch, fresh):
    """fused_iteration_supported(x, kind, inputs): True after a passing check (run once), False for a key whose
    check disagreed (one warning, no re-check), and other keys are judged on their own."""
    from fpmamba_core import kernels
    from fpmamba_core.kernel_selfcheck import composed_fused_iteration

    layer = _layer(2)
    hs = torch.randn(2, 9, 32)
    masked = torch.ones(2, 9, dtype=torch.long)
    inputs, _ = _capture_fused(layer, hs)
    inputs_masked, _ = _capture_fused(layer, hs, attention_mask=masked)
    x = inputs.x
    good = _Counting(composed_fused_iteration)
    monkeypatch.setattr(kernels, "fused_iteration", good)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert kernels.fused_iteration_supported(x, "householder", inputs)
        assert kernels.fused_iteration_supported(x, "householder", inputs)
        assert good.calls == 2, "one check: all rows and a subset"
        bad = _Counting(composed_fused_iteration, perturb=1e-2)
        monkeypatch.setattr(kernels, "fused_iteration", bad)
        assert kernels.fused_iteration_supported(x, "householder", inputs), "a passed key is not re-checked"
        assert not kernels.fused_iteration_supported(x, "householder", inputs_masked)
        assert not kernels.fused_iteration_supported(x, "householder", inputs_masked)
    assert bad.calls == 2
    (message,) = _selfcheck_warnings(record)
    for part in ("fused_iteration", "cpu", "torch.float32", "householder", "max relative error", "mask True"):
        assert part in message, message
    assert sorted(v.ok for v in fresh.verdicts().values()) == [False, True]


def test_fused_kernel_that_raises_is_not_used(monkeypatch, fresh):
    from fpmamba_core import kernels

    inputs, _ = _capture_fused(_layer(3, mixer_type="dplr"), torch.randn(2, 5, 32))
    monkeypatch.setattr(kernels, "fused_iteration", _Counting(None, raises=True))
    with pytest.warns(fresh.KernelSelfCheckWarning, match="raised RuntimeError: simulated kernel failure"):
        assert not kernels.fused_iteration_supported(inputs.x, "dplr", inputs)


def test_env_switch_skips_the_check(monkeypatch, fresh):
    from fpmamba_core import kernels
    from fpmamba_core.decode_steps import ssd_decode_step

    kernel = _Counting(ssd_decode_step, perturb=1e-2)
    monkeypatch.setattr(kernels, "decode_step_kernel", kernel)
    monkeypatch.setenv(fresh.ENV, "0")
    args = _decode_args("none")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = kernels.decode_step(*args)
    assert _selfcheck_warnings(record) == [] and kernel.calls == 1 and fresh.verdicts() == {}
    assert not torch.equal(out.y_out, ssd_decode_step(*args).y_out), "the (perturbed) kernel ran unchecked"


def test_one_check_per_key_across_threads(monkeypatch, fresh):
    from fpmamba_core import kernels
    from fpmamba_core.decode_steps import ssd_decode_step

    kernel = _Counting(ssd_decode_step, perturb=1e-2, delay=0.2)
    monkeypatch.setattr(kernels, "decode_step_kernel", kernel)
    args = _decode_args("dplr")
    results, errors = [], []

    def call():
        try:
            results.append(kernels.decode_step(*args))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert kernel.calls == 1 and len(_selfcheck_warnings(record)) == 1
    ref = ssd_decode_step(*args)
    for out in results:
        assert_equal("y_out", out.y_out, ref.y_out)


def test_no_check_while_compiling(monkeypatch, fresh):
    """Under torch.compile tracing (or CUDA graph capture) an unchecked key takes the kernel, unchecked, uncached."""
    from fpmamba_core import kernels
    from fpmamba_core.decode_steps import ssd_decode_step

    kernel = _Counting(ssd_decode_step)
    monkeypatch.setattr(kernels, "decode_step_kernel", kernel)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    kernels.decode_step(*_decode_args("none"))
    assert kernel.calls == 1 and fresh.verdicts() == {}


# ------------------------------------------------------------------------------ under the Triton interpreter
def _interp_real_kernels_pass(kind: str) -> None:
    """The real kernels pass their checks (fp32) and are then used: prefill (fused iterations) and a decode token;
    the results match the reference backend."""
    from fpmamba_core import kernel_selfcheck as selfcheck
    from fpmamba_core.ops import decode_triton as dk
    from fpmamba_core.ops import fused_iteration_triton as fk

    selfcheck.reset()
    layer = _layer(4, mixer_type=kind)
    hs = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    fused, decode = _Counting(fk.fused_iteration), _Counting(dk.decode_step_triton)
    outs = {}
    with _patched(fk, "fused_iteration", fused), _patched(dk, "decode_step_triton", decode):
        for backend in ("triton", "reference"):
            os.environ["FPMAMBA_KERNELS"] = backend
            with warnings.catch_warnings(record=True) as record, torch.no_grad():
                warnings.simplefilter("always")
                o = layer(hs, attention_mask=mask, return_state=True)
                o2 = layer(torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(0)), state=o.state)
            assert _selfcheck_warnings(record) == [], _selfcheck_warnings(record)
            outs[backend] = (o.out, o2.out)
    verdicts = {k[0]: v for k, v in selfcheck.verdicts().items()}
    assert set(verdicts) == {"fused_iteration", "decode_step"}, verdicts
    for op, v in verdicts.items():
        assert v.ok and v.error < 1e-5, (op, v)
    assert fused.calls == 2 + 2, "the check's two calls, then both iterations of the prefill on the kernel"
    assert decode.calls == 1 + 1, "the check's call, then the decode token on the kernel"
    for i, name in enumerate(("prefill", "decode token")):
        assert_close(name, outs["triton"][i], outs["reference"][i], 1e-4)


def _interp_perturbed_kernels_fall_back() -> None:
    """A real kernel made to disagree: one warning per op, then the PyTorch path, whose results the layer returns."""
    from fpmamba_core import kernel_selfcheck as selfcheck
    from fpmamba_core.ops import decode_triton as dk
    from fpmamba_core.ops import fused_iteration_triton as fk

    selfcheck.reset()
    layer = _layer(5, mixer_type="householder")
    hs = torch.randn(2, 10, 32)
    step = torch.randn(2, 1, 32)
    fused = _Counting(fk.fused_iteration, perturb=1e-2)
    decode = _Counting(dk.decode_step_triton, perturb=1e-2)
    with _patched(fk, "fused_iteration", fused), _patched(dk, "decode_step_triton", decode):
        os.environ["FPMAMBA_KERNELS"] = "triton"
        with warnings.catch_warnings(record=True) as record, torch.no_grad():
            warnings.simplefilter("always")
            o = layer(hs, return_state=True)
            o2 = layer(step, state=o.state, return_state=True)
            again = layer(hs, return_state=True)
            layer(step, state=again.state)
        messages = _selfcheck_warnings(record)
        assert len(messages) == 2, messages
        assert "op fused_iteration on cpu" in messages[0] and "op decode_step on cpu" in messages[1], messages
        assert fused.calls == 2 and decode.calls == 1, "only the checks ran the kernels, once each"
        # The fallback results: the prefill equals the reference backend's (composed map; the scan on Triton), the
        # decode token is ssd_decode_step on the same inputs, exactly the reference backend's token.
        os.environ["FPMAMBA_KERNELS"] = "reference"
        with torch.no_grad():
            r = layer(hs, return_state=True)
            r2 = layer(step, state=o.state, return_state=True)
    assert_close("prefill", o.out, r.out, 1e-4)
    assert_close("prefill state", o.state.ssm, r.state.ssm, 1e-4)
    assert_equal("decode token", o2.out, r2.out)
    assert_equal("decode state", o2.state.ssm, r2.state.ssm)


_INTERPRETED = {
    "real-householder": lambda: _interp_real_kernels_pass("householder"),
    "real-dplr": lambda: _interp_real_kernels_pass("dplr"),
    "real-none": lambda: _interp_real_kernels_pass("none"),
    "perturbed-householder": _interp_perturbed_kernels_fall_back,
}


class _patched:
    def __init__(self, obj, name, value):
        self.obj, self.name, self.value = obj, name, value

    def __enter__(self):
        self.old = getattr(self.obj, self.name)
        setattr(self.obj, self.name, self.value)

    def __exit__(self, *exc):
        setattr(self.obj, self.name, self.old)


def _child_main() -> None:
    """In the child (TRITON_INTERPRET=1): runs every scenario, writes {name: {"ok", "text"}} as JSON."""
    torch.set_num_threads(1)
    results = {}
    for name, scenario in _INTERPRETED.items():
        start = time.time()
        os.environ.pop("FPMAMBA_KERNEL_SELFCHECK", None)
        torch.manual_seed(0)
        try:
            scenario()
            results[name] = {"ok": True, "text": f"{time.time() - start:.1f} s"}
        except Exception:  # noqa: BLE001
            results[name] = {"ok": False, "text": traceback.format_exc()}
        os.environ.pop("FPMAMBA_KERNELS", None)
    Path(os.environ[RESULTS_ENV]).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        env = {k: v for k, v in os.environ.items() if k not in ("FPMAMBA_KERNELS", "FPMAMBA_KERNEL_SELFCHECK")}
        env.update(TRITON_INTERPRET="1", PYTHONPATH=str(ROOT), **{RESULTS_ENV: str(out)})
        code = "from tests.modeling.test_kernel_selfcheck import _child_main; _child_main()"
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)
        if not out.exists():
            pytest.fail(f"the interpreter child reported nothing (exit {proc.returncode}):\n"
                        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


@pytest.mark.parametrize("scenario", list(_INTERPRETED))
def test_under_triton_interpreter(interpreted, scenario):
    result = interpreted[scenario]
    assert result["ok"], f"(under TRITON_INTERPRET=1, in a child process)\n{result['text']}"
