"""fpmamba-lab: the lab beside the model library (`pip install -e .[lab]`).

- `fpmamba_lab.tasks`: the paper's synthetic tasks (word problems, parity, copying, modular arithmetic) as
  datasets.Dataset generators.
- `fpmamba_lab.harness`: train FP-Mamba and its baselines (diagonal ablation, Mamba-2, LSTM) with transformers'
  Trainer and evaluate length generalisation; results on disk and plots.
- `fpmamba_lab.report`: docs/results/README.md (every run) and the model card's headline table, from the results
  folders.
- `fpmamba_lab.cli`: the `fpmamba` console script over all three.

The model library (`fpmamba_hf`, `fpmamba_core`) never imports the lab.
"""
