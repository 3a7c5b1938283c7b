"""The `fpmamba` CLI refuses what it cannot do right, before doing any of it: a budget study of a model without a
cap to vary, evaluation settings that would fail after training; `task eval`'s cap leaves the diagonal ablation's
one iteration alone; help lists every subcommand and needs none of the model code."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig

from fpmamba_lab.cli import main
from fpmamba_lab.harness import MODEL_KINDS, ModelSpec, build_model, load_results_csv
from fpmamba_lab.harness.evaluation import evaluation_budget
from fpmamba_lab.harness.models import model_kind
from fpmamba_lab.tasks import get_task

TASK = get_task("S3")
SPEC = ModelSpec(hidden_size=16, head_dim=8, state_size=8, chunk_size=8, fp_max_iter=3, fp_max_iter_eval=5)
TINY = ["--train-length", "4", "--eval-points", "3", "--eval-examples", "5", "--hidden-size", "16", "--head-dim", "8",
        "--state-size", "8", "--steps", "1", "--batch-size", "2", "--no-progress"]


def model(kind: str) -> torch.nn.Module:
    """A model of `kind` whose iterations matter: FP-Mamba's y_{t-1} -> B, C projection moved off its zero
    initialisation, as training moves it (at zero, the diagonal ablation's map would not read y at all)."""
    torch.manual_seed(0)
    built = build_model(kind, SPEC, TASK.vocab_size, TASK.pad_token_id, TASK.bos_token_id).eval()
    with torch.no_grad():
        for name, weight in built.named_parameters():
            if "bc_y_proj" in name:
                weight.normal_(std=0.3)
    return built


def saved(kind: str, path) -> str:
    model(kind).save_pretrained(path / kind)
    return str(path / kind)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_budget_refuses_a_folder_without_an_fp_mamba_and_names_what_it_holds(kind, tmp_path):
    folder = saved(kind, tmp_path)
    assert model_kind(AutoConfig.from_pretrained(folder)) == kind
    if kind == "fpmamba":
        return  # studied (test_exp_budget.py)
    expected = {"diagonal": "diagonal: FP-Mamba's diagonal ablation, whose one iteration is part of the model",
                "lstm": "lstm: a 'lstm' model \\(model_type 'fpmamba_lstm'\\), which has no fixed-point solver",
                "mamba2": "mamba2: a 'mamba2' model \\(model_type 'mamba2'\\), which has no fixed-point solver"}[kind]
    with pytest.raises(ValueError, match=expected):
        main(["task", "budget", "--task", "S3", "--model-dir", folder, "--lengths", "3", "--caps", "1", "4",
              "--eval-examples", "4", "--output-dir", str(tmp_path / "budget")])
    assert not (tmp_path / "budget").exists()


@pytest.mark.parametrize("flags, message", [
    (["--lengths", "0", "3"], "each length must be a positive integer, got 0"),
    (["--lengths", "3", "--caps", "0"], "fp_max_iter must be a positive integer"),
    (["--lengths", "3", "--eval-batch-size", "0"], "eval_batch_size must be a positive integer"),
])
def test_budget_settings_are_refused_before_any_evaluation(flags, message, tmp_path):
    args = ["task", "budget", "--task", "S3", "--model-dir", saved("fpmamba", tmp_path), "--caps", "2",
            "--eval-examples", "4", "--output-dir", str(tmp_path / "budget")]
    with pytest.raises(ValueError, match=message):
        main(args + flags)
    assert not (tmp_path / "budget").exists()


def test_an_evaluation_cap_leaves_the_diagonal_ablations_one_iteration_alone(tmp_path):
    folders = [saved("fpmamba", tmp_path), saved("diagonal", tmp_path)]
    diagonal = model("diagonal")
    ids = torch.as_tensor(TASK.build(4, 6, 6, seed=0)["input_ids"])
    with torch.no_grad():  # a cap would make it another model: its logits move
        assert not torch.allclose(diagonal(ids, fp_max_iter=4).logits, diagonal(ids).logits)
    with pytest.warns(UserWarning, match="fp_max_iter=4 is not applied to the diagonal ablation"):
        assert evaluation_budget(diagonal, 4, 1e-3) == {"fp_tol": 1e-3}

    common = ["task", "eval", "--task", "S3", "--train-length", "4", "--eval-points", "3", "--eval-examples", "5",
              "--no-progress", "--model-dir", *folders]
    assert main([*common, "--output-dir", str(tmp_path / "as_saved")]) == 0
    with pytest.warns(UserWarning, match="not applied to the diagonal ablation"):
        assert main([*common, "--fp-max-iter", "2", "--output-dir", str(tmp_path / "capped")]) == 0
    as_saved, capped = (load_results_csv(tmp_path / name / "results.csv") for name in ("as_saved", "capped"))
    pairs = list(zip(as_saved, capped))
    assert all(a == b for a, b in pairs if a["model"] == "diagonal")  # the same model, the same numbers
    assert all(float(b["fp_iterations_max"]) == 1.0 for _, b in pairs if b["model"] == "diagonal")
    assert all(float(b["fp_iterations_max"]) <= 2 for _, b in pairs if b["model"] == "fpmamba")  # capped


@pytest.mark.parametrize("flag, value, message", [
    ("--train-length", "0", "train_length must be a positive integer"),
    ("--eval-factor", "0", "eval_factor must be a positive integer"),
    ("--eval-points", "-1", "eval_points must be a positive integer"),
    ("--eval-examples", "0", "eval_examples must be a positive integer"),
    ("--eval-batch-size", "0", "eval_batch_size must be a positive integer"),
    ("--eval-fp-max-iter", "0", "fp_max_iter must be a positive integer"),
    ("--eval-fp-tol", "-0.001", "fp_tol must be a finite number > 0"),
    ("--eval-fp-tol", "nan", "fp_tol must be a finite number > 0"),
    ("--eval-fp-solve-chunk", "-1", "fp_solve_chunk"),
])
def test_evaluation_settings_are_refused_before_training(flag, value, message, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        main(["task", "train", "--task", "S3", "--models", "fpmamba", "diagonal", *TINY, flag, value,
              "--output-dir", str(out)])
    assert not out.exists()  # nothing trained (Trainer would have made out/trainer), nothing written


def test_eval_settings_are_refused_before_a_model_is_loaded(tmp_path):
    with pytest.raises(ValueError, match="eval_batch_size must be a positive integer"):
        main(["task", "eval", "--task", "S3", "--train-length", "4", "--eval-batch-size", "0",
              "--model-dir", str(tmp_path / "not_there"), "--output-dir", str(tmp_path / "eval")])


def test_help_lists_every_task_subcommand(capsys):
    subcommands = ["list", "train", "eval", "budget", "report"]
    with pytest.raises(SystemExit, match="0"):
        main(["--help"])
    task_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("task "))
    assert task_line.split(":", 1)[1].strip() == ", ".join(subcommands)
    with pytest.raises(SystemExit, match="0"):
        main(["task", "--help"])
    listing = capsys.readouterr().out
    assert all(f"\n    {name} " in listing for name in subcommands)


def test_help_and_argument_errors_import_none_of_the_model_code():
    """`fpmamba --help`, `fpmamba task --help` and a wrong subcommand load no torch, transformers (its Trainer, peft)
    or datasets: they answer at once (a fresh interpreter, as the console script starts)."""
    code = ("import sys\nfrom fpmamba_lab.cli import main\n"
            "for argv in (['--help'], ['task', '--help'], ['task', 'trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('loaded:', sorted(m for m in ('torch', 'transformers', 'peft', 'datasets', 'fpmamba_hf') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "invalid choice: 'trian'" in done.stderr
    assert done.stdout.strip().endswith("loaded: []")
