"""Training and length-generalisation harness for the paper's synthetic tasks (docs/method.md, "The paper's tasks").

`run_experiment(ExperimentConfig(...))` trains FP-Mamba and/or baselines with transformers' Trainer and writes
results.json / results.csv / table.txt / accuracy_vs_length.png / iterations_vs_length.png. The `fpmamba`
console script (fpmamba_lab.cli) and examples/demo.py are thin layers over it. Importing this package registers
the LSTM baseline (model_type "fpmamba_lstm") with the Auto classes.
"""

from .data import collate, eval_lengths
from .evaluation import LengthResult, evaluate_lengths, primary_metric
from .lstm import LSTMConfig, LSTMForCausalLM
from .models import HARNESS_DEFAULTS, MODEL_KINDS, ModelSpec, build_model, count_parameters
from .reporting import format_table, load_results_csv, plot_results, write_results
from .runner import ExperimentConfig, ExperimentResult, config_from_dict, load_config, run_evaluation, run_experiment
from .training import TrainSettings, train

__all__ = [
    "HARNESS_DEFAULTS", "MODEL_KINDS", "ExperimentConfig", "ExperimentResult", "LSTMConfig", "LSTMForCausalLM",
    "LengthResult", "ModelSpec", "TrainSettings", "build_model", "collate", "config_from_dict", "count_parameters",
    "eval_lengths", "evaluate_lengths", "format_table", "load_config", "load_results_csv", "plot_results",
    "primary_metric", "run_evaluation", "run_experiment", "train", "write_results",
]
