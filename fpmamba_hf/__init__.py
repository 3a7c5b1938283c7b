"""fpmamba-hf: Fixed-Point Mamba as a transformers model.

Importing this package registers model_type "fp_mamba" with AutoConfig, AutoModel and AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_fpmamba import FPMambaConfig
from .modeling_fpmamba import FPMambaForCausalLM, FPMambaModel, FPMambaPreTrainedModel

AutoConfig.register(FPMambaConfig.model_type, FPMambaConfig, exist_ok=True)
AutoModel.register(FPMambaConfig, FPMambaModel, exist_ok=True)
AutoModelForCausalLM.register(FPMambaConfig, FPMambaForCausalLM, exist_ok=True)


def __getattr__(name: str):
    """`FixedPointLogCallback` is imported on first use: it brings transformers' Trainer stack (and peft, where
    installed), which loading or running the model does not need."""
    if name == "FixedPointLogCallback":
        from .callbacks import FixedPointLogCallback

        return FixedPointLogCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["FixedPointLogCallback", "FPMambaConfig", "FPMambaForCausalLM", "FPMambaModel", "FPMambaPreTrainedModel"]
