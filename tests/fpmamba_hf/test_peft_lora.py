"""LoRA through peft on every Linear: the adapters of the mixer's `proj` and of the y-projections (`bc_y_proj`,
`dt_y_proj`), which the fixed-point iteration applies, take part in the forward, the gradient and decoding, and
merging them gives back the adapted model."""

import pytest
import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model

from tests.fpmamba_hf.helpers import VOCAB, tiny_model

WRAPPED = ("in_proj", "out_proj", "channel_mixer.proj", "bc_y_proj", "dt_y_proj")  # per layer; the LM head is left out
ITERATION_ADAPTERS = ("channel_mixer.proj", "bc_y_proj", "dt_y_proj")
EXACT = dict(fp_max_iter=6, fp_tol=1e-12)  # the same number of iterations on both sides of a comparison


def _adapted(mixer_input: str):
    """A tiny FP-Mamba with non-zero LoRA adapters (random A and B) on every Linear."""
    model = tiny_model(mixer_input=mixer_input, dt_hidden_dependence=True)
    with torch.no_grad():
        for block in model.backbone.layers:
            block.mixer.dt_y_proj.weight.normal_(std=0.1)
    config = LoraConfig(target_modules="all-linear", r=4, lora_alpha=1, init_lora_weights=False)
    return get_peft_model(model, config).eval()


def _layer_module(peft_model, layer: int, name: str) -> nn.Module:
    return peft_model.base_model.model.backbone.layers[layer].mixer.get_submodule(name)


def _decode(model, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Logits (b, T, vocab): `prefix` tokens in parallel, then one token at a time through the cache."""
    out = model(ids[:, :prefix], use_cache=True, **EXACT)
    cache, logits = out.cache, [out.logits]
    for t in range(prefix, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True, **EXACT)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def test_all_linear_wraps_the_iteration_projections() -> None:
    model = _adapted("concat")
    wrapped = sorted(n.split(".mixer.", 1)[1] for n, m in model.named_modules() if hasattr(m, "lora_A"))
    assert wrapped == sorted(WRAPPED * model.config.num_hidden_layers)


@pytest.mark.parametrize("mixer_input", ["concat", "sum"])
def test_every_adapter_gets_gradient(mixer_input: str) -> None:
    model = _adapted(mixer_input)
    ids = torch.randint(0, VOCAB, (2, 13))
    model(ids, labels=ids, **EXACT).loss.backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * len(WRAPPED) * model.config.num_hidden_layers
    dead = [n for n, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"adapters without gradient: {dead}"


@pytest.mark.parametrize("name", ITERATION_ADAPTERS)
def test_changing_an_adapter_changes_the_logits(name: str) -> None:
    model = _adapted("concat")
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        before = model(ids, **EXACT).logits
        _layer_module(model, 0, name).lora_B["default"].weight.mul_(3.0)
        after = model(ids, **EXACT).logits
    assert (after - before).abs().max() > 1e-4


@pytest.mark.parametrize("mixer_input", ["concat", "sum"])
def test_merge_and_unload_reproduces_the_adapted_model(mixer_input: str) -> None:
    """In parallel and token by token (the decode step builds the mixer from the cached y*_{t-1})."""
    model = _adapted(mixer_input)
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        adapted, adapted_decoded = model(ids, **EXACT).logits, _decode(model, ids, prefix=5)
        merged = model.merge_and_unload()
        assert type(merged.backbone.layers[0].mixer.channel_mixer.proj) is nn.Linear  # back on the split fast path
        torch.testing.assert_close(merged(ids, **EXACT).logits, adapted, atol=1e-5, rtol=0)
        torch.testing.assert_close(_decode(merged, ids, prefix=5), adapted_decoded, atol=1e-5, rtol=0)


def test_fused_iteration_refuses_wrapped_projections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused kernels read the projections' weights, which would drop the adapters: with a wrapped projection
    the layer keeps the composed map even where the fused path is available (faked here on the CPU)."""
    import fpmamba_core.backbones.mamba2 as backbone

    def fused(*args):
        raise AssertionError("the fused iteration ran with wrapped projections")

    monkeypatch.setattr(backbone, "fused_iteration_supported", lambda *args: True)
    monkeypatch.setattr(backbone, "fused_iteration", fused)
    model = _adapted("concat")
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 9)), **EXACT)
