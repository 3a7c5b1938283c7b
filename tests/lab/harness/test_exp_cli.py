"""The `fpmamba` console script: train -> save -> eval round trip, task listing, the model flags (FPMambaConfig's
knobs) and the GPU recipes' schema."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from fpmamba_hf import FPMambaConfig
from fpmamba_lab.cli import add_model_flags, build_parser, command_drift, config_from_args, main
from fpmamba_lab.harness import ModelSpec, config_from_dict, load_config, load_results_csv
from fpmamba_lab.harness.defaults import COPY_CPU, FAMILY_DEFAULTS, PARITY_CPU, WORD_PROBLEM_CPU, task_defaults
from fpmamba_lab.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.json"))
TINY = ["--train-length", "4", "--eval-points", "3", "--eval-examples", "5", "--hidden-size", "16", "--head-dim", "8",
        "--state-size", "8", "--fp-max-iter", "2", "--fp-max-iter-eval", "3", "--no-progress"]


def test_train_then_eval_the_saved_model_gives_the_same_numbers(tmp_path, capsys):
    assert main(["task", "train", "--task", "parity", "--models", "fpmamba", "--steps", "2", "--batch-size", "4",
                 "--output-dir", str(tmp_path / "run"), "--save-models", *TINY]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "run" / "table.txt").read_text().strip() in printed
    run = json.loads((tmp_path / "run" / "run.json").read_text())  # how, where and when, for `task report`
    assert "fpmamba task train --task parity" in run["command"] and run["wall_time_s"] > 0
    assert run["machine"] and run["date"] and run["torch"]
    model_dir = tmp_path / "run" / "models" / "fpmamba"
    assert main(["task", "eval", "--task", "parity", "--train-length", "4", "--eval-points", "3",
                 "--eval-examples", "5", "--model-dir", str(model_dir), "--output-dir", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    trained = load_results_csv(tmp_path / "run" / "results.csv")
    reloaded = load_results_csv(tmp_path / "eval" / "results.csv")
    assert [r["model"] for r in reloaded] == ["fpmamba"] * len(trained)
    for a, b in zip(trained, reloaded):
        keys = ("length", "accuracy", "fp_iterations_mean")
        assert [a[k] for k in keys] == [b[k] for k in keys]


def test_list_names_every_task(capsys):
    assert main(["task", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TASKS)


@pytest.mark.parametrize(
    "flags, missing",
    [(["--train-length", "4", "--output-dir", "x"], "--task"),
     (["--task", "A5"], "--output-dir")],
)
def test_train_without_config_names_what_is_missing(flags, missing):
    with pytest.raises(SystemExit, match=missing):
        main(["task", "train", *flags])


@pytest.mark.parametrize("task", ["A5", "S5", "A4", "S3", "parity"])
def test_a_task_family_starts_from_its_measured_cpu_setting_and_flags_override_it(task):
    setting = task_defaults(get_task(task))
    family = PARITY_CPU if task == "parity" else WORD_PROBLEM_CPU
    assert {**setting, "training": {}} == {**family, "training": {}}  # only S5's steps differ (next test)
    config = config_from_args(build_parser().parse_args(["task", "train", "--task", task, "--output-dir", "x"]))
    assert config == config_from_dict({"task": task, "models": ["fpmamba"], "output_dir": "x", **setting})
    assert config.train_length == 16 and config.model.fp_max_iter_eval == 128
    flags = ["--train-length", "12", "--hidden-size", "32", "--steps", "5", "--eval-examples", "9"]
    flags += ["--curriculum-fraction", "0.4", "--curriculum-start-length", "3"]
    given = config_from_args(build_parser().parse_args(["task", "train", "--task", task, "--output-dir", "x", *flags]))
    assert (given.train_length, given.model.hidden_size, given.training.steps, given.eval_examples) == (12, 32, 5, 9)
    assert (given.curriculum_fraction, given.curriculum_start_length) == (0.4, 3)
    assert given.model.chunk_size == setting["model"]["chunk_size"]  # the rest stays the setting's


def test_s5_overrides_only_the_word_problem_steps():
    s5, a5 = task_defaults(get_task("S5")), task_defaults(get_task("a5"))
    assert a5 == WORD_PROBLEM_CPU and s5["model"] == WORD_PROBLEM_CPU["model"]
    assert s5["training"] == {**WORD_PROBLEM_CPU["training"], "steps": 6000}
    assert WORD_PROBLEM_CPU["training"]["steps"] == 2500  # the family's own setting is not changed by the merge


def test_every_task_family_has_a_measured_setting():
    assert set(FAMILY_DEFAULTS) == {task.family for task in TASKS.values()}
    assert all("train_length" in setting for setting in FAMILY_DEFAULTS.values())


def recorded_config(*flags: str) -> dict:
    """The configuration a copy run given `flags` records in its results.json."""
    args = build_parser().parse_args(["task", "train", "--task", "copy", "--output-dir", "out", *flags])
    return json.loads(json.dumps(config_from_args(args).to_dict()))


def test_command_drift_names_the_flags_that_rebuild_a_recorded_run():
    """A run recorded with flags its command no longer gives (as when the CLI's defaults move): the drift lists
    flags of every kind (value, list, boolean pair, switch), and the command plus those flags rebuilds the run."""
    flags = ["--steps", "1500", "--models", "fpmamba", "lstm", "--no-bc-norm", "--save-models", "--lr", "0.003"]
    recorded = recorded_config(*flags)
    command = "OMP_NUM_THREADS=1 fpmamba task train --task copy --output-dir out"
    drift = command_drift(command, recorded, ROOT)
    assert set(drift.flags) == {"--steps 1500", "--models fpmamba lstm", "--no-bc-norm", "--save-models",
                                "--learning-rate 0.003"} and not drift.unflagged and drift.error is None
    assert command_drift(f"{command} {' '.join(drift.flags)}", recorded, ROOT) is None
    assert "To repeat the run, add `" in drift.sentence()


def test_command_drift_reports_fields_no_flag_sets_and_commands_that_no_longer_build():
    recorded = recorded_config()
    recorded["training"]["logging_steps"] = 7
    drift = command_drift("fpmamba task train --task copy --output-dir out", recorded, ROOT)
    assert drift.flags == () and drift.unflagged == (("logging_steps", 7, 25),)
    assert "No flag restores `logging_steps`: 7 in the run, 25 today." in drift.sentence()
    assert "--no-such-flag" in command_drift("fpmamba task train --task copy --no-such-flag", recorded, ROOT).error
    assert "--output-dir" in command_drift("fpmamba task train --task copy", recorded, ROOT).error
    assert "unknown task 'Q9x'" in command_drift("fpmamba task train --task Q9x --output-dir o", recorded, ROOT).error
    assert command_drift("fpmamba task eval --task copy --model-dir m", recorded, ROOT) is None


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_load_and_flags_override_them(recipe):
    config = load_config(recipe)
    assert config.task in TASKS and config.train_length >= 1 and config.models
    args = build_parser().parse_args(["task", "train", "--config", str(recipe), "--steps", "7", "--hidden-size", "32"])
    overridden = config_from_args(args)
    assert overridden.training.steps == 7 and overridden.model.hidden_size == 32
    assert overridden.model.mixer_rank == config.model.mixer_rank and overridden.task == config.task


def test_recipes_cover_the_paper_tasks():
    assert {load_config(p).task for p in RECIPES} >= {"A5", "S5", "copy", "modular_arithmetic"}


def train_args(*flags: str):
    return config_from_args(build_parser().parse_args(["task", "train", "--task", "copy", "--train-length", "4",
                                                       "--output-dir", "x", *flags]))


def test_every_model_knob_has_a_flag_documented_as_the_config_documents_it():
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    docs = FPMambaConfig.field_docs()
    for f in dataclasses.fields(ModelSpec):
        assert actions[f.name].option_strings[0] == "--" + f.name.replace("_", "-")
        if f.name != "num_layers":
            assert actions[f.name].help.startswith(docs[f.name].text.replace("%", "%%")), f.name


def test_model_flags_parse_as_the_config_types():
    model = train_args("--no-bc-norm", "--dt-hidden-dependence", "--fp-solver", "anderson", "--time-step-limit", "0",
                       "1.5", "--mixer-reflection-scale", "1", "--fp-tol", "1e-3", "--mixer-rank", "3").model
    assert model.bc_norm is False and model.dt_hidden_dependence is True and model.fp_solver == "anderson"
    assert list(model.time_step_limit) == [0.0, 1.5] and model.mixer_reflection_scale == 1.0
    assert model.fp_tol == 1e-3 and model.mixer_rank == 3
    untouched = train_args().model
    assert untouched == ModelSpec(**COPY_CPU["model"])  # no flag given: the copy setting's, the harness's otherwise


@pytest.mark.parametrize(
    "flags",
    [["--fp-solver", "newton"], ["--mixer-rank", "2.5"], ["--mixer-reflection-scale", "3"], ["--bc-norm", "no"]],
)
def test_bad_model_flags_are_refused(flags):
    with pytest.raises(SystemExit):
        train_args(*flags)
