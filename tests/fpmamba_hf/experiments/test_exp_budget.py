"""`fpmamba task budget`: one saved FP-Mamba at each length x cap x solver, at toy size."""

import json

from fpmamba_hf import FPMambaConfig, FPMambaForCausalLM
from fpmamba_hf.cli import main
from fpmamba_hf.tasks import get_task


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
