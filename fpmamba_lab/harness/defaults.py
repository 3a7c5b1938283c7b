"""The CLI's starting settings per task family, used when `fpmamba task train` gets no `--config` recipe.

Each entry has the shape of a recipe (examples/recipes/*.json, read by `runner.config_from_dict`): top-level
ExperimentConfig fields plus nested "model" (ModelSpec) and "training" (TrainSettings) fields. Only what differs
from ExperimentConfig's, the harness's (models.HARNESS_DEFAULTS) and TrainSettings' defaults is listed; flags given
on the command line override every value. Each entry is the setting of a run in docs/results, which the tests
rebuild from it.
"""

from __future__ import annotations

from typing import Any

from ..tasks import TaskSpec

# Both measured settings: train length 16, evaluated at about 16 lengths up to 4x (ExperimentConfig's eval_factor)
# on 200 fresh rows each.
_CPU_EVALUATION: dict[str, Any] = {"train_length": 16, "eval_points": 16, "eval_examples": 200, "eval_batch_size": 200}

# Word problems (any group): the setting measured at CPU scale in docs/results (A5 seeds 0, 1, 2 learned and stayed
# >= 0.9 to >= 3x the training length; A4 at train length 12, seeds 0, 1, 2; docs/tasks.md, "Word problems: the
# CLI's defaults (measured)"). 2,500 steps of batch 64 on fresh rows take about 25 minutes on one CPU core.
WORD_PROBLEM_CPU: dict[str, Any] = {
    **_CPU_EVALUATION,
    "model": {"hidden_size": 128, "head_dim": 32, "chunk_size": 64, "mixer_rank": 4, "fp_max_iter_eval": 128},
    "training": {"steps": 2500, "learning_rate": 1e-3},
}

# Parity (only the last bit's output supervised): the setting of docs/results/parity_backward4 (1.000 up to 3.6x the
# training length). Four differentiated applications of the map (fp_backward_steps): with the one-step gradient the
# same model stayed at chance (docs/results/parity_cpu), as the parity of early bits reaches the supervised output
# only through y (docs/method.md, "When one step is not enough"). About 25 minutes of training on one CPU core.
PARITY_CPU: dict[str, Any] = {
    **_CPU_EVALUATION,
    "model": {"chunk_size": 64, "fp_max_iter_eval": 128, "fp_backward_steps": 4},
    "training": {"steps": 2000},
}

# Copying: the setting of docs/results/copy_steps3000 (strings of 5..20 letters, evaluated to 2x), not learned at
# the training length: FP-Mamba stayed >= 0.9 up to 10 letters and scored 0.39 at 20 (with copy_cpu's 1,500 steps:
# 0.17). It trained in 57 minutes on one CPU core; the paper's 5..50 letters were not learned at this width
# (docs/results/copy_L50_*).
COPY_CPU: dict[str, Any] = {
    "min_train_length": 5, "train_length": 20, "eval_factor": 2, "eval_points": 12, "eval_examples": 100,
    "eval_batch_size": 100,
    "model": {"hidden_size": 128, "head_dim": 32, "chunk_size": 64, "mixer_rank": 4, "fp_max_iter_eval": 64},
    "training": {"steps": 3000, "learning_rate": 1e-3},
}

# Modular arithmetic with brackets: the setting of docs/results/modular_L12_steps6000 (expressions of 3..12 tokens,
# evaluated to 2x; 2 layers), partly learned: scaled accuracy 1.000 at 5 and 8 tokens, 0.852 at 12 (with
# modular_L12_steps3000's 3,000 steps: 0.542-0.667 over three seeds). Only the answer is supervised, so the gradient
# differentiates four applications of the map as for parity. FP-Mamba trained in 67 minutes on one CPU core.
MODULAR_ARITHMETIC_CPU: dict[str, Any] = {
    "min_train_length": 3, "train_length": 12, "eval_factor": 2, "eval_points": 10, "eval_examples": 500,
    "eval_batch_size": 500,
    "model": {"num_layers": 2, "chunk_size": 64, "mixer_rank": 4, "fp_max_iter_eval": 128, "fp_backward_steps": 4},
    "training": {"steps": 6000, "learning_rate": 1e-3},
}

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "word_problem": WORD_PROBLEM_CPU, "parity": PARITY_CPU, "copy": COPY_CPU,
    "modular_arithmetic": MODULAR_ARITHMETIC_CPU,
}

# Where one task of a family needs more than the family's setting, by task name (applied over it, section by section).
# S5 (120 elements, twice A5's): in 2,500 steps it learned only the first few positions; with 6,000 (the same
# schedule stretched) it was learned (docs/results/s5_steps6000*; docs/tasks.md, "Word problems: the CLI's defaults").
TASK_OVERRIDES: dict[str, dict[str, Any]] = {"S5": {"training": {"steps": 6000}}}


def task_defaults(task: TaskSpec) -> dict[str, Any]:
    """The recipe-shaped starting settings of `task`: its family's ({} where the family has none), with the task's
    own TASK_OVERRIDES merged into the nested "model" / "training" sections."""
    setting = dict(FAMILY_DEFAULTS.get(task.family, {}))
    for section, values in TASK_OVERRIDES.get(task.name, {}).items():
        setting[section] = {**setting.get(section, {}), **values}
    return setting


__all__ = [
    "COPY_CPU", "FAMILY_DEFAULTS", "MODULAR_ARITHMETIC_CPU", "PARITY_CPU", "TASK_OVERRIDES", "WORD_PROBLEM_CPU",
    "task_defaults",
]
