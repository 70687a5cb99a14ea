"""Stage-1 input features: what the model hears, one row per video frame.

A ``ModaModel`` records in its config which kind it was trained on (``features``), and
the pipeline, the corpus builder and the evaluation all compute them here, so they agree.

- ``"logmel"``: 80 log-mel bins, per-utterance normalised (``moda_hub.audio.audio_features``).
- ``"logmel+phones"``: the 80 log-mel bins, then 13 viseme-class occupancies from
  pocketsphinx's en-us phone recogniser (``moda_hub.phones.phone_viseme_features``) — a
  speaker-robust stream that closes much of the gap between espeak-ng and human voices.
"""
from __future__ import annotations

import numpy as np

from .audio import audio_features

FEATURE_KINDS = {"logmel": 80, "logmel+phones": 93}


def feature_dim(kind: str) -> int:
    """Columns of :func:`speech_features` for ``kind``."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r} — use one of {sorted(FEATURE_KINDS)}")
    return FEATURE_KINDS[kind]


def speech_features(wav: np.ndarray, sample_rate: int, fps: float, kind: str = "logmel+phones") -> np.ndarray:
    """(T, feature_dim(kind)) float32 features of mono speech, T = round(len(wav) / sample_rate * fps)."""
    feature_dim(kind)
    mel = audio_features(wav, sample_rate, fps=fps)
    if kind == "logmel":
        return mel
    from .phones import phone_viseme_features
    ph = phone_viseme_features(wav, sample_rate, fps)
    return np.concatenate([mel, ph.astype(np.float32)], axis=1)
