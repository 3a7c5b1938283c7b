"""Results on disk and on screen: JSON + CSV, a length-generalisation table, and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CPU boxes / CI
import matplotlib.pyplot as plt  # noqa: E402

from .evaluation import LengthResult  # noqa: E402

CSV_FIELDS = ("model", "length", "accuracy", "fp_iterations_mean", "fp_iterations_max")


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


def plot_results(out_dir: Path, results: dict[str, list[LengthResult]], train_length: int, title: str,
                 iteration_cap: int | None = None) -> dict[str, Path]:
    """accuracy_vs_length.png (training length marked) and, if any model iterates, iterations_vs_length.png
    (with the evaluation cap as a dotted line when given: a curve reaching it was stopped by the budget)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"accuracy": out_dir / "accuracy_vs_length.png"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rows in results.items():
        ax.plot([r.length for r in rows], [r.accuracy for r in rows], marker="o", markersize=3, label=name)
    ax.axvline(train_length, color="gray", linestyle="--", label=f"train length {train_length}")
    ax.set(xlabel="sequence length", ylabel="accuracy", title=f"{title}: accuracy vs length", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["accuracy"], dpi=120)
    plt.close(fig)

    iterating = {n: rows for n, rows in results.items() if rows and rows[0].fp_iterations_mean is not None}
    if iterating:
        paths["iterations"] = out_dir / "iterations_vs_length.png"
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, rows in iterating.items():
            ax.plot([r.length for r in rows], [r.fp_iterations_mean for r in rows], marker="o", markersize=3,
                    label=f"{name} (mean)")
        ax.axvline(train_length, color="gray", linestyle="--", label=f"train length {train_length}")
        if iteration_cap is not None:
            ax.axhline(iteration_cap, color="red", linestyle=":", label=f"iteration cap {iteration_cap}")
            ax.set_ylim(0, 1.1 * iteration_cap)  # keep the cap line inside the frame
        ax.set(xlabel="sequence length", ylabel="fixed-point iterations per sequence",
               title=f"{title}: iterations vs length")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(paths["iterations"], dpi=120)
        plt.close(fig)
    return paths


def load_results_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv as dicts of strings (for checks and downstream tools)."""
    with Path(path).open() as f:
        return list(csv.DictReader(f))


__all__ = ["format_table", "load_results_csv", "plot_results", "write_results"]
