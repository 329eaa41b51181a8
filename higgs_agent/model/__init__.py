"""Loading Higgs Audio v2 through transformers, tiny offline models, prompts.

The loader's names are imported on first use: `higgs_agent.model.sources` (checking a model folder before
anything heavy loads) must not pull torch and transformers in with the package."""

from typing import TYPE_CHECKING, Any

from higgs_agent.model.errors import (
    ModelLoadError,
    ModelNotFoundError,
    OutOfGPUMemoryError,
    WrongModelTypeError,
)
from higgs_agent.model.sources import DEFAULT_CODEC, DEFAULT_MODEL

if TYPE_CHECKING:
    from higgs_agent.model.loader import HiggsBundle, load_higgs

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


def __getattr__(name: str) -> Any:  # noqa: ANN401 - the loader's objects
    if name in ("HiggsBundle", "load_higgs"):
        from higgs_agent.model import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'higgs_agent.model' has no attribute {name!r}")
