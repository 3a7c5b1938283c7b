"""`fpmamba task report`: the model card's results section and plots rebuilt from results folders."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from fpmamba_hf.cli import main
from fpmamba_hf.experiments import ExperimentConfig, LengthResult, TrainSettings
from fpmamba_hf.experiments.card import CARD_BEGIN, CARD_END, longest_solved

ROOT = Path(__file__).resolve().parents[3]
# A toy run: parity, train length 4 (shortest training row 3), lengths 2..16; FP-Mamba stays >= 0.9 up to 4, the LSTM
# only at 2, below the training range, which the card does not count.
ACCURACY = {"fpmamba": [1.0, 0.95, 0.8, 0.6, 0.2], "lstm": [1.0, 0.5, 0.0, 0.0, 0.0]}
LENGTHS = [2, 4, 8, 12, 16]


def write_toy_run(folder: Path, seed: int = 0, steps: int = 300) -> None:
    config = ExperimentConfig(task="parity", models=["fpmamba", "lstm"], output_dir=str(folder), train_length=4,
                              training=TrainSettings(seed=seed, steps=steps))
    results = {
        name: [asdict(LengthResult(n, acc, {"acc": acc}, float(n + 3) if name == "fpmamba" else None,
                                   float(n + 5) if name == "fpmamba" else None))
               for n, acc in zip(LENGTHS, accs)]
        for name, accs in ACCURACY.items()
    }
    training = {name: {"runtime_s": 12.3, "steps": 5, "eval_runtime_s": 1.2, "parameters": p}
                for name, p in (("fpmamba", 1234), ("lstm", 567))}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"config": config.to_dict(), "training": training,
                                                     "results": results}))
    (folder / "run.json").write_text(json.dumps({"command": "fpmamba task train --task parity", "date": "2026-01-02",
                                                 "machine": "2 CPU cores (x86_64)", "wall_time_s": 20.0}))


@pytest.fixture
def toy(tmp_path):
    write_toy_run(tmp_path / "results" / "parity_toy")
    card = tmp_path / "CARD.md"
    card.write_text(f"# Card\n\nbefore\n\n{CARD_BEGIN}\nstale\n{CARD_END}\n\nafter\n")
    return tmp_path / "results", card


def report(results: Path, card: Path, *flags: str) -> int:
    return main(["task", "report", "--results-dir", str(results), "--card", str(card), *flags])


def test_report_writes_the_task_table_and_the_plots(toy):
    results, card = toy
    assert report(results, card) == 0
    text = card.read_text()
    assert text.startswith("# Card\n\nbefore\n") and text.endswith(f"{CARD_END}\n\nafter\n") and "stale" not in text
    assert "### parity (training length 4)" in text
    link = "[parity_toy](results/parity_toy)"
    # run, model, layers, parameters, steps, time, seed, acc 1x/2x/4x, >= 0.9 up to, iterations 1x/2x/4x
    assert (f"| {link} | fpmamba | 1 | 1,234 | 5 | 12 s / 1 s | 0 | 0.950 @4 | 0.800 @8 | 0.200 @16 | 4 "
            "| 7.0 / 11.0 / 19.0 |") in text
    assert (f"| {link} | lstm | 1 | 567 | 5 | 12 s / 1 s | 0 | 0.500 @4 | 0.000 @8 | 0.000 @16 | — "
            "| — / — / — |") in text
    assert "Command: `fpmamba task train --task parity`" in text and "date 2026-01-02" in text
    assert "| 4* | 0.950 | 7.0 | 0.500 |" in text  # the per-length table, training length starred
    for name in ("accuracy_vs_length.png", "iterations_vs_length.png"):
        assert (results / "parity_toy" / name).stat().st_size > 0
        assert f"](results/parity_toy/{name})" in text


def test_the_card_says_what_a_recorded_command_needs_today_to_repeat_its_run(toy):
    """The toy run recorded 300 steps, fpmamba and lstm and train length 4; its command, given today, starts from
    the CLI's parity setting, so the card names the flags that rebuild the run (and a command that fails, why)."""
    results, card = toy
    run_json = results / "parity_toy" / "run.json"
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "command": f"fpmamba task train --task parity --output-dir "
                                                       f"{results / 'parity_toy'}"}))
    assert report(results, card) == 0
    line = next(line for line in card.read_text().splitlines() if line.startswith("Given today"))
    for flag in ("--steps 300", "--models fpmamba lstm", "--train-length 4"):
        assert flag in line
    run_json.write_text(json.dumps(meta))  # the toy's own command lacks --output-dir
    assert report(results, card) == 0
    assert "Given today, this command fails: fpmamba task train: give --config, or --task with --output-dir." in (
        card.read_text())


def test_the_per_length_table_adds_generated_accuracy_where_recorded(tmp_path):
    folder = tmp_path / "results" / "copy_toy"
    write_toy_run(folder)
    payload = json.loads((folder / "results.json").read_text())
    payload["config"]["task"] = "copy"
    for rows in payload["results"].values():
        for row in rows:
            row["metrics"] = {"string_acc": row["accuracy"], "ar_string_acc": row["accuracy"] / 2}
    (folder / "results.json").write_text(json.dumps(payload))
    card = tmp_path / "CARD.md"
    card.write_text(f"{CARD_BEGIN}\n{CARD_END}\n")
    assert report(tmp_path / "results", card) == 0
    text = card.read_text()
    assert ("| length | fpmamba acc | fpmamba generated acc | fpmamba iterations | lstm acc | lstm generated acc |"
            in text)
    assert "| 4* | 0.950 | 0.475 | 7.0 | 0.500 | 0.250 |" in text


def test_the_overview_groups_seeds_of_one_setting_and_keeps_other_settings_apart(toy):
    results, card = toy
    write_toy_run(results / "parity_toy_seed1", seed=1)
    write_toy_run(results / "parity_toy_longer", steps=600)
    assert report(results, card) == 0
    text = card.read_text()
    # task, model (label), runs, learned at the training length, per seed the longest length >= 0.9, folders
    assert ("| parity | fpmamba (mamba2, householder r2, d64, 1 layer, 300 steps, trained to length 4) | 2 | 2 of 2 "
            "| 0: 4, 1: 4 "
            "| parity_toy, parity_toy_seed1 |") in text
    assert ("| parity | lstm (d64, 1 layer, 300 steps, trained to length 4) | 2 | 0 of 2 | 0: —, 1: — "
            "| parity_toy, parity_toy_seed1 |") in text
    assert ("| parity | fpmamba (mamba2, householder r2, d64, 1 layer, 600 steps, trained to length 4) | 1 | 1 of 1 "
            "| 0: 4 ") in text


def test_check_detects_drift_of_the_card_and_of_the_results(toy, capsys):
    results, card = toy
    assert report(results, card, "--check") == 1  # the card still holds "stale"
    assert report(results, card) == 0
    assert report(results, card, "--check") == 0
    card.write_text(card.read_text().replace("0.950 @4", "0.990 @4", 1))
    assert report(results, card, "--check") == 1
    assert "+| [parity_toy]" in capsys.readouterr().out  # the diff shows what the files give
    assert report(results, card) == 0
    payload = json.loads((results / "parity_toy" / "results.json").read_text())
    payload["results"]["lstm"][0]["accuracy"] = 0.5
    (results / "parity_toy" / "results.json").write_text(json.dumps(payload))
    assert report(results, card, "--check") == 1


def test_longest_solved_stops_at_the_first_length_below_the_threshold():
    rows = [LengthResult(n, acc, {}, None, None) for n, acc in ((2, 0.95), (4, 0.5), (6, 0.99))]
    assert longest_solved(rows, 1) == 2
    assert longest_solved(rows[1:], 1) is None


def test_longest_solved_counts_from_the_shortest_trained_length():
    rows = [LengthResult(n, acc, {}, None, None) for n, acc in ((2, 0.4), (5, 0.95), (8, 0.91), (11, 0.5))]
    assert longest_solved(rows, 1) is None
    assert longest_solved(rows, 5) == 8  # length 2 lies below the training range
    assert longest_solved(rows, 12) is None  # nothing evaluated from there


def test_the_committed_model_card_is_in_sync_with_docs_results():
    assert report(ROOT / "docs" / "results", ROOT / "MODEL_CARD.md", "--check") == 0
