"""Loading Higgs Audio v2 through transformers, tiny offline models, prompts."""

from higgs_agent.model.errors import (
    ModelLoadError,
    ModelNotFoundError,
    OutOfGPUMemoryError,
    WrongModelTypeError,
)
from higgs_agent.model.loader import (
    DEFAULT_CODEC,
    DEFAULT_MODEL,
    HiggsBundle,
    load_higgs,
)

__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_MODEL",
    "HiggsBundle",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutOfGPUMemoryError",
    "WrongModelTypeError",
    "load_higgs",
]
