"""Mixed precision on CPU: bf16 autocast and fp16 autocast with a gradient scaler; fp32 inside the fixed point.

Stated tolerances (tiny model, 4 x 16 tokens, measured: bf16 logits within 4e-3 of fp32 at a logit scale of 0.4,
loss within 2e-5 relative, gradient cosine 0.99994): logits atol 2e-2, loss rtol 1e-3, gradient cosine > 0.999.
"""

from __future__ import annotations

import fpmamba_core.backbones.mamba2 as mamba2
import pytest
import torch
import torch.nn.functional as F
from fpmamba_core.fixed_point import solve
from train_helpers import tiny_model, token_batch

IDS = token_batch(4, 16, seed=11)


def _step(dtype: torch.dtype | None):
    """Forward + backward of a fresh tiny model, under CPU autocast to `dtype` (None: plain fp32)."""
    model = tiny_model().train()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(IDS, labels=IDS)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return model, out, grads


def test_fixed_point_state_stays_fp32_under_autocast(monkeypatch) -> None:
    """The iterate, the solve's results and the scan stay fp32 under bf16 autocast (the layer's map, reached as an
    object; the scan observed where the map calls it)."""
    seen: list[tuple[str, torch.dtype]] = []
    real_scan = mamba2.ssd_scan

    def scan(x, dt, A, B, C, *args, **kwargs):
        y, H = real_scan(x, dt, A, B, C, *args, **kwargs)
        seen.extend([("scan x", x.dtype), ("scan B", B.dtype), ("scan y", y.dtype), ("scan state", H.dtype),
                     ("autocast in scan", torch.float32 if not torch.is_autocast_enabled("cpu") else torch.bfloat16)])
        return y, H

    monkeypatch.setattr(mamba2, "ssd_scan", scan)
    model = tiny_model().train()
    layer = model.backbone.layers[0].mixer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.backbone.embeddings(IDS)
        pre = layer.prelude(hidden, None, None)
        settings = layer.solver_settings()
        f = layer.iteration_map(pre, settings)
        y0 = layer.initial_iterate(pre)
        res = solve(f, y0, settings, training=True)
        seen.extend([("y0", y0.dtype), ("y_star", res.y_star.dtype), ("y_out", res.y_out.dtype)])
    _, out, _ = _step(torch.bfloat16)
    assert seen and all(dtype == torch.float32 for _, dtype in seen), [s for s in seen if s[1] != torch.float32]
    assert out.logits.dtype == torch.float32


def test_bf16_autocast_matches_fp32() -> None:
    _, ref, g_ref = _step(None)
    _, out, g = _step(torch.bfloat16)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=2e-2)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-3, atol=0)
    assert F.cosine_similarity(g, g_ref, dim=0) > 0.999


def test_bf16_training_step_with_trainer_flag(tmp_path) -> None:
    """TrainingArguments(bf16=True) on CPU: one step runs under autocast and moves the weights by finite amounts."""
    import datasets
    from transformers import Trainer, TrainingArguments

    model = tiny_model()
    before = model.backbone.layers[0].mixer.in_proj.weight.detach().clone()
    data = datasets.Dataset.from_dict({"input_ids": IDS.tolist(), "labels": IDS.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True, max_steps=1,
                             per_device_train_batch_size=4, report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    after = model.backbone.layers[0].mixer.in_proj.weight.detach()
    assert torch.isfinite(after).all() and not torch.equal(after, before)
    assert model.backbone.layers[0].mixer.in_proj.weight.dtype == torch.float32  # fp32 master weights


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fp16_autocast_with_grad_scaler_step() -> None:
    model = tiny_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(IDS, labels=IDS).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss) and torch.isfinite(grads).all()
    assert scaler.get_scale() == 2.0**10  # no overflow: the step was taken, the scale kept
    _, _, g_ref = _step(None)
    assert F.cosine_similarity(grads, g_ref, dim=0) > 0.999
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if p.grad.abs().sum() > 0)
