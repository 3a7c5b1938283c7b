"""A transformers release whose cache argument this model does not read yet is refused at import, not run."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("version, refused", [("5.23.0", False), ("5.24.0", True), ("5.25.1", True)])
def test_import_refuses_transformers_past_the_supported_range(version, refused):
    code = f"import transformers; transformers.__version__ = {version!r}; import fpmamba_hf"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (run.returncode != 0) == refused
    if refused:
        assert f"supports transformers 5.17 to 5.23, found {version}" in run.stderr
