"""A map that cannot depend on the iterate (Q = I, y-projections at zero: a converted Mamba-2) is solved in one
evaluation: y* = f(0) exactly, residual 0, in the parallel forward and token by token; the verdict follows the
parameters (an edit of the mixer gain or of a y-projection makes the layer iterate again)."""

from __future__ import annotations

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

from fpmamba_hf import FPMambaForCausalLM
from fpmamba_hf.core_settings import fixed_point_settings, layer_settings


def _converted(mixer_type: str = "householder") -> tuple[FPMambaForCausalLM, Mamba2ForCausalLM]:
    torch.manual_seed(0)
    cfg = Mamba2Config(vocab_size=40, hidden_size=32, head_dim=16, num_heads=4, state_size=8, n_groups=1,
                       num_hidden_layers=2, chunk_size=8, expand=2)
    mamba2 = Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in mamba2.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return FPMambaForCausalLM.from_mamba2(mamba2, mixer_type=mixer_type, fp_tol=1e-6).eval(), mamba2


@pytest.mark.parametrize("mixer_type", ["householder", "none"])
def test_one_evaluation_is_the_fixed_point(mixer_type):
    fp, mamba2 = _converted(mixer_type)
    ids = torch.randint(0, 40, (3, 13))
    with torch.no_grad():
        out = fp(ids)
        expected = mamba2(ids).logits
    assert out.fp_iterations.eq(1).all() and out.fp_residual.eq(0).all()
    assert (out.logits - expected).abs().max() <= 1e-4
    mask = torch.ones_like(ids)
    gen = fp.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert gen.fp_iterations.eq(1).all() and gen.fp_residual.eq(0).all()
    ref = mamba2.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(gen.sequences, ref)


def test_an_edit_of_the_parameters_is_seen():
    fp, _ = _converted()
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert fp(ids).fp_iterations.eq(1).all()
        fp.backbone.layers[1].mixer.channel_mixer.gain.fill_(1.0)  # in place: the version counter moves
        its = fp(ids).fp_iterations
        assert its[:, 0].eq(1).all() and its[:, 1].gt(1).all()
        fp.backbone.layers[1].mixer.channel_mixer.gain.zero_()
        fp.backbone.layers[0].mixer.bc_y_proj.weight[0, 0] = 0.5
        its = fp(ids).fp_iterations
        assert its[:, 0].gt(1).all() and its[:, 1].eq(1).all()


def test_gradients_are_those_of_the_iterated_solve():
    """Training a converted model: the one-step gradient through f(y*) is the same whether y* took one evaluation
    (constant map) or was iterated to the fixed point (forced by a tiny gain, which moves nothing at fp64 scale)."""
    fp, _ = _converted()
    fp = fp.double().train()
    ids = torch.randint(0, 40, (2, 9))
    fp(ids, labels=ids).loss.backward()
    fast = {n: p.grad.clone() for n, p in fp.named_parameters() if p.grad is not None}
    assert fp.backbone.layers[0].mixer.channel_mixer.gain.grad.abs() > 0  # the mixer can still leave the identity
    fp.zero_grad()
    for block in fp.backbone.layers:
        block.mixer.map_reads_iterate = lambda: True  # the iterated path on the same parameters
    fp(ids, labels=ids).loss.backward()
    for name, grad in fast.items():
        torch.testing.assert_close(fp.get_parameter(name).grad, grad, rtol=1e-10, atol=1e-12, msg=name)


def test_a_mixer_that_reads_only_x_still_makes_the_map_read_y():
    """x~ = Q x + (I - Q) y reads y whenever Q != I, whatever the mixer's own input (mixer_input="x"): with zero
    y-projections such a layer is not constant, and its forward is the iterated fixed point."""
    from fpmamba_core.backbones import Mamba2Layer

    from fpmamba_hf import FPMambaConfig

    torch.manual_seed(0)
    config = FPMambaConfig(hidden_size=16, state_size=8, head_dim=8, chunk_size=4, mixer_input="x",
                           mixer_reflection_scale=2, fp_tol=1e-10, fp_max_iter_eval=200)
    layer = Mamba2Layer(layer_settings(config), fixed_point_settings(config), 0).double()
    layer.eval()
    assert not layer.bc_y_proj.weight.any() and layer.map_reads_iterate()
    with torch.no_grad():
        out = layer(torch.randn(2, 7, 16, dtype=torch.float64))
    assert out.iterations.gt(1).all() and out.residual.lt(1e-10).all()


def _evaluations(monkeypatch) -> list[int]:
    """Counts calls of the Mamba-2 map (whole-sequence evaluations, with or without autograd)."""
    from fpmamba_core.backbones.mamba2 import Mamba2Map

    calls = []
    original = Mamba2Map.__call__
    monkeypatch.setattr(Mamba2Map, "__call__", lambda self, y, rows: calls.append(1) or original(self, y, rows))
    return calls


def _frozen_readers(model: FPMambaForCausalLM) -> list[str]:
    """Freeze every parameter through which the map reads y (mixers, y-projections); their names."""
    names = []
    for name, p in model.named_parameters():
        if ".mixer.channel_mixer." in name or "_y_proj" in name:
            p.requires_grad_(False)
            names.append(name)
    return names


@pytest.mark.parametrize("mixer_type", ["householder", "kronecker"])
def test_training_with_the_readers_frozen_is_one_evaluation_with_the_same_gradients(mixer_type, monkeypatch):
    """Nothing that reads y trains: a training forward is one evaluation with autograd (Mamba-2's cost), and every
    gradient equals the one of the regular path (a no-grad solve, then f at y* with the readers in the graph)."""
    ids = torch.randint(0, 40, (3, 13))
    regular, _ = _converted(mixer_type)
    regular.train()
    regular(ids, labels=ids).loss.backward()
    frozen, _ = _converted(mixer_type)
    frozen.train()
    names = _frozen_readers(frozen)
    calls = _evaluations(monkeypatch)
    out = frozen(ids, labels=ids)
    out.loss.backward()
    assert len(calls) == frozen.config.num_hidden_layers and out.fp_iterations.eq(1).all()
    for (name, a), b in zip(regular.named_parameters(), frozen.parameters()):
        if name in names:
            assert b.grad is None
        else:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)  # y + (x - y) vs x: rounding
    calls.clear()
    regular(ids, labels=ids).loss.backward()  # the readers train: a no-grad evaluation, then f at y* with autograd
    assert len(calls) == 2 * regular.config.num_hidden_layers


def test_lora_elsewhere_takes_the_one_evaluation_path(monkeypatch):
    """peft freezes the base model: adapters on in_proj/out_proj of a converted Mamba-2 train at Mamba-2's cost."""
    from peft import LoraConfig, get_peft_model

    fp, _ = _converted()
    model = get_peft_model(fp.train(), LoraConfig(r=4, target_modules=["in_proj", "out_proj"]))
    ids = torch.randint(0, 40, (2, 9))
    calls = _evaluations(monkeypatch)
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == fp.config.num_hidden_layers
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.grad is not None for p in adapters)
