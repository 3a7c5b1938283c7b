"""Fixed-point telemetry in the logs of a plain transformers Trainer.

Trainer keeps only the loss (training) and the logits (evaluation) of a model's outputs; FP-Mamba's `fp_iterations`
and `fp_residual` are ignored at inference (`FPMambaConfig.keys_to_ignore_at_inference`) so that an ordinary
`compute_metrics` sees plain logits. This callback puts them back into the logs: a forward hook on the model
accumulates them on the device (no host sync per step), and each training or evaluation log gains
    fp_iterations_mean, fp_iterations_max, fp_residual_max       (prefixed "eval_" for evaluation logs)
    fp_jacobian_penalty                                          (training with fp_jacobian_reg > 0: its mean)
over the forwards since the previous log of the same kind.

    trainer = Trainer(model=model, args=args, ..., callbacks=[FixedPointLogCallback()])

The values reach the printed logs, `trainer.state.log_history` and the metrics `evaluate()` returns. Reporting
integrations (`report_to`) run before user callbacks; `FixedPointLogCallback.attach(trainer)` puts the callback
first so that they see the values too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from transformers.trainer_callback import TrainerCallback

if TYPE_CHECKING:
    from transformers import Trainer


class _Totals:
    """Running telemetry of one kind of forward (training or evaluation), kept on the model's device."""

    def __init__(self) -> None:
        self.forwards = 0
        self.iterations_sum: torch.Tensor | None = None
        self.iterations_max: torch.Tensor | None = None
        self.residual_max: torch.Tensor | None = None
        self.penalty_sum: torch.Tensor | None = None

    def add(self, iterations: torch.Tensor, residual: torch.Tensor | None, penalty: torch.Tensor | None) -> None:
        it = iterations.detach().float()
        mean, top = it.mean(), it.max()
        self.iterations_sum = mean if self.iterations_sum is None else self.iterations_sum + mean
        self.iterations_max = top if self.iterations_max is None else torch.maximum(self.iterations_max, top)
        if residual is not None:
            r = residual.detach().float().max()
            self.residual_max = r if self.residual_max is None else torch.maximum(self.residual_max, r)
        if penalty is not None:
            p = penalty.detach().float()
            self.penalty_sum = p if self.penalty_sum is None else self.penalty_sum + p
        self.forwards += 1

    def pop(self, prefix: str) -> dict[str, float]:
        """The logged values (one host sync) and a reset."""
        if not self.forwards:
            return {}
        values = {f"{prefix}fp_iterations_mean": float(self.iterations_sum) / self.forwards,
                  f"{prefix}fp_iterations_max": float(self.iterations_max)}
        if self.residual_max is not None:
            values[f"{prefix}fp_residual_max"] = float(self.residual_max)
        if self.penalty_sum is not None:
            values[f"{prefix}fp_jacobian_penalty"] = float(self.penalty_sum) / self.forwards
        self.__init__()
        return values


class FixedPointLogCallback(TrainerCallback):
    """Adds fixed-point iterations and residuals to Trainer's training and evaluation logs."""

    def __init__(self) -> None:
        self._hooked: nn.Module | None = None
        self._train = _Totals()
        self._eval = _Totals()

    @classmethod
    def attach(cls, trainer: "Trainer") -> "FixedPointLogCallback":
        """Add a new callback to `trainer` ahead of every other one (reporting integrations included)."""
        callback = cls()
        trainer.callback_handler.callbacks.insert(0, callback)
        callback._hook(trainer.model)
        return callback

    def _hook(self, model: nn.Module | None) -> None:
        if model is None or self._hooked is model:
            return
        model.register_forward_hook(self._record)
        self._hooked = model

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        iterations = getattr(output, "fp_iterations", None)
        if iterations is not None:
            totals = self._train if module.training else self._eval
            totals.add(iterations, getattr(output, "fp_residual", None), getattr(output, "fp_jacobian_penalty", None))

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._hook(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook(model)

    def on_prediction_step(self, args, state, control, model=None, **kwargs):
        self._hook(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        evaluation = any(k.startswith("eval_") for k in logs)
        if not evaluation and "loss" not in logs:
            return
        values = self._eval.pop("eval_") if evaluation else self._train.pop("")
        logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)
