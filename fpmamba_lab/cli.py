"""The `fpmamba` console script: train and evaluate FP-Mamba and baselines on the paper's synthetic tasks.

    fpmamba task list
    fpmamba task train --task A5 --output-dir outputs/a5          # word problems: the measured CPU setting
    fpmamba task train --task parity --train-length 16 --models fpmamba lstm --steps 300 --output-dir outputs/p
    fpmamba task train --config examples/recipes/a5.json          # a recipe; flags given explicitly override it
    fpmamba task eval --task S3 --train-length 8 --model-dir outputs/s3/models/fpmamba --fp-max-iter 40
    fpmamba task report [--check]        # docs/results/README.md, MODEL_CARD.md's headline table and the plots
    fpmamba task budget --task A5 --model-dir outputs/a5/models/fpmamba --lengths 32 48 64 --caps 64 128 256 \
        --solvers picard anderson --output-dir docs/results/a5_budget   # the cap / solver / model question

train and eval write results.json, run.json (command, machine, date, wall time), results.csv, table.txt,
accuracy_vs_length.png and iterations_vs_length.png into --output-dir and print the length-generalisation table.
The logic lives in fpmamba_lab.harness (train, eval, budget) and fpmamba_lab.report (report).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import shlex
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The model library, the harness (Trainer, peft) and the tasks (datasets) take seconds to import: they are imported
# where a command needs them, so that `fpmamba --help`, `fpmamba task --help` and their argument errors are instant.
if TYPE_CHECKING:
    from .harness import ExperimentConfig
    from .report import CommandDrift, Run


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that adds its flags (`add_flags`) the first time it parses or prints its help: only
    the command that runs imports what its flags are made from (the model config, the tasks)."""

    def __init__(self, *args: Any, add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_flags = add_flags

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._add_flags is not None:
            add_flags, self._add_flags = self._add_flags, None
            add_flags(self)
        return super().parse_known_args(args, namespace)


def _add_common_eval_flags(p: argparse.ArgumentParser) -> None:
    from .tasks import TASKS

    p.add_argument("--task", help="task name: " + ", ".join(TASKS) + ", or a group such as S3, A4, Z7")
    p.add_argument("--train-length", dest="train_length", type=int, help="longest training length (marked on plots)")
    p.add_argument("--output-dir", dest="output_dir", help="where results and plots go")
    p.add_argument("--eval-factor", dest="eval_factor", type=int, help="evaluate up to this x the training length")
    p.add_argument("--eval-points", dest="eval_points", type=int, help="at most about this many lengths")
    p.add_argument("--eval-examples", dest="eval_examples", type=int, help="rows per evaluated length")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int)
    p.add_argument("--no-progress", dest="progress_bar", action="store_false", default=None)


def _value_kwargs(name: str, hint: Any) -> dict[str, Any]:
    """How argparse reads a value of a config knob of type `hint` (its choices from the config's CHOICES)."""
    from fpmamba_hf.configuration_fpmamba import CHOICES

    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is tuple:  # a fixed-length tuple of one type, e.g. time_step_limit
        args = typing.get_args(hint)
        return {"type": args[0], "nargs": len(args), "metavar": tuple(a.__name__.upper() for a in args)}
    if hint == str | int:  # e.g. time_step_rank: "auto" or a number
        return {"type": _int_or_word}
    return {"type": hint, "choices": CHOICES.get(name)}


def _int_or_word(text: str) -> int | str:
    """A flag value that is an int when it reads as one, else the word itself (the config checks which words)."""
    try:
        return int(text)
    except ValueError:
        return text


def add_model_flags(train: argparse.ArgumentParser) -> None:
    """One flag per ModelSpec field: the FPMambaConfig knobs, typed and documented as the config declares them,
    defaulting to the harness's values (fpmamba_lab.harness.models.HARNESS_DEFAULTS, else the config's)."""
    from fpmamba_hf import FPMambaConfig

    from .harness import ModelSpec

    group = train.add_argument_group("model", "FPMambaConfig knobs; each model kind uses those that apply to it "
                                     "(fpmamba_lab/harness/models.py); given flags override the recipe")
    group.add_argument("--num-layers", dest="num_layers", type=int, help="default: the kind's own (1; mamba2: 2)")
    docs = FPMambaConfig.field_docs()
    for f in dataclasses.fields(ModelSpec):
        if f.name == "num_layers":
            continue
        text = f"{docs[f.name].text} (harness default: {f.default})".replace("%", "%%")
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, help=text, **_value_kwargs(f.name, f.type))


def _add_train_flags(train: argparse.ArgumentParser) -> None:
    """`task train`'s flags: a recipe, the evaluation, the harness, one per model knob, the training."""
    from fpmamba_hf.configuration_fpmamba import CHOICES

    from .harness import MODEL_KINDS

    train.add_argument("--config", help="JSON recipe (examples/recipes/*.json); explicit flags override it")
    _add_common_eval_flags(train)
    train.add_argument("--models", nargs="+", choices=MODEL_KINDS, help="model kinds to train (default: fpmamba)")
    train.add_argument("--min-train-length", dest="min_train_length", type=int)
    train.add_argument("--train-examples", dest="train_examples", type=int)
    train.add_argument("--curriculum-fraction", dest="curriculum_fraction", type=float,
                       help="length curriculum: the longest training length grows from --curriculum-start-length to "
                            "--train-length over this fraction of the steps (0: off)")
    train.add_argument("--curriculum-start-length", dest="curriculum_start_length", type=int)
    train.add_argument("--eval-fp-max-iter", dest="eval_fp_max_iter", type=int,
                       help="FP-Mamba's evaluation iteration cap (not the diagonal ablation's: its one iteration is "
                            "part of that model)")
    train.add_argument("--eval-fp-tol", dest="eval_fp_tol", type=float)
    train.add_argument("--eval-fp-solve-chunk", dest="eval_fp_solve_chunk", type=int,
                       help="evaluate (and save) the trained FP-Mamba with this fp_solve_chunk (default: as trained)")
    train.add_argument("--eval-fp-solver", dest="eval_fp_solver", choices=CHOICES["fp_solver"],
                       help="evaluate (and save) the trained FP-Mamba with this fp_solver (default: as trained)")
    train.add_argument("--save-models", dest="save_models", action="store_true", default=None)
    add_model_flags(train)
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float)
    train.add_argument("--weight-decay", dest="weight_decay", type=float)
    train.add_argument("--seed", type=int)


def _add_eval_flags(evaluate: argparse.ArgumentParser) -> None:
    _add_common_eval_flags(evaluate)
    evaluate.add_argument("--model-dir", dest="model_dirs", nargs="+", required=True)
    evaluate.add_argument("--fp-max-iter", dest="fp_max_iter", type=int,
                          help="FP-Mamba iteration cap (not the diagonal ablation's: its one iteration is part of "
                               "that model)")
    evaluate.add_argument("--fp-tol", dest="fp_tol", type=float)


def _add_budget_flags(budget: argparse.ArgumentParser) -> None:
    from fpmamba_hf.configuration_fpmamba import CHOICES

    budget.add_argument("--task", required=True)
    budget.add_argument("--model-dir", dest="model_dir", type=Path, required=True,
                        help="a saved FP-Mamba (not its diagonal ablation, Mamba-2 or the LSTM: they have no cap and "
                             "solver to vary)")
    budget.add_argument("--lengths", type=int, nargs="+", required=True)
    budget.add_argument("--caps", type=int, nargs="+", required=True)
    budget.add_argument("--solvers", nargs="+", choices=CHOICES["fp_solver"], default=["picard"])
    budget.add_argument("--eval-examples", dest="eval_examples", type=int, default=200)
    budget.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=200)
    budget.add_argument("--output-dir", dest="output_dir", type=Path, required=True)


def _add_report_flags(report_cmd: argparse.ArgumentParser) -> None:
    report_cmd.add_argument("--results-dir", dest="results_dir", type=Path, default=Path("docs/results"),
                            help="every folder below holding a results.json is one run; its README.md is rewritten")
    report_cmd.add_argument("--card", type=Path, default=Path("MODEL_CARD.md"),
                            help="the card whose region between the results markers gets the headline table")
    report_cmd.add_argument("--check", action="store_true",
                            help="write nothing; exit 1 (printing the diff) if the README or the card differs from "
                                 "the results")


# `fpmamba task`'s subcommands: help line, flags.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None]] = {
    "list": ("list the registered tasks", None),
    "train": ("train models with Trainer and evaluate length generalisation", _add_train_flags),
    "eval": ("evaluate saved models (save_pretrained directories)", _add_eval_flags),
    "budget": ("one saved FP-Mamba at each length x iteration cap x solver", _add_budget_flags),
    "report": ("rebuild the results README, the model card's headline table and the plots", _add_report_flags),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpmamba", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = parser.add_subparsers(dest="group", required=True)
    task = groups.add_parser("task", help="synthetic tasks: " + ", ".join(COMMANDS))
    commands = task.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for name, (text, add_flags) in COMMANDS.items():
        commands.add_parser(name, help=text, add_flags=add_flags)
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The recipe, or without one the task family's defaults (harness.defaults), with every explicitly given
    flag applied on top."""
    from .harness import ExperimentConfig, ModelSpec, TrainSettings, config_from_dict, load_config
    from .harness.defaults import task_defaults
    from .tasks import get_task

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("group", "command", "config")}
    if args.config:
        config = load_config(args.config)
    else:
        if "task" not in given:
            raise SystemExit("fpmamba task train: give --config or --task")
        if "output_dir" not in given:
            raise SystemExit("fpmamba task train: give --config, or --task with --output-dir")
        named = {k: given[k] for k in ("task", "output_dir")}
        config = config_from_dict({"models": ["fpmamba"], **task_defaults(get_task(given["task"])), **named})
    # Flags whose dest is an ExperimentConfig / ModelSpec / TrainSettings field name set that field.
    fields = {section: {f.name for f in dataclasses.fields(cls)}
              for section, cls in (("top", ExperimentConfig), ("model", ModelSpec), ("training", TrainSettings))}
    top = {k: v for k, v in given.items() if k in fields["top"] - {"model", "training"}}
    model = dataclasses.replace(config.model, **{k: v for k, v in given.items() if k in fields["model"]})
    training = dataclasses.replace(config.training, **{k: v for k, v in given.items() if k in fields["training"]})
    return dataclasses.replace(config, model=model, training=training, **top)


def command_drift(command: str, recorded: dict[str, Any], root: Path) -> CommandDrift | None:
    """What `command`, a run's recorded `fpmamba task train` call, builds today (a --config recipe read below
    `root`) against `recorded`, the configuration in the run's results.json: None where it builds the same (fields
    added since the run are left out) or is not a `task train` call."""
    from .report import CommandDrift

    words = shlex.split(command)
    start = words.index("fpmamba") + 1 if "fpmamba" in words else len(words)
    if words[start:start + 2] != ["task", "train"]:
        return None
    parser = argparse.ArgumentParser(exit_on_error=False)
    _add_train_flags(parser)
    try:
        args, unknown = parser.parse_known_args(words[start + 2:])
        if unknown:
            return CommandDrift(error=f"unknown arguments {' '.join(unknown)}")
        if args.config:
            args.config = str(root / args.config)
        today = json.loads(json.dumps(config_from_args(args).to_dict()))
    except (argparse.ArgumentError, SystemExit, OSError, KeyError, ValueError) as error:  # e.g. a task renamed since
        return CommandDrift(error=str(error).strip('"'))
    actions = {action.dest: action for action in parser._actions}
    flags, unflagged = [], []
    for name, old, new in _differences(recorded, today):
        flag = _flag(actions.get(name), old)
        if flag is None:
            unflagged.append((name, old, new))
        else:
            flags.append(flag)
    return CommandDrift(tuple(flags), tuple(unflagged)) if flags or unflagged else None


def _differences(recorded: dict[str, Any], today: dict[str, Any]):
    """(field, recorded value, today's) for each field of `recorded` (its sections flattened) set otherwise today;
    the model's switches that do not apply to its backbone are not compared (they changed nothing)."""
    from fpmamba_hf import FPMambaConfig
    from fpmamba_hf.configuration_fpmamba import switch_applies

    backbone = recorded.get("model", {}).get("backbone", FPMambaConfig().backbone)
    for key, value in recorded.items():
        if key in ("model", "training"):
            yield from ((k, v, today[key].get(k)) for k, v in value.items()
                        if today[key].get(k) != v and (key != "model" or switch_applies(k, backbone)))
        elif today.get(key) != value:
            yield key, value, today.get(key)


def _flag(action: argparse.Action | None, value: Any) -> str | None:
    """The flag that sets its field to `value`; None where none can (no flag, None, or an unset switch)."""
    if action is None or value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        return action.option_strings[0 if value else 1]
    if action.nargs == 0:  # a switch: --save-models, --no-progress
        return action.option_strings[0] if value == action.const else None
    values = value if isinstance(value, list) else [value]
    return " ".join([action.option_strings[0], *(shlex.quote(str(v)) for v in values)])


def _with_drift(run: Run, root: Path) -> Run:
    command = run.metadata.get("command")
    if run.config is None or command is None:
        return run
    return dataclasses.replace(run, drift=command_drift(command, run.config, root))


def report(results_dir: Path, card: Path, check: bool) -> int:
    """Rewrite the results README (every run), the card's headline region and each run's plots from the results
    folders; with `check`, only compare: 1 and the diffs when the README or the card is out of date. Each run's
    command is rebuilt against its recorded configuration (recipes read below the card's folder), and the README
    says what to add where they differ."""
    from .report import (
        load_budget_studies,
        load_runs,
        render_card,
        render_headline,
        render_model_index,
        render_results_readme,
        write_plots,
    )

    runs = [_with_drift(run, card.parent) for run in load_runs(results_dir)]
    if not runs:
        raise SystemExit(f"fpmamba task report: no results.json under {results_dir}")
    if not card.exists():
        raise SystemExit(f"fpmamba task report: no card at {card}")
    readme = results_dir / "README.md"
    expected = {
        readme: render_results_readme(runs, results_dir, load_budget_studies(results_dir)),
        card: render_card(card.read_text(), render_headline(runs, card.parent, readme), render_model_index(runs)),
    }
    if check:
        diffs = []
        for path, text in expected.items():
            current = path.read_text() if path.exists() else ""
            diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(path),
                                             f"{path} from {results_dir}", lineterm=""))
            print("\n".join(diff) or f"{path} is in sync with {results_dir} ({len(runs)} runs)")
            diffs += diff
        return 1 if diffs else 0
    plots = [path for run in runs for path in write_plots(run).values()]
    for path, text in expected.items():
        path.write_text(text)
    print("wrote: " + ", ".join(str(p) for p in [*expected, *plots]))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from .tasks import TASKS, get_task

    if args.command == "list":
        for name, spec in TASKS.items():
            print(f"{name:20s} vocab {spec.vocab_size:4d}  paper train lengths {spec.train_lengths}, "
                  f"eval {spec.eval_lengths}")
        print("(any group name, e.g. S3, A4, Z7, is a word-problem task too)")
        return 0
    if args.command == "report":
        return report(args.results_dir, args.card, check=args.check)
    from .harness import run_evaluation, run_experiment
    from .harness.budget import budget_study, budget_table, load_budget_model, write_budget
    from .harness.reporting import write_run_metadata

    start = time.perf_counter()
    if args.command == "budget":
        task = get_task(args.task)
        model = load_budget_model(args.model_dir)
        rows = budget_study(model, task, args.lengths, args.caps, args.solvers, args.eval_examples,
                            args.eval_batch_size)
        payload = {"task": args.task, "model_dir": str(args.model_dir), "eval_examples": args.eval_examples,
                   "fp_tol": model.config.fp_tol, "fp_anderson_m": model.config.fp_anderson_m}
        files = write_budget(args.output_dir, payload, rows)
        files["run"] = write_run_metadata(args.output_dir, ["fpmamba", *argv], time.perf_counter() - start)
        print(budget_table(rows))
        print("wrote: " + ", ".join(str(p) for p in files.values()))
        return 0
    if args.command == "train":
        result = run_experiment(config_from_args(args))
    else:
        missing = [f for f in ("task", "train_length", "output_dir") if getattr(args, f) is None]
        if missing:
            raise SystemExit(f"fpmamba task eval: missing {', '.join('--' + m.replace('_', '-') for m in missing)}")
        optional = {k: getattr(args, k) for k in ("eval_factor", "eval_points", "eval_examples", "eval_batch_size",
                                                   "progress_bar") if getattr(args, k) is not None}
        result = run_evaluation(args.model_dirs, args.task, args.train_length, args.output_dir,
                                fp_max_iter=args.fp_max_iter, fp_tol=args.fp_tol, **optional)
    result.files["run"] = write_run_metadata(result.files["json"].parent, ["fpmamba", *argv],
                                             time.perf_counter() - start)
    print(result.table)
    print("wrote: " + ", ".join(str(p) for p in result.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
