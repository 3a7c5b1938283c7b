"""The paper's ablation switches (issue 11 item 4): B/C hidden dependence, the short conv, the low-rank mixer
projection and the random Gamma training cap. Each at its default is today's layer; switched, it trains (a gradient
reaches every parameter), decodes token by token as it computes in parallel, saves and loads, on every backbone that
has the switch (a backbone without it refuses it: test_config_declaration.py)."""

import math

import pytest
import torch
from fpmamba_core import BACKBONES

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from tests.fpmamba_hf.helpers import VOCAB, backbone_has, tiny_config, tiny_model
from tests.modeling.core import solver_settings

TIGHT = dict(fp_tol=1e-6, fp_max_iter_eval=400)


def _layer(**overrides):
    return FPMambaForCausalLM(tiny_config(num_hidden_layers=1, **overrides)).backbone.layers[0].mixer


def test_gamma_cap_is_drawn_per_training_call_seeded_and_not_used_in_eval():
    layer = _layer(fp_max_iter=16, fp_max_iter_gamma_shape=4.0, fp_max_iter_gamma_scale=1.0, fp_tol=1e-12,
                   fp_train_quantile=1.0, fp_max_iter_eval=7)
    with torch.no_grad():
        layer.bc_y_proj.weight.normal_(std=0.1)
    h = torch.randn(3, 9, 32)
    torch.manual_seed(123)
    gamma = torch.distributions.Gamma(torch.tensor(4.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    expected = [max(1, min(16, math.ceil(float(gamma.sample())))) for _ in range(4)]
    assert len(set(expected)) > 1  # the draws differ from call to call
    torch.manual_seed(123)
    layer.train()
    caps = [int(layer(h).iterations.max()) for _ in range(4)]
    assert caps == expected
    layer.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        assert int(layer(h).iterations.max()) == 7
    assert torch.equal(state, torch.get_rng_state())  # eval draws nothing


@pytest.mark.parametrize("field, value", [("fp_max_iter_gamma_shape", -1.0), ("fp_max_iter_gamma_scale", 0.0),
                                          ("mixer_proj_rank", -1)])
def test_switch_values_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


# The switches and the value each is switched to; every backbone that has the switch runs it (BACKBONE_SWITCHES).
SWITCHED = {"bc_hidden_dependence": False, "use_short_conv": False, "mixer_proj_rank": 4}
CASES = [(backbone, field, value) for field, value in SWITCHED.items() for backbone in BACKBONES
         if backbone_has(backbone, {field: value})]
IDS = [f"{b}-{f}" for b, f, _ in CASES]
# The parameters a switch removes (-) or adds (+), by the end of their names.
CHANGED = {"bc_hidden_dependence": ("-", "mixer.bc_y_proj.weight"), "use_short_conv": ("-", "mixer.conv1d."),
           "mixer_proj_rank": ("+", "mixer.channel_mixer.proj_in.weight")}


def _model(backbone, seed=0, **overrides):
    """The backbone's tiny test model with 1 layer, from `seed` (helpers.tiny_model: the y-projections are random)."""
    torch.manual_seed(seed)
    return tiny_model(backbone, num_hidden_layers=1, **overrides)


@pytest.mark.parametrize("backbone, field, value", CASES, ids=IDS)
def test_default_is_todays_layer_and_the_switch_changes_only_its_parameters(backbone, field, value):
    default = FPMambaConfig.__dataclass_fields__[field].default
    today, explicit = _model(backbone), _model(backbone, **{field: default})
    ids = torch.randint(0, VOCAB, (2, 7))
    assert {k: v.shape for k, v in today.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in today.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(explicit(ids).logits, today(ids).logits, rtol=0, atol=0)
    switched = _model(backbone, **{field: value})
    sign, suffix = CHANGED[field]
    old, new = set(today.state_dict()), set(switched.state_dict())
    changed = (new - old) if sign == "+" else (old - new)
    assert changed and all(suffix in k for k in changed) and not ((old - new) if sign == "+" else (new - old))


def test_no_bc_hidden_dependence_is_the_default_layer_with_bc_y_proj_at_zero():
    switched = _model("mamba2", bc_hidden_dependence=False, fp_tol=1e-8)
    zeroed = _model("mamba2", fp_tol=1e-8)
    zeroed.load_state_dict(switched.state_dict(), strict=False)
    with torch.no_grad():
        zeroed.backbone.layers[0].mixer.bc_y_proj.weight.zero_()
        ids = torch.randint(0, VOCAB, (2, 9))
        torch.testing.assert_close(switched(ids).logits, zeroed(ids).logits)


def test_low_rank_mixer_is_the_full_rank_layer_with_the_product_weight():
    low = _model("mamba2", mixer_proj_rank=3, fp_tol=1e-8)
    full = _model("mamba2", fp_tol=1e-8)
    state = dict(low.state_dict())
    prefix = "backbone.layers.0.mixer.channel_mixer."
    state[prefix + "proj.weight"] = state[prefix + "proj.weight"] @ state.pop(prefix + "proj_in.weight")
    full.load_state_dict(state)
    mixer = low.backbone.layers[0].mixer.channel_mixer
    d = mixer.d_inner
    torch.testing.assert_close(mixer.y_weight(), state[prefix + "proj.weight"][:, d:])  # what the fused kernel reads
    with torch.no_grad():
        ids = torch.randint(0, VOCAB, (2, 9))
        torch.testing.assert_close(low(ids).logits, full(ids).logits)


@pytest.mark.parametrize("backbone, field, value", CASES, ids=IDS)
def test_switched_layer_trains(backbone, field, value):
    model = _model(backbone, **{field: value}).train()
    ids = torch.randint(0, VOCAB, (2, 8))
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("backbone, field, value", CASES, ids=IDS)
def test_switched_layer_decodes_token_by_token_as_in_parallel(backbone, field, value):
    model = _model(backbone, **{field: value}, **TIGHT)
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        parallel = model(ids).logits
        out = model(ids[:, :3], use_cache=True)
        cache, logits = out.cache, [out.logits]
        for t in range(3, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
    assert (torch.cat(logits, dim=1) - parallel).abs().max() <= 1e-4


@pytest.mark.parametrize("backbone, field, value", CASES, ids=IDS)
def test_switched_model_saves_and_loads(backbone, field, value, tmp_path):
    model = _model(backbone, **{field: value})
    model.save_pretrained(tmp_path)
    reloaded = FPMambaForCausalLM.from_pretrained(tmp_path).eval()
    assert getattr(reloaded.config, field) == value
    assert set(reloaded.state_dict()) == set(model.state_dict())
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("field, value", [("bc_hidden_dependence", False), ("use_short_conv", False)])
def test_conversion_refuses_the_switches(field, value):
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    cfg = Mamba2Config(vocab_size=50, hidden_size=32, head_dim=16, num_heads=4, state_size=8, n_groups=1,
                       num_hidden_layers=1)
    with pytest.raises(ValueError, match=f"from_mamba2: {field}="):
        FPMambaForCausalLM.from_mamba2(Mamba2ForCausalLM(cfg), **{field: value})
    mamba = MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=32, state_size=8, num_hidden_layers=1))
    with pytest.raises(ValueError, match=f"from_mamba: {field}="):
        FPMambaForCausalLM.from_mamba(mamba, **{field: value})


def test_conversion_with_a_low_rank_mixer_computes_the_source():
    """The mixer is an added part (gain 0 at conversion): a low-rank projection converts exactly and trains."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    sources = {
        "from_mamba2": Mamba2ForCausalLM(Mamba2Config(vocab_size=50, hidden_size=32, head_dim=16, num_heads=4,
                                                      state_size=8, n_groups=1, num_hidden_layers=2)),
        "from_mamba": MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=32, state_size=8,
                                                   num_hidden_layers=2)),
    }
    ids = torch.randint(0, 50, (2, 11))
    for convert, source in sources.items():
        model = getattr(FPMambaForCausalLM, convert)(source.eval(), mixer_proj_rank=4).eval()
        assert model.config.mixer_proj_rank == 4
        assert model.backbone.layers[0].mixer.channel_mixer.proj_in.out_features == 4
        with torch.no_grad():
            assert (model(ids).logits - source(ids).logits).abs().max() < 1e-4
        model.train()(ids, labels=ids).loss.backward()
        assert model.backbone.layers[0].mixer.channel_mixer.gain.grad is not None


def test_gamma_cap_under_gradient_checkpointing():
    """Each layer draws its cap in the first (no-grad) forward; the recompute replays the recorded fixed point."""
    torch.manual_seed(0)
    model = FPMambaForCausalLM(tiny_config(fp_max_iter_gamma_shape=4.0, fp_tol=1e-12, fp_train_quantile=1.0)).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, VOCAB, (2, 9))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert int(out.fp_iterations.max()) <= model.config.fp_max_iter
    assert all(p.grad is not None for p in model.parameters())


def test_lora_on_the_low_rank_mixer_takes_part_in_the_iteration():
    from peft import LoraConfig, get_peft_model

    model = _model("mamba2", mixer_proj_rank=3, fp_max_iter=6, fp_max_iter_eval=6, fp_tol=1e-12)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        base = model(ids).logits
    config = LoraConfig(target_modules=["proj_in"], r=2, lora_alpha=1, init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    with torch.no_grad():
        adapted = peft_model(ids).logits
    assert (adapted - base).abs().max() > 1e-6
    peft_model.train()
    peft_model(ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_harness_flags_pick_the_backbone_and_the_switches():
    from fpmamba_core.backbones import Mamba1Layer

    from fpmamba_lab.cli import build_parser, config_from_args
    from fpmamba_lab.harness import build_model

    args = build_parser().parse_args(["task", "train", "--task", "S3", "--train-length", "4", "--output-dir", "x",
                                      "--backbone", "mamba1", "--no-use-short-conv", "--no-bc-hidden-dependence",
                                      "--mixer-proj-rank", "2", "--fp-max-iter-gamma-shape", "4"])
    spec = config_from_args(args).model
    for kind in ("fpmamba", "diagonal"):
        model = build_model(kind, spec, vocab_size=13)
        layer = model.backbone.layers[0].mixer
        assert isinstance(layer, Mamba1Layer) and layer.conv1d is None and layer.bc_y_proj is None
        assert model.config.fp_max_iter_gamma_shape == 4.0
    assert build_model("fpmamba", spec, vocab_size=13).backbone.layers[0].mixer.channel_mixer.proj_in.out_features == 2


@pytest.mark.parametrize("field, value", [("bc_hidden_dependence", False), ("mixer_proj_rank", 3)])
def test_fused_iteration_reads_the_switched_layer_as_one_y_weight(field, value, monkeypatch):
    """The fused kernels read one y-weight matrix [mixer's; B's and C's; (dt's)]: without bc_hidden_dependence B's
    and C's rows are exact zeros, a low-rank mixer gives its exact product (the path is faked on the CPU)."""
    import fpmamba_core.backbones.mamba2 as backbone

    monkeypatch.setattr(backbone, "fused_iteration_supported", lambda *args: True)
    layer = _model("mamba2", **{field: value}).backbone.layers[0].mixer
    with torch.no_grad():
        pre = layer.prelude(torch.randn(2, 5, 32), None, None)
        fused = layer.fused_inputs(pre, solver_settings(4, 1e-3))
    mixer, d = layer.channel_mixer, layer.d_inner
    P = mixer.proj.out_features
    torch.testing.assert_close(fused.weight_y[:P], mixer.proj.weight @ mixer.projections()[0].weight[:, d:]
                               if value == 3 else mixer.proj.weight[:, d:])
    bc = fused.weight_y[P:]
    assert bc.shape == (2 * layer.n_groups * layer.ssm_state_size, d)
    assert (bc == 0).all() if field == "bc_hidden_dependence" else torch.equal(bc, layer.bc_y_proj.weight)
