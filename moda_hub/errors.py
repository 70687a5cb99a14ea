"""Errors a user can act on. Every message says what was wrong and what to do.

All derive from :class:`ModaError`, so callers (CLI, Space) can catch one type and show
``str(err)`` as a single line.
"""
from __future__ import annotations


class ModaError(Exception):
    """Base class of moda-hub's user-facing errors."""


class ImageDecodeError(ModaError, ValueError):
    """The portrait could not be read as an image."""


class NoFaceFoundError(ModaError, ValueError):
    """No usable face in the portrait."""


class FaceIndexError(ModaError, IndexError):
    """``face_index`` does not name one of the faces found."""


class AudioDecodeError(ModaError, ValueError):
    """The speech could not be decoded as audio."""


class InputTooLongError(ModaError, ValueError):
    """Audio or text is longer than the configured limit."""


class TextToSpeechError(ModaError, RuntimeError):
    """espeak-ng could not speak the text."""


class InvalidParameterError(ModaError, ValueError):
    """A parameter is out of its valid range."""


class WeightsError(ModaError, RuntimeError):
    """Weights are missing, corrupted or do not fit the model; never run with random weights."""


class OutputPathError(ModaError, OSError):
    """The output cannot be written where it was asked for."""
