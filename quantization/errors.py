"""Errors of quantisation and pruning: the runtime's classes, so callers catch one hierarchy."""
from edge_enhance.errors import ConfigError, EdgeEnhanceError, ImageInputError, ModelFormatError


class CalibrationError(ConfigError):
    """The calibration data cannot be used (missing or empty folder, too few images)."""


class QualityBarError(EdgeEnhanceError):
    """A quantised or pruned model misses the quality bar it was asked to meet."""


__all__ = ["CalibrationError", "ConfigError", "EdgeEnhanceError", "ImageInputError", "ModelFormatError",
           "QualityBarError"]
