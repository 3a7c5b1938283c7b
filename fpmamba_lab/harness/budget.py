"""Is a length-generalisation limit the evaluation cap, the solver or the model? One trained FP-Mamba evaluated at
each length under each iteration cap and solver: accuracy, mean iterations, and the share of sequences that
stopped at the cap above the tolerance. If accuracy rises with the cap, the cap was the limit; if Anderson reaches
the tolerance where Picard does not and accuracy follows, the solver; if neither moves it, the model."""

from __future__ import annotations

import json
from pathlib import Path

from fpmamba_core.settings import check_call_budget
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig

from fpmamba_hf import FPMambaForCausalLM
from fpmamba_hf.configuration_fpmamba import CHOICES

from ..tasks import TaskSpec
from .data import require_positive_int
from .evaluation import check_evaluation, evaluate_lengths
from .models import model_kind


def check_budget_model(config: PreTrainedConfig, where: str) -> None:
    """Refuse a model the study does not apply to, naming its kind (`where` says whose config it is): only an
    FP-Mamba has a cap and a solver to vary (the diagonal ablation's one iteration is part of that model; Mamba-2
    and the LSTM have no solver)."""
    kind = model_kind(config)
    if kind == "diagonal":
        raise ValueError(f"{where}: FP-Mamba's diagonal ablation, whose one iteration is part of the model; an "
                         "iteration-cap and solver study does not apply to it")
    if kind != "fpmamba":
        raise ValueError(f"{where}: a {kind!r} model (model_type {config.model_type!r}), which has no fixed-point "
                         "solver; the budget study needs an FP-Mamba")


def load_budget_model(model_dir: str | Path) -> FPMambaForCausalLM:
    """The saved FP-Mamba in `model_dir`, its config checked (`check_budget_model`) before any weights are read."""
    check_budget_model(AutoConfig.from_pretrained(model_dir), str(model_dir))
    return FPMambaForCausalLM.from_pretrained(model_dir)


def budget_study(model: FPMambaForCausalLM, task: TaskSpec, lengths: list[int], caps: list[int], solvers: list[str],
                 num_examples: int, batch_size: int, progress_bar: bool = False) -> list[dict]:
    """One row per (solver, cap, length): the same rows of the task at every setting (seeded per length). The
    model's fp_solver is restored afterwards. Every setting is checked before the first evaluation."""
    check_budget_model(model.config, "budget_study's model")
    check_evaluation(num_examples, batch_size)
    for length in lengths:
        require_positive_int("each length", length)
    for cap in caps:
        check_call_budget(cap, None)
    unknown = [s for s in solvers if s not in CHOICES["fp_solver"]]
    if unknown:
        raise ValueError(f"unknown solvers {unknown}; choose from {CHOICES['fp_solver']}")
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


__all__ = ["budget_study", "budget_table", "check_budget_model", "load_budget_model", "write_budget"]
