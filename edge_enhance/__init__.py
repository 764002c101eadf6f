"""edge-enhance: on-device photo enhancement with exact, memory-bounded tiling."""
from .card import ModelCard
from .errors import (
    BackendUnavailableError,
    ConfigError,
    EdgeEnhanceError,
    EngineError,
    ImageInputError,
    ModelFormatError,
    OutputError,
    UnsupportedOpError,
)

__version__ = "0.1.0"


def __getattr__(name):
    # Enhancer pulls in the pipeline; keep `import edge_enhance` cheap for the CLI's start-up.
    if name == "Enhancer":
        from .enhancer import Enhancer

        return Enhancer
    raise AttributeError(name)


__all__ = [
    "Enhancer", "ModelCard", "EdgeEnhanceError", "ConfigError", "ModelFormatError", "UnsupportedOpError",
    "BackendUnavailableError", "ImageInputError", "OutputError", "EngineError",
]
