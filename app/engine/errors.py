"""Errors raised by the engine. They carry no HTTP meaning; services translate them."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class AudioDecodeError(EngineError):
    """The input could not be decoded as audio, or it holds no samples."""


class ModelImportError(EngineError):
    """A base model could not be found, converted or validated."""


class ModelLoadError(EngineError):
    """A converted model directory could not be loaded."""


class NumericError(EngineError):
    """A request's computation produced NaN or infinite values."""


class AdapterNumericError(NumericError):
    """A request's computation went non-finite under its adapter (the base model's stays
    finite, whatever its input): the adapter is to blame. Only that request fails."""
