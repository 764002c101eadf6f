"""Errors of the benchmark harness."""
from edge_enhance.errors import ConfigError, EdgeEnhanceError


class BenchmarkError(EdgeEnhanceError):
    """A benchmark cannot start (inputs missing, output folder unwritable)."""


__all__ = ["BenchmarkError", "ConfigError"]
