"""Portable checkpoints: the model code as a flat bundle of files that travels with a checkpoint.

transformers' remote code (`trust_remote_code=True`) loads the file an `auto_map` entry names plus the files it
imports relatively (`from .x import y` -> `x.py` in the same folder, recursively), and refuses a file whose absolute
imports are not installed. Our code lives in two packages (`fpmamba_core`, `fpmamba_hf`) and imports across them,
so `write_portable_code` writes the import closure of the model and config modules as one flat file per module,
each import of our modules rewritten to the flat relative form. The rewrite edits the import statements in the
source text only, so the shipped files read like ours. Our modules import names, never submodules (`from
fpmamba_core.layer import FixedPointLayer`, not `from fpmamba_core import layer` nor `import fpmamba_core.layer`):
a flat bundle has no packages to bind submodules on, so the other forms are refused with the file and line.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import tokenize
from pathlib import Path

OUR_PACKAGES = ("fpmamba_core", "fpmamba_hf")
# The modules auto_map names: config.json says "modeling_fpmamba.FPMambaForCausalLM", so they keep their names.
ROOTS = ("fpmamba_hf.modeling_fpmamba", "fpmamba_hf.configuration_fpmamba")


class PortableCodeError(ValueError):
    """Our source breaks a rule the flat bundle relies on; the message names the file and line."""


def is_ours(module: str) -> bool:
    return module.split(".")[0] in OUR_PACKAGES


def flat_name(module: str) -> str:
    """The bundle's file name (without .py) for one of our modules: `fpmamba_hf` modules keep their own name, as
    transformers' copy of them is named (so ours replace those copies), `fpmamba_core` ones carry the full path."""
    parts = module.split(".")
    if parts[0] == "fpmamba_hf" and len(parts) > 1:
        parts = parts[1:]
    return "_".join(parts)


def locate(module: str) -> Path | None:
    """The source file of one of our modules (a package's `__init__.py`), found on disk so that nothing is imported
    (the Triton kernel modules import triton)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def rewrite_imports(source: str, module: str, path: Path) -> tuple[str, list[str]]:
    """`source` (of `module`, read from `path`) with every import of our modules in flat relative form, and the
    modules it imports. All imports count, inside functions and `if TYPE_CHECKING:` included: transformers' own
    scan of relative imports sees them all."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines(keepends=True)
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []  # module part's (line, column) span, new text
    imported: list[str] = []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_ours(alias.name):
                    raise PortableCodeError(
                        f"{where}: `import {alias.name}` imports a module; import names instead "
                        f"(`from {alias.name} import Name`) so the code can travel as a flat bundle"
                    )
        elif isinstance(node, ast.ImportFrom):
            target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if not is_ours(target):
                continue
            if locate(target) is None:
                raise PortableCodeError(f"{where}: `{target}` is not a module of {' or '.join(OUR_PACKAGES)}")
            for alias in node.names:
                if alias.name != "*" and locate(f"{target}.{alias.name}") is not None:
                    raise PortableCodeError(
                        f"{where}: `from {target} import {alias.name}` imports the submodule {target}.{alias.name}; "
                        f"import names instead (`from {target}.{alias.name} import Name`) so the code can travel "
                        "as a flat bundle"
                    )
            imported.append(target)
            edits.append((*_module_span(lines, node), "." + flat_name(target)))
    text = source
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    for (start_line, start_col), (end_line, end_col), new in sorted(edits, reverse=True):
        text = text[: offsets[start_line - 1] + start_col] + new + text[offsets[end_line - 1] + end_col :]
    return text, imported


def _module_span(lines: list[str], node: ast.ImportFrom) -> tuple[tuple[int, int], tuple[int, int]]:
    """Start and end (line, character column) of the module part of `from <module part> import ...`: the tokens
    between `from` and `import`, so the names, aliases, parentheses and comments stay as written."""
    # ast columns count UTF-8 bytes, tokenize columns count characters.
    first = lines[node.lineno - 1]
    col = len(first.encode("utf-8")[: node.col_offset].decode("utf-8"))
    rest = iter([first[col:], *lines[node.lineno :]])
    tokens = tokenize.generate_tokens(lambda: next(rest, ""))
    next(tokens)  # `from`
    part = []
    for token in tokens:
        if token.type == tokenize.NAME and token.string == "import":
            break
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            part.append(token)
    # Token positions are relative to the text handed to tokenize, which starts at the statement.
    (start_row, start_col), (end_row, end_col) = part[0].start, part[-1].end
    return (
        (node.lineno + start_row - 1, start_col + (col if start_row == 1 else 0)),
        (node.lineno + end_row - 1, end_col + (col if end_row == 1 else 0)),
    )


def bundle(roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """File name -> text of the flat bundle: `roots` and every module of ours they import, transitively."""
    version = importlib.metadata.version("fpmamba-hf")
    files: dict[str, str] = {}
    owner: dict[str, str] = {}
    pending, seen = list(roots), set(roots)
    while pending:
        module = pending.pop()
        path = locate(module)
        if path is None:
            raise PortableCodeError(f"cannot find the source of {module}")
        name = flat_name(module) + ".py"
        if name in owner:
            raise PortableCodeError(f"{module} and {owner[name]} would both be shipped as {name}")
        owner[name] = module
        text, imported = rewrite_imports(path.read_text(encoding="utf-8"), module, path)
        header = f"# Generated from {module} (fpmamba-hf {version}) for a portable checkpoint: edit that module.\n"
        files[name] = header + text
        for target in imported:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return files


def write_portable_code(folder: str | Path) -> list[Path]:
    """Write the flat bundle into `folder` (replacing transformers' copies of our files) and return its paths.

    Run from a bundle (a checkpoint loaded with trust_remote_code), it writes nothing: that code is already flat and
    transformers' own copy ships all of it, and bundling the package installed beside it would ship other code."""
    if __name__ != "fpmamba_hf.portable":
        return []
    written = []
    for name, text in bundle().items():
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
