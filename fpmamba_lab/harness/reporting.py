"""Results on disk and on screen: JSON + CSV, a length-generalisation table, PNG plots, and run.json (how, where
and when a run was made)."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
from pathlib import Path

import matplotlib
import torch
import transformers

matplotlib.use("Agg")  # files only: no display on CPU boxes / CI
import matplotlib.pyplot as plt  # noqa: E402

from .evaluation import LengthResult  # noqa: E402

CSV_FIELDS = ("model", "length", "accuracy", "fp_iterations_mean", "fp_iterations_max")
ACCURACY_THRESHOLD = 0.9  # "solved": the accuracy the plots mark and the results README's "longest length" uses
RECORDED_ENV = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "FPMAMBA_KERNELS")  # prefixed to the recorded command


def format_table(results: dict[str, list[LengthResult]], train_length: int) -> str:
    """Rows = lengths, columns = accuracy (and mean iterations where a model has them) per model.
    The training length is flagged with '*'."""
    names = list(results)
    header = ["length"]
    for name in names:
        header.append(f"{name} acc")
        if results[name] and results[name][0].fp_iterations_mean is not None:
            header.append(f"{name} iters")
    lines = [header]
    for i, row in enumerate(results[names[0]]):
        cells = [f"{row.length}{'*' if row.length == train_length else ''}"]
        for name in names:
            r = results[name][i]
            cells.append(f"{r.accuracy:.3f}")
            if r.fp_iterations_mean is not None:
                cells.append(f"{r.fp_iterations_mean:.1f}")
        lines.append(cells)
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text) + f"\n(* = training length {train_length})"


def write_results(out_dir: Path, payload: dict, results: dict[str, list[LengthResult]]) -> dict[str, Path]:
    """results.json (payload + per-length results) and results.csv (one row per model and length)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    full = {**payload, "results": {name: [r.to_dict() for r in rows] for name, rows in results.items()}}
    json_path.write_text(json.dumps(full, indent=2, default=str))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for name, rows in results.items():
            for r in rows:
                writer.writerow({"model": name, "length": r.length, "accuracy": r.accuracy,
                                 "fp_iterations_mean": r.fp_iterations_mean, "fp_iterations_max": r.fp_iterations_max})
    return {"json": json_path, "csv": csv_path}


def _save(fig: plt.Figure, ax: plt.Axes, path: Path) -> None:
    """Grid, the legend outside the axes (so it hides no curve), write the PNG and free the figure."""
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _iterating(results: dict[str, list[LengthResult]]) -> dict[str, list[LengthResult]]:
    """The models that report fixed-point iterations."""
    return {name: rows for name, rows in results.items() if rows and rows[0].fp_iterations_mean is not None}


def plot_paths(out_dir: Path, results: dict[str, list[LengthResult]]) -> dict[str, Path]:
    """The plots plot_results writes for `results`: accuracy always, iterations if any model iterates."""
    paths = {"accuracy": Path(out_dir) / "accuracy_vs_length.png"}
    if _iterating(results):
        paths["iterations"] = Path(out_dir) / "iterations_vs_length.png"
    return paths


def plot_results(out_dir: Path, results: dict[str, list[LengthResult]], train_length: int, title: str,
                 iteration_cap: int | None = None) -> dict[str, Path]:
    """accuracy_vs_length.png (training length and ACCURACY_THRESHOLD marked) and, if any model iterates,
    iterations_vs_length.png (from 0; the evaluation cap as a dotted line when given: a curve reaching it was stopped
    by the budget)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_paths(out_dir, results)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, rows in results.items():
        ax.plot([r.length for r in rows], [r.accuracy for r in rows], marker="o", markersize=3, label=name)
    ax.axvline(train_length, color="gray", linestyle="--", label=f"train length {train_length}")
    ax.axhline(ACCURACY_THRESHOLD, color="green", linestyle=":", linewidth=1, label=f"accuracy {ACCURACY_THRESHOLD}")
    # A scaled accuracy (0 at chance) can fall below 0: keep such points inside the frame.
    lowest = min((r.accuracy for rows in results.values() for r in rows), default=0.0)
    ax.set(xlabel="sequence length", ylabel="accuracy", title=f"{title}: accuracy vs length",
           ylim=(min(-0.02, lowest - 0.02), 1.02))
    _save(fig, ax, paths["accuracy"])

    if "iterations" in paths:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for name, rows in _iterating(results).items():
            ax.plot([r.length for r in rows], [r.fp_iterations_mean for r in rows], marker="o", markersize=3,
                    label=f"{name} (mean)")
        ax.axvline(train_length, color="gray", linestyle="--", label=f"train length {train_length}")
        ax.set_ylim(bottom=0)
        if iteration_cap is not None:
            ax.axhline(iteration_cap, color="red", linestyle=":", label=f"iteration cap {iteration_cap}")
            ax.set_ylim(top=1.1 * iteration_cap)  # keep the cap line inside the frame
        ax.set(xlabel="sequence length", ylabel="fixed-point iterations per sequence",
               title=f"{title}: iterations vs length")
        _save(fig, ax, paths["iterations"])
    return paths


def machine_description() -> str:
    """The CPU count and architecture, and the GPU's name when CUDA is available."""
    text = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def write_run_metadata(out_dir: Path, argv: list[str], wall_time_s: float) -> Path:
    """run.json next to results.json: the command as typed (with the RECORDED_ENV variables that were set), the
    machine, the UTC date, the library versions and the whole run's wall time."""
    env = [f"{name}={os.environ[name]}" for name in RECORDED_ENV if name in os.environ]
    metadata = {
        "command": shlex.join(env + argv),
        "machine": machine_description(),
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(wall_time_s, 1),
    }
    path = Path(out_dir) / "run.json"
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def load_results_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv as dicts of strings (for checks and downstream tools)."""
    with Path(path).open() as f:
        return list(csv.DictReader(f))


__all__ = [
    "ACCURACY_THRESHOLD", "format_table", "load_results_csv", "machine_description", "plot_paths", "plot_results",
    "write_results", "write_run_metadata",
]
