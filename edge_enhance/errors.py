"""Every error the runtime raises on purpose; each names the file, node or value at fault."""


class EdgeEnhanceError(Exception):
    """Base class: anything the user can fix by changing input, model or options."""


class ConfigError(EdgeEnhanceError, ValueError):
    """An option or argument value is out of range or inconsistent (a pixel array of the wrong shape or
    type included)."""


class ModelFormatError(EdgeEnhanceError):
    """A model file is unreadable, of an unknown format, or lacks/contradicts its card."""


class ModelChoiceError(ModelFormatError, ConfigError):
    """The model given cannot be used as given: no such file or bundled name, or no card and no --card-task.
    An option to change, so the CLI exits 2 (nothing ran; a service restart cannot fix it)."""


class UnsupportedOpError(ModelFormatError):
    """A graph contains operations the converter or runtime cannot handle."""


class BackendUnavailableError(EdgeEnhanceError):
    """The engine a model needs is not installed; the message names the pip extra."""


class ImageInputError(EdgeEnhanceError):
    """An input image cannot be decoded, is too large, or is of an unsupported kind."""


class OutputError(EdgeEnhanceError):
    """An output cannot be written (folder missing or read-only, disk full, would overwrite input)."""


class EngineError(EdgeEnhanceError):
    """The engine failed while running a model (the run stops; no partial result is kept)."""


class NothingToDo(EdgeEnhanceError):
    """Auto mode at scale 1 found nothing to clean: no output is written (a copy would only be re-encoded)."""
