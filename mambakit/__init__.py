"""mambakit: selective state space models (Mamba) for genomics, audio, vision and text.

Importing it never needs a GPU, Triton or mamba-ssm; those load when a backend that needs them is used.
"""

from .models import MambaConfig, MambaLMHeadModel, SamplingConfig, generate, load_model, save_pretrained
from .ops import available_backends, selective_scan

__version__ = "0.1.0"

__all__ = [
    "MambaConfig",
    "MambaLMHeadModel",
    "SamplingConfig",
    "__version__",
    "available_backends",
    "generate",
    "load_model",
    "save_pretrained",
    "selective_scan",
]
