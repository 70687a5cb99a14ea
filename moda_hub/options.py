"""Every user option of a generation, defined once: default, accepted range or choices, what it does.

The model is LivePortrait's ``argument_config.py``: one dataclass, one field per option, each
with its default and a one-line comment. The pipeline's signature and ``check_inputs``, the
``moda generate`` command line, the batch manifest's columns, the Space's ``AnimateOptions``
and its widgets all read :class:`GenerateOptions` (``field_spec(name)``) — change an option here
and every surface follows. The constants the options need (sample rate, default model, seed
range, the audio/text rule) live beside it.

Example:
    >>> from moda_hub.options import GenerateOptions, field_spec
    >>> GenerateOptions().blink_rate, field_spec("blink_rate").range
    (17.0, (0.0, 60.0))
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from moda_hub.errors import InvalidParameterError

#: Sample rate of all speech inside moda-hub (decoded, synthesised, heard by the models), Hz.
SAMPLE_RATE = 16000
#: The pipeline folder shipped with the repository (its audio_encoder also builds corpora).
SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained", "moda-base")
#: The pipeline folder (or Hub id) used when none is named: ``MODA_MODEL``, else :data:`SHIPPED_MODEL`.
DEFAULT_MODEL = os.environ.get("MODA_MODEL") or SHIPPED_MODEL
#: Generator seeds accepted (``torch.Generator().manual_seed`` takes up to 2**64 - 1; 2**63 - 1 keeps it signed).
SEED_RANGE = (0, 2 ** 63 - 1)
#: Words per minute espeak-ng accepts for ``text``.
SPEECH_RATE_RANGE = (80, 450)


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts. ``range``: (lo, hi) inclusive for numbers; ``choices``: the
    accepted values; ``help``: its one-line comment. A default of None means "decided per call"."""
    name: str
    default: Any
    range: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[Any, ...]] = None
    help: str = ""


def _opt(default, help: str, range=None, choices=None):
    return dataclasses.field(default=default, metadata={"range": range, "choices": choices, "help": help})


@dataclass
class GenerateOptions:
    """The options of one generation (pipeline keyword arguments, CLI flags, manifest columns, Space widgets)."""
    seed: int = _opt(0, "generator seed: blinks and head motion (the Space's variation i uses seed + i)",
                     range=SEED_RANGE)
    temperature: float = _opt(1.0, "scale of the sampled motion latent; 0 = the mean motion", range=(0.0, 3.0))
    fps: int = _opt(30, "output frame rate", choices=(24, 25, 30, 50, 60))
    output_size: Optional[int] = _opt(None, "256 / 512 square face crop, 0 = the full image pasted back; "
                                            "None = the full image up to 1 megapixel, else a 512 crop",
                                      choices=(0, 256, 512))
    mouth_scale: float = _opt(1.0, "lip motion amplitude (0 = lips still)", range=(0.0, 3.0))
    head_motion_scale: float = _opt(1.0, "head-pose and torso motion amplitude", range=(0.0, 5.0))
    blink_rate: float = _opt(17.0, "blinks per minute", range=(0.0, 60.0))
    still: bool = _opt(False, "head and torso still; lips and blinks kept", choices=(False, True))
    face_index: Optional[int] = _opt(None, "which face, left to right, in a group photo; None = the largest",
                                     range=(0, None))
    expression_scale: float = _opt(1.0, "portrait's own mouth and brow expression kept: 1 as photographed, "
                                        "0 neutral, up to 1.5 stronger", range=(0.0, 1.5))
    voice: str = _opt("en-us", "espeak-ng voice for text")
    speech_rate: int = _opt(165, "words per minute for text", range=SPEECH_RATE_RANGE)


def field_spec(name: str) -> OptionSpec:
    """The :class:`OptionSpec` of the option ``name`` (a :class:`GenerateOptions` field)."""
    for f in dataclasses.fields(GenerateOptions):
        if f.name == name:
            return OptionSpec(name, f.default, f.metadata["range"], f.metadata["choices"], f.metadata["help"])
    raise KeyError(name)


#: name -> :class:`OptionSpec` of every user option.
OPTIONS = {f.name: field_spec(f.name) for f in dataclasses.fields(GenerateOptions)}


def check_speech_source(audio, text, *, blank_text_is_none: bool = False,
                        none_message: str = "no speech given — pass exactly one of `audio` (a file or samples) "
                                            "or `text` to speak",
                        both_message: str = "both `audio` and `text` were given — pass exactly one of them",
                        none_error: type = InvalidParameterError) -> None:
    """The one rule for speech: exactly one of ``audio`` and ``text`` (None is "not given"; with
    ``blank_text_is_none`` so is text of only white space, as a form's empty box sends it).

    Raises ``none_error(none_message)`` when neither is given, InvalidParameterError(both_message)
    when both are (each surface words the fix in its own terms)."""
    has_text = text is not None and not (blank_text_is_none and isinstance(text, str) and not text.strip())
    if audio is None and not has_text:
        raise none_error(none_message)
    if audio is not None and has_text:
        raise InvalidParameterError(both_message)
