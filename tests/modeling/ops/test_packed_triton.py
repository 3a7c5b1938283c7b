"""Packed sequences through the Triton kernels, under Triton's interpreter (see conftest.py): on every backbone the
packed documents reach the kernels as a left-padded batch of documents (Mamba-2's fused iteration, Mamba-1's
selective scan, the FP-RNN's diagonal scan), and each document's logits and gradients are the ones it gets alone
on the same kernels (fp32, tiny shapes; tests/fpmamba_hf/test_packed_sequences.py checks the PyTorch path in fp64)."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from fpmamba_core.backbones import BACKBONES
from transformers import DataCollatorWithFlattening

from tests.closeness import assert_close
from tests.fpmamba_hf.helpers import VOCAB, tiny_model

pytestmark = pytest.mark.triton_interpreter

# The Triton op each backbone's no-autograd solve runs, as (module, function): what the documents must reach.
KERNEL_OF = {
    "mamba2": ("fpmamba_core.ops.fused_iteration_triton", "fused_iteration"),
    "mamba1": ("fpmamba_core.ops.selective_scan_triton", "selective_scan_triton"),
    "rnn": ("fpmamba_core.ops.diagonal_scan_triton", "diag_scan_triton"),
}
LENGTHS = (5, 9, 3)


def _record_batches(monkeypatch, backbone: str) -> list[tuple[int, int]]:
    """The (rows, T) of every tensor the backbone's Triton op is called with, recorded from now on."""
    module = importlib.import_module(KERNEL_OF[backbone][0])
    name = KERNEL_OF[backbone][1]
    kernel, seen = getattr(module, name), []

    def recorded(*args, **kwargs):
        seen.extend(tuple(a.shape[:2]) for a in args if isinstance(a, torch.Tensor) and a.dim() >= 3)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return seen


@pytest.mark.parametrize("backbone", BACKBONES)
def test_packed_documents_run_the_kernels_as_if_alone(backbone, monkeypatch):
    assert set(KERNEL_OF) == set(BACKBONES), "name the Triton op of every backbone"
    os.environ["FPMAMBA_KERNELS"] = "triton"  # restored after the test (conftest.py)
    # The kernels take chunks of 16 or more. A low cap keeps the interpreter's iterations few (Mamba-2 stops at it):
    # a document runs the same iterations packed as alone, converged or not.
    model = tiny_model(backbone, chunk_size=16, num_hidden_layers=1, fp_tol=1e-3, fp_max_iter=6, fp_max_iter_eval=6)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, VOCAB, (n,), generator=g) for n in LENGTHS]
    batch = DataCollatorWithFlattening()([{"input_ids": d.tolist()} for d in docs])
    seen = _record_batches(monkeypatch, backbone)
    with torch.no_grad():
        packed = model(**batch).logits[0]
    assert (len(LENGTHS), max(LENGTHS)) in seen, f"the documents did not reach the kernel as one batch: {seen}"
    with torch.no_grad():
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
    assert_close("packed logits (Triton)", packed, alone, rtol=1e-5)

    model.train()
    model(**batch).loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    counts = [len(d) - 1 for d in docs]
    sum(model(d[None], labels=d[None]).loss * c for d, c in zip(docs, counts)).div(sum(counts)).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close(f"gradient of {name} (Triton)", packed_grads[name], p.grad, rtol=1e-4)
