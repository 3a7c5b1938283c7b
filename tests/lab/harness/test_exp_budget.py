"""`fpmamba task budget`: one saved FP-Mamba at each length x cap x solver, at toy size."""

import json

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_lab.cli import main
from fpmamba_lab.tasks import get_task


def test_budget_study_runs_every_setting_and_reports_the_capped_share(tmp_path, capsys):
    task = get_task("S3")
    model = FPMambaForCausalLM(FPMambaConfig(vocab_size=task.vocab_size, hidden_size=16, head_dim=8, state_size=4,
                                             chunk_size=4, num_hidden_layers=1, fp_tol=1e-6))
    model.save_pretrained(tmp_path / "model")
    assert main(["task", "budget", "--task", "S3", "--model-dir", str(tmp_path / "model"), "--lengths", "3", "6",
                 "--caps", "1", "40", "--solvers", "picard", "anderson", "--eval-examples", "6",
                 "--eval-batch-size", "4", "--output-dir", str(tmp_path / "budget")]) == 0
    saved = json.loads((tmp_path / "budget" / "budget.json").read_text())
    rows = saved["rows"]
    assert [(r["solver"], r["cap"], r["length"]) for r in rows] == [
        (s, c, n) for s in ("picard", "anderson") for c in (1, 40) for n in (3, 6)]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 1 <= r["fp_iterations_mean"] <= r["cap"]
        assert 0 <= r["fp_unconverged_share"] <= 1
    at_one = [r for r in rows if r["cap"] == 1]
    assert all(r["fp_unconverged_share"] == 1 for r in at_one)  # one evaluation never meets fp_tol 1e-6
    assert saved["fp_tol"] == 1e-6 and "fpmamba task budget" in json.loads(
        (tmp_path / "budget" / "run.json").read_text())["command"]
    assert (tmp_path / "budget" / "budget.md").read_text().strip() in capsys.readouterr().out


def test_the_results_readme_shows_each_budget_study_under_its_task(tmp_path):
    from fpmamba_lab.harness.budget import write_budget
    from fpmamba_lab.report import load_budget_studies, render_results_readme

    rows = [{"solver": "picard", "cap": cap, "length": 8, "accuracy": acc, "fp_iterations_mean": float(cap),
             "fp_unconverged_share": share} for cap, acc, share in ((16, 0.25, 1.0), (64, 0.75, 0.5))]
    write_budget(tmp_path / "results" / "s3_budget", {"task": "S3", "model_dir": "m", "eval_examples": 4,
                                                      "fp_tol": 0.01, "fp_anderson_m": 5}, rows)
    studies = load_budget_studies(tmp_path / "results")
    readme = render_results_readme([], tmp_path / "results", studies)
    assert "## S3\n" in readme and "### Evaluation cap and solver: [s3_budget](s3_budget)" in readme
    assert "| picard | 16 | 0.250 / 16.0 it / 100% capped |" in readme
    assert "| picard | 64 | 0.750 / 64.0 it / 50% capped |" in readme
