"""MODEL_CARD.md's usage block runs as written (a reader copies it), and its YAML header parses."""

import re
from pathlib import Path

import yaml

CARD = Path(__file__).resolve().parents[2] / "MODEL_CARD.md"


def test_the_card_s_usage_block_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", CARD.read_text(), re.S)
    assert blocks, "the card has no python usage block"
    monkeypatch.chdir(tmp_path)  # it saves a model folder
    exec(compile(blocks[0], str(CARD), "exec"), {"__name__": "__card__"})
    assert capsys.readouterr().out.strip() == "torch.Size([2, 16]) torch.Size([2, 4, 1])"  # as its comment says
    assert (tmp_path / "fp-mamba-tiny" / "config.json").exists()


def test_the_card_s_header_is_hub_metadata_with_a_model_index():
    header = yaml.safe_load(CARD.read_text().split("---\n")[1])
    assert header["library_name"] == "transformers" and header["pipeline_tag"] == "text-generation"
    results = header["model-index"][0]["results"]
    assert results and all(m["type"] == "accuracy" and 0 <= m["value"] <= 1 for r in results for m in r["metrics"])
