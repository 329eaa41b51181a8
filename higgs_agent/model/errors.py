"""Errors raised while loading models. Each message says what went wrong and what to do about it."""


class ModelLoadError(RuntimeError):
    """A model, codec or tokenizer could not be loaded."""


class ModelNotFoundError(ModelLoadError):
    """The named folder does not exist, or the hub id could not be fetched."""


class WrongModelTypeError(ModelLoadError):
    """The folder holds a model, but not the kind that was asked for."""


class OutOfGPUMemoryError(ModelLoadError):
    """The model did not fit into the accelerator's memory."""
