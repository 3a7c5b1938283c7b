"""fpmamba-hf: Fixed-Point Mamba as a transformers model.

Importing this package registers model_type "fp_mamba" with AutoConfig, AutoModel and AutoModelForCausalLM.
"""

import transformers
from packaging.version import Version
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

# transformers 5.24 renamed the cache argument of forward() / generate() to `cache`, which this model does not read
# yet: decoding there would run without the recurrent state. Refuse at import (pyproject.toml pins the same range).
if Version(transformers.__version__).release[:2] >= (5, 24):
    raise ImportError(f"fpmamba-hf supports transformers 5.17 to 5.23, found {transformers.__version__}: "
                      "pip install 'transformers>=5.17,<5.24'")

from .callbacks import FixedPointLogCallback
from .configuration_fpmamba import FPMambaConfig
from .modeling_fpmamba import FPMambaForCausalLM, FPMambaModel, FPMambaPreTrainedModel

AutoConfig.register(FPMambaConfig.model_type, FPMambaConfig, exist_ok=True)
AutoModel.register(FPMambaConfig, FPMambaModel, exist_ok=True)
AutoModelForCausalLM.register(FPMambaConfig, FPMambaForCausalLM, exist_ok=True)

__all__ = ["FixedPointLogCallback", "FPMambaConfig", "FPMambaForCausalLM", "FPMambaModel", "FPMambaPreTrainedModel"]
