"""The model library stands without the lab: `fpmamba_hf` imports, trains a step and generates with the lab's
dependencies uninstalled, and importing it never imports `fpmamba_lab` (pyproject: the `lab` extra)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The `lab` extra's packages that transformers does not bring, and peft (a test dependency, which needs accelerate:
# transformers imports it where it is installed).
NOT_INSTALLED = ("matplotlib", "datasets", "accelerate", "peft")

# Run in a fresh interpreter: a None entry in sys.modules makes `import X` raise ModuleNotFoundError and
# importlib.util.find_spec(X) return None, as for a package that is not installed (transformers probes optional
# packages with find_spec).
SCRIPT = textwrap.dedent(f"""
    import sys
    for name in {NOT_INSTALLED!r}:
        sys.modules[name] = None
    import torch
    from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM

    config = FPMambaConfig(vocab_size=11, hidden_size=16, head_dim=8, state_size=4, chunk_size=4,
                           num_hidden_layers=1)
    model = FPMambaForCausalLM(config)
    ids = torch.randint(0, 11, (2, 5))
    out = model(ids, labels=ids)
    out.loss.backward()
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.logits.shape == (2, 5, 11) and generated.shape == (2, 8), (out.logits.shape, generated.shape)
    lab = sorted(name for name in sys.modules if name.split(".")[0] == "fpmamba_lab")
    assert not lab, f"importing fpmamba_hf imported {{lab}}"
    print("library ok")
""")


def test_fpmamba_hf_trains_and_generates_without_the_lab_or_its_dependencies():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "library ok" in proc.stdout


def test_the_guard_refuses_what_the_lab_needs():
    """The same interpreter setup makes the lab itself fail to import: the refusal is real."""
    code = SCRIPT.split("import torch")[0] + "import fpmamba_lab.harness\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, proc.stderr[-3000:]
