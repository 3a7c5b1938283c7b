"""`fpmamba task report`: the results README (every run), the card's headline table and the plots, rebuilt from the
results folders."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from fpmamba_lab.cli import main
from fpmamba_lab.harness import ExperimentConfig, LengthResult, TrainSettings
from fpmamba_lab.report import CARD_BEGIN, CARD_END, INDEX_BEGIN, INDEX_END, longest_solved

HEADER = f"---\nlicense: apache-2.0\n{INDEX_BEGIN}\nstale: 1\n{INDEX_END}\n---\n"  # a card's YAML header

ROOT = Path(__file__).resolve().parents[3]
# A toy run: parity, train length 4 (shortest training row 3), lengths 2..16; FP-Mamba stays >= 0.9 up to 4, the LSTM
# only at 2, below the training range, which the report does not count.
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
    card.write_text(f"{HEADER}# Card\n\nbefore\n\n{CARD_BEGIN}\nstale\n{CARD_END}\n\nafter\n")
    return tmp_path / "results", card


def report(results: Path, card: Path, *flags: str) -> int:
    return main(["task", "report", "--results-dir", str(results), "--card", str(card), *flags])


def readme(results: Path) -> str:
    return (results / "README.md").read_text()


def test_report_writes_the_task_table_and_the_plots(toy):
    results, card = toy
    assert report(results, card) == 0
    text = readme(results)
    assert text.startswith("# Results: every run\n")
    assert "## parity (training length 4)" in text
    link = "[parity_toy](parity_toy)"
    # run, model, layers, parameters, steps, time, seed, acc 1x/2x/4x, >= 0.9 up to, iterations 1x/2x/4x
    assert (f"| {link} | fpmamba | 1 | 1,234 | 5 | 12 s / 1 s | 0 | 0.950 @4 | 0.800 @8 | 0.200 @16 | 4 "
            "| 7.0 / 11.0 / 19.0 |") in text
    assert (f"| {link} | lstm | 1 | 567 | 5 | 12 s / 1 s | 0 | 0.500 @4 | 0.000 @8 | 0.000 @16 | — "
            "| — / — / — |") in text
    assert "Command: `fpmamba task train --task parity`" in text and "date 2026-01-02" in text
    assert "| 4* | 0.950 | 7.0 | 0.500 |" in text  # the per-length table, training length starred
    for name in ("accuracy_vs_length.png", "iterations_vs_length.png"):
        assert (results / "parity_toy" / name).stat().st_size > 0
        assert f"](parity_toy/{name})" in text


def test_the_readme_says_what_a_recorded_command_needs_today_to_repeat_its_run(toy):
    """The toy run recorded 300 steps, fpmamba and lstm and train length 4; its command, given today, starts from
    the CLI's parity setting, so the README names the flags that rebuild the run (and a command that fails, why)."""
    results, card = toy
    run_json = results / "parity_toy" / "run.json"
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "command": f"fpmamba task train --task parity --output-dir "
                                                       f"{results / 'parity_toy'}"}))
    assert report(results, card) == 0
    line = next(line for line in readme(results).splitlines() if line.startswith("Given today"))
    for flag in ("--steps 300", "--models fpmamba lstm", "--train-length 4"):
        assert flag in line
    run_json.write_text(json.dumps(meta))  # the toy's own command lacks --output-dir
    assert report(results, card) == 0
    assert "Given today, this command fails: fpmamba task train: give --config, or --task with --output-dir." in (
        readme(results))


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
    card.write_text(f"{HEADER}{CARD_BEGIN}\n{CARD_END}\n")
    assert report(tmp_path / "results", card) == 0
    text = readme(tmp_path / "results")
    assert ("| length | fpmamba acc | fpmamba generated acc | fpmamba iterations | lstm acc | lstm generated acc |"
            in text)
    assert "| 4* | 0.950 | 0.475 | 7.0 | 0.500 | 0.250 |" in text


def test_the_overview_groups_seeds_of_one_setting_and_keeps_other_settings_apart(toy):
    results, card = toy
    write_toy_run(results / "parity_toy_seed1", seed=1)
    write_toy_run(results / "parity_toy_longer", steps=600)
    assert report(results, card) == 0
    text = readme(results)
    # task, model (label), runs, learned at the training length, per seed the longest length >= 0.9, folders
    assert ("| parity | fpmamba (mamba2, householder r2, d64, 1 layer, 300 steps, trained to length 4) | 2 | 2 of 2 "
            "| 0: 4, 1: 4 "
            "| parity_toy, parity_toy_seed1 |") in text
    assert ("| parity | lstm (d64, 1 layer, 300 steps, trained to length 4) | 2 | 0 of 2 | 0: —, 1: — "
            "| parity_toy, parity_toy_seed1 |") in text
    assert ("| parity | fpmamba (mamba2, householder r2, d64, 1 layer, 600 steps, trained to length 4) | 1 | 1 of 1 "
            "| 0: 4 ") in text


def test_the_card_gets_only_the_headline_table_of_the_best_setting_per_kind(toy):
    """Per task and training length, one row per kind: its best setting (most seeds learned, then accuracy at 2x),
    seeds min-max, accuracy at 1x / 2x / 3x (the shortest evaluated length >= the multiple), iterations at 1x / 3x."""
    results, card = toy
    write_toy_run(results / "parity_toy_seed1", seed=1)
    worse = results / "parity_toy_longer"
    write_toy_run(worse, steps=600)
    payload = json.loads((worse / "results.json").read_text())
    for row in payload["results"]["fpmamba"]:
        row["accuracy"] = 0.1  # learns nothing: not the headline
    (worse / "results.json").write_text(json.dumps(payload))
    assert report(results, card) == 0
    text = card.read_text()
    assert text.startswith("---\nlicense: apache-2.0\n") and "# Card\n\nbefore\n" in text
    assert text.endswith(f"{CARD_END}\n\nafter\n") and "stale" not in text
    region = text[text.index(CARD_BEGIN):text.index(CARD_END)]
    rows = [line for line in region.splitlines() if line.startswith("| parity")]
    folders = "[parity_toy](results/parity_toy), [parity_toy_seed1](results/parity_toy_seed1)"
    # task, trained to, model, seeds learned, acc 1x / 2x / 3x (12 was evaluated; 3x = 12), iterations 1x / 3x, runs
    assert rows == [
        f"| parity | 4 | fpmamba (mamba2, householder r2, d64, 1 layer, 300 steps) | 2 / 2 | 0.95 | 0.80 | 0.60 "
        f"| 7.0 / 15.0 | {folders} |",
        f"| parity | 4 | lstm (d64, 1 layer, 300 steps) | 0 / 2 | 0.50 | 0.00 | 0.00 | — / — | {folders} |",
    ]
    assert "[results/README.md](results/README.md)" in region
    assert "###" not in region and "Command:" not in region  # the per-run material stays in the README


def test_the_headline_gives_min_max_over_seeds_and_the_length_where_no_multiple_was_evaluated(toy):
    results, card = toy
    write_toy_run(results / "parity_toy_seed1", seed=1)
    payload = json.loads((results / "parity_toy_seed1" / "results.json").read_text())
    for rows in payload["results"].values():
        rows[1]["accuracy"] = 0.91  # length 4 = 1x
        del rows[3]  # length 12 = 3x not evaluated: 16 is the shortest length >= 3x
    (results / "parity_toy_seed1" / "results.json").write_text(json.dumps(payload))
    assert report(results, card) == 0
    row = next(line for line in card.read_text().splitlines() if line.startswith("| parity | 4 | fpmamba"))
    assert "| 2 / 2 | 0.91–0.95 | 0.80 | 0.20–0.60 @12/16 |" in row


def test_check_detects_drift_of_the_readme_the_card_and_the_results(toy, capsys):
    results, card = toy
    assert report(results, card, "--check") == 1  # the card still holds "stale", the README does not exist
    assert report(results, card) == 0
    assert report(results, card, "--check") == 0
    card.write_text(card.read_text().replace("| 0.95 |", "| 0.99 |", 1))
    assert report(results, card, "--check") == 1
    assert "+| parity | 4 | fpmamba" in capsys.readouterr().out  # the diff shows what the files give
    assert report(results, card) == 0
    (results / "README.md").write_text(readme(results).replace("0.950 @4", "0.990 @4", 1))
    assert report(results, card, "--check") == 1
    assert "+| [parity_toy]" in capsys.readouterr().out
    assert report(results, card) == 0
    payload = json.loads((results / "parity_toy" / "results.json").read_text())
    payload["results"]["lstm"][0]["accuracy"] = 0.5
    (results / "parity_toy" / "results.json").write_text(json.dumps(payload))
    assert report(results, card, "--check") == 1


def test_the_model_index_holds_fpmamba_s_headline_accuracy_lowest_over_seeds(toy):
    results, card = toy
    write_toy_run(results / "parity_toy_seed1", seed=1)
    payload = json.loads((results / "parity_toy_seed1" / "results.json").read_text())
    payload["results"]["fpmamba"][1]["accuracy"] = 0.91  # length 4 = 1x
    (results / "parity_toy_seed1" / "results.json").write_text(json.dumps(payload))
    assert report(results, card) == 0
    text = card.read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert "stale" not in header and header["license"] == "apache-2.0"
    (entry,) = header["model-index"]
    (result,) = entry["results"]  # FP-Mamba's only: the LSTM is a baseline
    assert result["dataset"]["name"] == "parity, trained to length 4"
    assert [(m["value"], m["name"]) for m in result["metrics"]] == [
        (0.91, "accuracy at length 4 (1x the training length), lowest of 2 seeds"),
        (0.6, "accuracy at length 12 (3x the training length), lowest of 2 seeds"),
    ]


@pytest.mark.parametrize("kept", ["results", "model-index"])
def test_a_card_without_either_region_s_markers_is_refused(toy, kept):
    results, card = toy
    card.write_text(HEADER if kept == "model-index" else f"# Card\n\n{CARD_BEGIN}\n{CARD_END}\n")
    with pytest.raises(ValueError, match="no results region" if kept == "model-index" else "no model-index region"):
        report(results, card)


def test_longest_solved_stops_at_the_first_length_below_the_threshold():
    rows = [LengthResult(n, acc, {}, None, None) for n, acc in ((2, 0.95), (4, 0.5), (6, 0.99))]
    assert longest_solved(rows, 1) == 2
    assert longest_solved(rows[1:], 1) is None


def test_longest_solved_counts_from_the_shortest_trained_length():
    rows = [LengthResult(n, acc, {}, None, None) for n, acc in ((2, 0.4), (5, 0.95), (8, 0.91), (11, 0.5))]
    assert longest_solved(rows, 1) is None
    assert longest_solved(rows, 5) == 8  # length 2 lies below the training range
    assert longest_solved(rows, 12) is None  # nothing evaluated from there


def test_the_committed_results_readme_and_model_card_are_in_sync_with_docs_results():
    assert report(ROOT / "docs" / "results", ROOT / "MODEL_CARD.md", "--check") == 0
