"""fpmamba-hf: Fixed-Point Mamba as a transformers model.

Importing this package registers model_type "fp_mamba" with AutoConfig, AutoModel and AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .callbacks import FixedPointLogCallback
from .configuration_fpmamba import FPMambaConfig
from .modeling_fpmamba import FPMambaForCausalLM, FPMambaModel, FPMambaPreTrainedModel

AutoConfig.register(FPMambaConfig.model_type, FPMambaConfig, exist_ok=True)
AutoModel.register(FPMambaConfig, FPMambaModel, exist_ok=True)
AutoModelForCausalLM.register(FPMambaConfig, FPMambaForCausalLM, exist_ok=True)

__all__ = ["FixedPointLogCallback", "FPMambaConfig", "FPMambaForCausalLM", "FPMambaModel", "FPMambaPreTrainedModel"]
