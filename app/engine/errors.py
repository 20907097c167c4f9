"""Errors raised by the engine. They carry no HTTP meaning; services translate them."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class AudioDecodeError(EngineError):
    """The input could not be decoded as audio, or it holds no samples."""


class ModelImportError(EngineError):
    """A base model could not be found, converted or validated."""


class ModelLoadError(EngineError):
    """A converted model directory could not be loaded."""
