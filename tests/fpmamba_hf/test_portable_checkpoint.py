"""Portable checkpoints: registered for the Auto classes, save_pretrained writes the model code as a flat bundle that
AutoModelForCausalLM.from_pretrained(trust_remote_code=True) loads in a process where this package cannot be
imported, with the same logits and generations (fpmamba_hf/portable.py)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers.dynamic_module_utils import get_imports

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM, FPMambaModel
from fpmamba_hf.portable import PortableCodeError, rewrite_imports
from tests.fpmamba_hf.helpers import VOCAB, tiny_config, tiny_model

# Run in the child before anything else: our packages (and triton: the pure-PyTorch path needs only torch and
# transformers) cannot be imported, whatever is installed.
BLOCK_IMPORTS = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fpmamba_hf", "fpmamba_core", "modeling", "triton"):
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
try:
    import fpmamba_hf
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("fpmamba_hf is importable in the child")
"""


@pytest.fixture(autouse=True)
def _unregistered(monkeypatch):
    """register_for_auto_class sets a class attribute: undo it after each test."""
    for cls in (FPMambaConfig, FPMambaModel, FPMambaForCausalLM):
        monkeypatch.setattr(cls, "_auto_class", None)


def run_isolated(script: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(cwd / "hf_modules"), HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-c", BLOCK_IMPORTS + textwrap.dedent(script)], cwd=cwd, env=env, check=True,
                   timeout=300)


def code_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.py"))}


@pytest.mark.parametrize("mixer_type", ["householder", "kronecker"])
def test_trust_remote_code_round_trip_without_the_package(tmp_path, mixer_type):
    model = tiny_model(mixer_type=mixer_type, fp_tol=1e-5)
    model.config.register_for_auto_class("AutoConfig")
    model.register_for_auto_class("AutoModelForCausalLM")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        logits = model(ids).logits
    tokens = model.generate(ids, max_new_tokens=5, do_sample=False, fp_max_iter=6)
    torch.save(ids, tmp_path / "ids.pt")
    run_isolated("""
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(2)  # as the parent (tests/conftest.py)
        model = AutoModelForCausalLM.from_pretrained("checkpoint", trust_remote_code=True).eval()
        ids = torch.load("ids.pt")
        with torch.no_grad():
            logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=5, do_sample=False, fp_max_iter=6)
        model.save_pretrained("resaved")  # a loaded checkpoint saves its code again
        torch.save({"logits": logits, "tokens": tokens, "classes": [type(model).__module__,
                    type(model.config).__module__]}, "out.pt")
    """, tmp_path)
    out = torch.load(tmp_path / "out.pt")
    assert all(module.startswith("transformers_modules.") for module in out["classes"]), out["classes"]
    torch.testing.assert_close(out["logits"], logits, atol=1e-5, rtol=0)
    assert torch.equal(out["tokens"], tokens)
    assert code_files(tmp_path / "resaved") == code_files(folder)


def test_bundle_needs_only_torch_and_transformers(tmp_path):
    """transformers refuses a Hub file whose imports outside `try:` are not installed: the shipped files need
    nothing beyond the standard library, torch and transformers (and huggingface_hub, which transformers brings)."""
    model = FPMambaModel(tiny_config())
    model.register_for_auto_class("AutoModel")
    model.save_pretrained(tmp_path)
    files = sorted(tmp_path.glob("*.py"))
    assert {"modeling_fpmamba.py", "configuration_fpmamba.py"} <= {f.name for f in files}
    for f in files:
        assert f.read_text().startswith("# Generated from fpmamba_"), f.name
        needed = set(get_imports(f)) - set(sys.stdlib_module_names)
        assert needed <= {"torch", "transformers", "huggingface_hub"}, (f.name, needed)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_fpmamba.FPMambaConfig",
                        "AutoModel": "modeling_fpmamba.FPMambaModel"}


def test_no_code_without_register_for_auto_class(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())


def test_imports_are_rewritten_to_the_flat_form():
    source = textwrap.dedent("""\
        from __future__ import annotations

        import torch
        from fpmamba_core.fixed_point import (  # the solver
            SolverSettings as Settings,
            solve,
        )


        def f():
            from ..layer import FPMambaLayerConfig
            return torch, Settings, solve, FPMambaLayerConfig
    """)
    text, imported = rewrite_imports(source, "fpmamba_core.ops.fake", Path("fake.py"))
    assert text == source.replace("from fpmamba_core.fixed_point import", "from .fpmamba_core_fixed_point import") \
        .replace("from ..layer import", "from .fpmamba_core_layer import")
    assert sorted(imported) == ["fpmamba_core.fixed_point", "fpmamba_core.layer"]


@pytest.mark.parametrize("statement", ["from fpmamba_core import layer", "from .. import layer",
                                       "import fpmamba_core.layer", "import fpmamba_core as core"])
def test_importing_a_module_instead_of_names_is_refused(statement):
    source = f"def f():\n    {statement}\n"
    with pytest.raises(PortableCodeError, match=r"fake\.py:2: .*import names instead"):
        rewrite_imports(source, "fpmamba_core.ops.fake", Path("fake.py"))
