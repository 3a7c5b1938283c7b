"""`modeling/ops/` is a leaf (docs/architecture.md, "Kernel and reference files"): its files import nothing from the
rest of the package but `precision`, and each file is named `<op>_reference.py` or `<op>_triton.py` (beside the
package's `__init__.py` and the kernels' `_triton_utils.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

OPS = Path(__file__).resolve().parents[3] / "modeling" / "ops"
ALLOWED_OUTSIDE = {"precision"}  # modules of the package outside ops/ that ops/ may import


def _package_imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every relative import in `path` (level 1: ops/ itself; 2: the package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.level, node.module or ""))
    return found


def test_ops_import_only_each_other_and_precision():
    files = sorted(OPS.glob("*.py"))
    assert files, OPS
    for path in files:
        for level, module in _package_imports(path):
            outside = level > 1 and module.split(".")[0] not in ALLOWED_OUTSIDE
            assert not outside, f"{path.name} imports {'.' * level}{module}: ops/ is a leaf"


def test_ops_files_follow_the_naming_scheme():
    for path in OPS.glob("*.py"):
        name = path.stem
        assert name in ("__init__", "_triton_utils") or name.endswith(("_reference", "_triton")), path.name
