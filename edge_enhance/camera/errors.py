"""Errors raised by the camera preview loop; all are EdgeEnhanceError so the CLI reports them alike."""
from ..errors import BackendUnavailableError, ConfigError, EdgeEnhanceError, OutputError

__all__ = ["BackendUnavailableError", "ConfigError", "EdgeEnhanceError", "OutputError", "SourceError",
           "SourceLostError", "SinkError"]


class SourceError(EdgeEnhanceError):
    """A source cannot be opened or parsed (missing file, no camera, bad spec)."""


class SourceLostError(SourceError):
    """A live source stopped delivering frames and did not come back within the reconnect budget."""


class SinkError(EdgeEnhanceError):
    """A sink cannot be opened or failed while running (no display, unwritable file, port in use)."""
