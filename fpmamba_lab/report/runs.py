"""The results folders as the report reads them: runs, budget studies, and model settings grouped over seeds.

Every folder under the results root that holds a results.json (written by `fpmamba task train` or `task eval`,
with run.json beside it: command, machine, date, versions, wall time) is one run; a folder holding a budget.json
(`fpmamba task budget`) is one budget study. A setting is one model kind of a task trained with the same knobs,
training and evaluation settings: its runs differ only in their seed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpmamba_hf import FPMambaConfig

from ..harness.evaluation import LengthResult
from ..harness.models import DEFAULT_LAYERS, MAMBA2_KNOBS
from ..harness.reporting import ACCURACY_THRESHOLD, plot_results
from ..tasks import get_task

MISSING = "—"
# The model knobs a baseline reads (FP-Mamba and its diagonal ablation read them all): runs differing elsewhere are
# the same model.
KIND_KNOBS = {"lstm": ("hidden_size", "num_layers"), "mamba2": (*MAMBA2_KNOBS, "num_layers")}


@dataclass(frozen=True)
class CommandDrift:
    """How a run's recorded command, given today, builds another configuration than the one the run recorded (the
    CLI's defaults and the recipes move on): `flags` restore the fields a flag sets, `unflagged` lists (field,
    recorded, today) for the others; `error` says why the command no longer builds a configuration at all."""

    flags: tuple[str, ...] = ()
    unflagged: tuple[tuple[str, Any, Any], ...] = ()
    error: str | None = None

    def sentence(self) -> str:
        if self.error is not None:
            return f"Given today, this command fails: {self.error}."
        words = ["Given today, this command builds another configuration (the CLI's defaults or its recipe changed "
                 "since the run)."]
        if self.flags:
            words.append(f"To repeat the run, add `{' '.join(self.flags)}`.")
        words += [f"No flag restores `{name}`: {old!r} in the run, {new!r} today." for name, old, new in self.unflagged]
        return " ".join(words)


@dataclass(frozen=True)
class Run:
    """One results folder: results.json (`payload`) and run.json (`metadata`, empty if the folder has none);
    `drift`: how its command differs when given today (None where it builds the recorded configuration)."""

    folder: Path
    payload: dict
    metadata: dict
    drift: CommandDrift | None = None

    @property
    def config(self) -> dict | None:
        """The ExperimentConfig of a `task train` run; None for a `task eval` run."""
        return self.payload.get("config")

    @property
    def task(self) -> str:
        return (self.config or self.payload)["task"]

    @property
    def train_length(self) -> int:
        return (self.config or self.payload)["train_length"]

    @property
    def seed(self) -> int:
        """The training seed of a `task train` run."""
        return self.config["training"]["seed"]

    @property
    def shortest_trained_length(self) -> int:
        """The shortest length the run's models were supervised at (TaskSpec.shortest_trained_length)."""
        min_train_length = self.config.get("min_train_length") if self.config else None
        return get_task(self.task).shortest_trained_length(self.train_length, min_train_length)

    @property
    def results(self) -> dict[str, list[LengthResult]]:
        return {name: [LengthResult(**row) for row in rows] for name, rows in self.payload["results"].items()}

    @property
    def iteration_cap(self) -> int | None:
        """The evaluation iteration cap FP-Mamba ran under (None where no FP-Mamba was trained, or unknown)."""
        if self.config is None:
            return self.payload.get("fp_max_iter")
        if "fpmamba" not in self.config["models"]:
            return None
        return self.config["eval_fp_max_iter"] or self.config["model"]["fp_max_iter_eval"]


def _load_folders(results_root: Path, filename: str, kind: type) -> list:
    """Every folder under `results_root` holding `filename`, as `kind(folder, payload, metadata)` (metadata: its
    run.json, or {}), ordered by task, then folder."""
    found = []
    for path in sorted(Path(results_root).rglob(filename)):
        metadata_path = path.parent / "run.json"
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        found.append(kind(path.parent, json.loads(path.read_text()), metadata))
    return sorted(found, key=lambda item: (item.task, str(item.folder)))


def load_runs(results_root: Path) -> list[Run]:
    """Every results folder under `results_root`, ordered by task, then folder."""
    return _load_folders(results_root, "results.json", Run)


@dataclass(frozen=True)
class BudgetStudy:
    """One budget folder: budget.json (`payload`: task, settings, rows) and run.json (`metadata`)."""

    folder: Path
    payload: dict
    metadata: dict

    @property
    def task(self) -> str:
        return self.payload["task"]


def load_budget_studies(results_root: Path) -> list[BudgetStudy]:
    """Every budget folder under `results_root`, ordered by task, then folder."""
    return _load_folders(results_root, "budget.json", BudgetStudy)


def write_plots(run: Run) -> dict[str, Path]:
    """Redraw the run's accuracy and iterations plots in its folder from its results.json."""
    return plot_results(run.folder, run.results, run.train_length, title=run.task, iteration_cap=run.iteration_cap)


def at_factor(rows: list[LengthResult], train_length: int, factor: int) -> LengthResult | None:
    """The shortest evaluated length >= factor x the training length (None if the run stopped short of it)."""
    return next((r for r in rows if r.length >= factor * train_length), None)


def longest_solved(rows: list[LengthResult], shortest: int) -> int | None:
    """The longest length up to which accuracy stays >= ACCURACY_THRESHOLD at every evaluated length from
    `shortest` (the shortest trained length: shorter ones lie outside the training range and are not counted)."""
    solved = None
    for row in (r for r in rows if r.length >= shortest):
        if row.accuracy < ACCURACY_THRESHOLD:
            break
        solved = row.length
    return solved


def config_defaults() -> dict[str, Any]:
    """FPMambaConfig's default of every knob, by name."""
    return {f.name: f.default for f in dataclasses.fields(FPMambaConfig)}


def _model_settings(run: Run) -> dict[str, Any]:
    """The run's model settings, with FPMambaConfig's default for every knob added after the run was recorded."""
    return {**config_defaults(), **run.config["model"]}


def model_label(run: Run, kind: str, with_length: bool = True) -> str:
    """A model of a `task train` run as the tables name it: its kind plus what tells it apart from the other runs
    of a task (backbone and mixer for FP-Mamba, backbone for the diagonal ablation, width, depth, gradient,
    penalty, steps, and with `with_length` the training length). Two settings may share a label: the results column
    and the run sections tell them apart."""
    model = _model_settings(run)
    layers = model["num_layers"] or DEFAULT_LAYERS[kind]
    parts = []
    if kind in ("fpmamba", "diagonal"):
        parts.append(model["backbone"])
    if kind == "fpmamba":
        rank = "" if model["mixer_type"] in ("kronecker", "none") else f" r{model['mixer_rank']}"
        parts.append(f"{model['mixer_type']}{rank}")
        if model["fp_backward"] != "one_step" or model["fp_backward_steps"] != 1:
            parts.append(f"{model['fp_backward']} x{model['fp_backward_steps']}")
        if model.get("fp_max_iter_gamma_shape"):
            parts.append(f"training cap ~ Gamma({model['fp_max_iter_gamma_shape']:g}, "
                         f"{model['fp_max_iter_gamma_scale']:g})")
        if model.get("fp_jacobian_reg"):
            parts.append(f"Jacobian penalty {model['fp_jacobian_reg']:g}")
    parts += [f"d{model['hidden_size']}", f"{layers} layer{'s' if layers > 1 else ''}",
              f"{run.config['training']['steps']:,} steps"]
    if with_length:
        parts.append(f"trained to length {run.train_length}")
    if run.config.get("curriculum_fraction"):
        parts.append(f"length curriculum {run.config['curriculum_start_length']}->{run.train_length} over "
                     f"{run.config['curriculum_fraction']:.0%} of the steps")
    return f"{kind} ({', '.join(parts)})"


def _settings_key(run: Run, kind: str) -> str:
    """What a model of a run was trained and evaluated with, but its seed: the knobs its kind reads (all of them for
    FP-Mamba and the diagonal ablation), the training settings, the lengths and the evaluation budget."""
    model = _model_settings(run)
    if kind in KIND_KNOBS:
        model = {name: model.get(name) for name in KIND_KNOBS[kind]}
    training = {k: v for k, v in run.config["training"].items() if k not in ("seed", "logging_steps", "progress_bar")}
    lengths = {k: run.config.get(k) for k in ("train_length", "min_train_length", "train_examples",
                                              "eval_fp_max_iter", "eval_fp_tol", "eval_fp_solve_chunk",
                                              "eval_fp_solver")}
    if run.config.get("curriculum_fraction"):  # runs from before the curriculum existed have no such keys
        lengths.update({k: run.config[k] for k in ("curriculum_fraction", "curriculum_start_length")})
    return json.dumps([kind, model, training, lengths], sort_keys=True)


@dataclass(frozen=True)
class Setting:
    """One model kind of a task trained with one setting: its (run, per-length results) per seed, by seed."""

    task: str
    kind: str
    members: tuple[tuple[Run, list[LengthResult]], ...]

    @property
    def first(self) -> Run:
        """The run of the lowest seed: the setting's settings, as every member has them."""
        return self.members[0][0]

    @property
    def train_length(self) -> int:
        return self.first.train_length

    @property
    def folders(self) -> list[Path]:
        """The setting's results folders, each once, in seed order."""
        return list(dict.fromkeys(run.folder for run, _ in self.members))

    def at_factor(self, factor: int) -> list[LengthResult | None]:
        """Per seed, the shortest evaluated length >= factor x the training length (None where not evaluated)."""
        return [at_factor(results, run.train_length, factor) for run, results in self.members]

    @property
    def backbone(self) -> str | None:
        """The FP-Mamba backbone of an fpmamba or diagonal setting (None for the other kinds)."""
        return _model_settings(self.first)["backbone"] if self.kind in ("fpmamba", "diagonal") else None

    def learned(self) -> int:
        """How many seeds reached ACCURACY_THRESHOLD at the training length."""
        return sum(p is not None and p.accuracy >= ACCURACY_THRESHOLD for p in self.at_factor(1))


def group_settings(runs: list[Run]) -> list[Setting]:
    """Every model of every `task train` run, grouped by task and setting (runs in one group differ only in their
    seed), in the order of the runs."""
    groups: dict[tuple[str, str], list[tuple[Run, str, list[LengthResult]]]] = {}
    for run in runs:
        if run.config is not None:
            for kind, results in run.results.items():
                groups.setdefault((run.task, _settings_key(run, kind)), []).append((run, kind, results))
    return [Setting(task, members[0][1], tuple(sorted(((run, results) for run, _, results in members),
                                                      key=lambda member: member[0].seed)))
            for (task, _), members in groups.items()]
