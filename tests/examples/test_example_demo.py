"""examples/demo.py end to end at a few training steps: the printed table is the one on disk, the plots exist,
the saved FP-Mamba reloads through AutoModelForCausalLM and generate() reports iterations within each budget."""

import re
import subprocess
import sys
from pathlib import Path

from fpmamba_lab.harness import load_results_csv

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_reports(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--steps", "3", "--eval-examples", "4",
         "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    table = (out / "table.txt").read_text().strip()
    assert table in stdout
    rows = load_results_csv(out / "results.csv")
    assert {r["model"] for r in rows} == {"fpmamba", "diagonal"}
    assert sorted({int(r["length"]) for r in rows}) == list(range(2, 33, 2))  # 2 .. 4 x the training length 8
    assert all(r["fp_iterations_mean"] == "1.0" for r in rows if r["model"] == "diagonal")
    for name in ("accuracy_vs_length.png", "iterations_vs_length.png", "results.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "fpmamba-s3" / "config.json").exists()
    for budget in (2, 48):
        line = next(line for line in stdout.splitlines() if line.startswith(f"fp_max_iter={budget:>2}"))
        counts = [int(c) for c in re.findall(r"\d+", line.split("rows 0-2):")[1])]
        assert len(counts) == 3 * 4 and all(1 <= c <= budget for c in counts)
    assert "Total demo time" in stdout
