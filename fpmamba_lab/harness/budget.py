"""Is a length-generalisation limit the evaluation cap, the solver or the model? One trained FP-Mamba evaluated at
each length under each iteration cap and solver: accuracy, mean iterations, and the share of sequences that
stopped at the cap above the tolerance. If accuracy rises with the cap, the cap was the limit; if Anderson reaches
the tolerance where Picard does not and accuracy follows, the solver; if neither moves it, the model."""

from __future__ import annotations

import json
from pathlib import Path

from fpmamba_hf import FPMambaForCausalLM

from ..tasks import TaskSpec
from .evaluation import evaluate_lengths


def budget_study(model: FPMambaForCausalLM, task: TaskSpec, lengths: list[int], caps: list[int], solvers: list[str],
                 num_examples: int, batch_size: int, progress_bar: bool = False) -> list[dict]:
    """One row per (solver, cap, length): the same rows of the task at every setting (seeded per length). The
    model's fp_solver is restored afterwards."""
    rows = []
    original = model.config.fp_solver
    try:
        for solver in solvers:
            model.config.fp_solver = solver
            for cap in caps:
                for r in evaluate_lengths(model, task, lengths, num_examples, batch_size, fp_max_iter=cap,
                                          progress_bar=progress_bar):
                    rows.append({"solver": solver, "cap": cap, "length": r.length, "accuracy": r.accuracy,
                                 "fp_iterations_mean": r.fp_iterations_mean,
                                 "fp_unconverged_share": r.fp_unconverged_share})
    finally:
        model.config.fp_solver = original
    return rows


def budget_table(rows: list[dict]) -> str:
    """Markdown: one line per (solver, cap), one column per length: accuracy / mean iterations / share at the cap."""
    lengths = sorted({r["length"] for r in rows})
    settings = list(dict.fromkeys((r["solver"], r["cap"]) for r in rows))
    cell = {(r["solver"], r["cap"], r["length"]): r for r in rows}
    lines = ["| solver | cap | " + " | ".join(f"length {n}" for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for solver, cap in settings:
        cells = [cell[solver, cap, n] for n in lengths]
        lines.append(f"| {solver} | {cap} | " + " | ".join(
            f"{c['accuracy']:.3f} / {c['fp_iterations_mean']:.1f} it / {100 * c['fp_unconverged_share']:.0f}% capped"
            for c in cells) + " |")
    return "\n".join(lines)


def write_budget(output_dir: Path, payload: dict, rows: list[dict]) -> dict[str, Path]:
    """budget.json (the settings and every row) and budget.md (the table) in output_dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": output_dir / "budget.json", "table": output_dir / "budget.md"}
    files["json"].write_text(json.dumps({**payload, "rows": rows}, indent=1) + "\n")
    files["table"].write_text(budget_table(rows) + "\n")
    return files


__all__ = ["budget_study", "budget_table", "write_budget"]
