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


#: Phone recognition runs on segments of at most this many seconds (cut at the quietest 0.1 s
#: of their last third), so that long speech streams: the first frames need only the first segment.
PHONE_SEGMENT_SECONDS = 30.0
_CUT_STEP_SECONDS = 0.1          # segment borders fall on multiples of this (whole frames at 25/30 fps)


def phone_segments(wav: np.ndarray, sample_rate: int, max_seconds: float = PHONE_SEGMENT_SECONDS):
    """Sample ranges [(a, b), ...] covering ``wav`` in order, each at most ``max_seconds`` long;
    one range when the clip is that short. Borders are multiples of 0.1 s, placed at the quietest
    0.1 s in the last third of each segment (a pause, where recognition loses no context)."""
    n = len(wav)
    step = int(round(_CUT_STEP_SECONDS * sample_rate))
    longest = int(max_seconds * sample_rate) // step * step
    out, a = [], 0
    while n - a > longest:
        lo, hi = a + (2 * longest // 3) // step * step, a + longest
        blocks = np.asarray(wav[lo:hi], np.float32)[:(hi - lo) // step * step].reshape(-1, step)
        cut = lo + step * int(np.argmin((blocks.astype(np.float64) ** 2).mean(axis=1))) + step
        out.append((a, cut))
        a = cut
    out.append((a, n))
    return out


class FeatureTable:
    """:func:`speech_features` of a clip, the phone stream computed segment by segment on demand.

    The log-mel stream (per-utterance normalised, cheap) is computed at once for the whole
    clip; the pocketsphinx phone stream (~5 % of the audio's duration) one
    :func:`phone_segments` segment at a time, when :meth:`upto` first asks for its frames. A
    clip of up to 30 s is one segment, so its table equals ``speech_features(...)`` exactly.

    Args:
        wav ((N,) float32), sample_rate (Hz), fps (model frame rate), kind (see FEATURE_KINDS).

    Example:
        >>> table = FeatureTable(wav, 16000, 30)
        >>> feats = table.upto(300)          # (T, 93) tensor; rows [0, 300) are computed
    """

    def __init__(self, wav: np.ndarray, sample_rate: int, fps: float, kind: str = "logmel+phones"):
        import torch

        feature_dim(kind)
        self.wav, self.sample_rate, self.fps, self.kind = wav, sample_rate, fps, kind
        mel = audio_features(wav, sample_rate, fps=fps)
        self.num_frames = len(mel)
        if kind == "logmel":
            self._array, self._segments = mel, []
        else:
            self._array = np.zeros((len(mel), feature_dim(kind)), np.float32)
            self._array[:, :mel.shape[1]] = mel
            self._segments = phone_segments(wav, sample_rate, PHONE_SEGMENT_SECONDS)
        self._done = 0                                  # segments whose phones are in
        self._ready = 0 if self._segments else self.num_frames   # rows [0, ready) are final
        self.tensor = torch.from_numpy(self._array)     # shares memory with the table

    def __len__(self) -> int:
        return self.num_frames

    def upto(self, stop: int):
        """The (T, F) float32 tensor with at least rows [0, stop) computed."""
        from .phones import phone_viseme_features

        stop = min(int(stop), self.num_frames)
        while self._ready < stop:
            a, b = self._segments[self._done]
            f0 = int(round(a / self.sample_rate * self.fps))
            ph = phone_viseme_features(self.wav[a:b], self.sample_rate, self.fps)
            f1 = min(f0 + len(ph), self.num_frames)
            self._array[f0:f1, -ph.shape[1]:] = ph[:f1 - f0]
            self._done += 1
            self._ready = self.num_frames if self._done == len(self._segments) else f1
        return self.tensor
