"""edge-enhance: on-device photo enhancement with exact, memory-bounded tiling."""
from .card import ModelCard
from .errors import (
    BackendUnavailableError,
    ConfigError,
    EdgeEnhanceError,
    EngineError,
    ImageInputError,
    ModelChoiceError,
    ModelFormatError,
    OutputError,
    UnsupportedOpError,
)

__version__ = "0.1.0"


def __getattr__(name):
    # Enhancer and Pipeline pull in numpy and the engines; keep `import edge_enhance` cheap for the CLI's start-up.
    if name == "Enhancer":
        from .enhancer import Enhancer

        return Enhancer
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)


def __dir__():
    return sorted(set(globals()) | set(__all__))  # the lazy names too, for dir(), help() and completion


__all__ = [
    "Enhancer", "Pipeline", "ModelCard", "EdgeEnhanceError", "ConfigError", "ModelFormatError", "ModelChoiceError",
    "UnsupportedOpError", "BackendUnavailableError", "ImageInputError", "OutputError", "EngineError",
]
