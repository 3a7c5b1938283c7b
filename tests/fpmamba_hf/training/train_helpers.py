"""Shared pieces of the training tests and their multi-process workers: a tiny model, data, launch helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
VOCAB = 16


def tiny_config(**overrides) -> FPMambaConfig:
    """hidden 32, d_inner 64 = 4 heads x 16, state 8: a model that trains in well under a second per step on CPU.
    At tolerance 1e-2 rows of 12 random tokens need 4 to 8 iterations, depending on the data."""
    values = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=16, expand=2,
        chunk_size=8, mixer_alpha_init=0.05, fp_max_iter=12, fp_max_iter_eval=12, fp_tol=1e-2,
        fp_train_quantile=1.0, pad_token_id=0,
    )
    values.update(overrides)
    return FPMambaConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> FPMambaForCausalLM:
    """A tiny FP-Mamba initialised from `seed`."""
    torch.manual_seed(seed)
    return FPMambaForCausalLM(tiny_config(**overrides))


def token_batch(batch: int, length: int, seed: int) -> torch.Tensor:
    """Random token ids (batch, length) from a private generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=g)


def enable_checkpointing(model, use_reentrant: bool) -> None:
    """Activation checkpointing on every block: transformers >= 5.20 names it activation_checkpointing_enable,
    earlier 5.x gradient_checkpointing_enable (the kwargs dict is the first argument of both)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": use_reentrant})


def launch(args: list[str], timeout: float, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a launcher command (torchrun / accelerate launch) from the repo root; fail with its output on error."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    try:
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{args[:3]} hung for {timeout}s (deadlock?)\n{e.stdout}\n{e.stderr}") from e
    command = " ".join(args)
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def torchrun(script: Path, nproc: int, *script_args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node nproc script args` with the venv's interpreter."""
    return launch([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   str(script), *script_args], timeout)


def train_step_grads(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward/backward: (loss, fp_iterations (batch, layers), parameter gradients by name)."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), out.fp_iterations, {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same parameters, each gradient equal within fp32 summation-order noise (rtol 1e-5, atol 1e-7)."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")
