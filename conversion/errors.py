"""Errors of the converter: the runtime's classes, so callers catch one hierarchy."""
from edge_enhance.errors import ConfigError, EdgeEnhanceError, ModelFormatError, UnsupportedOpError


class VerificationError(EdgeEnhanceError):
    """A converted model does not compute what its source computes (beyond tolerance)."""


__all__ = ["ConfigError", "EdgeEnhanceError", "ModelFormatError", "UnsupportedOpError", "VerificationError"]
