"""Stage-1 input features: what the model hears, one row per video frame.

A ``ModaModel`` records in its config which kind it was trained on (``features``), and
the pipeline, the corpus builder and the evaluation all compute them here, so they agree.

- ``"logmel"``: 80 log-mel bins, per-utterance normalised (``moda_hub.speech.audio.audio_features``).
- ``"logmel+phones"``: the 80 log-mel bins, then 13 viseme-class occupancies from
  pocketsphinx's en-us phone recogniser (``moda_hub.speech.phones.phone_viseme_features``) — a
  speaker-robust stream that closes much of the gap between espeak-ng and human voices.
- ``"logmel+phones+opening"``: the same, then one more phone column: how open the mouth should
  be for the recognised phone (the plain table of ``moda_hub.speech.phones.VISEME_OPENING``,
  unsmoothed; ``moda_hub.speech.phones.phone_stream``), which the classes lump together.

- ``"whisper-tiny"``: the 384 hidden states of the ``audio_encoder`` component (the encoder of
  OpenAI Whisper tiny, ``moda_hub.models.audio_encoder``; the layer its ``state_layer`` names,
  which stage 1 records as ``audio_state_layer``), computed in overlapping windows and
  interpolated from 50 Hz to the model's frames (``moda_hub.speech.speech_states``). Trained on real
  voices in ~100 languages: no pocketsphinx, no phone worker.

The phone stream is always the last ``PHONE_COLUMNS[kind]`` columns.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..options import SAMPLE_RATE
from .audio import audio_features
from .kinds import ENCODER_KINDS, PHONE_COLUMNS, feature_dim
from .phone_worker import PhoneWorkerError, shared_worker
from .phones import phone_stream
from .speech_states import EncoderStates, default_encoder, encoder_features



def speech_features(wav: np.ndarray, sample_rate: int, fps: float, kind: str = "logmel+phones+opening",
                    encoder=None) -> np.ndarray:
    """(T, feature_dim(kind)) float32 features of mono speech, T = round(len(wav) / sample_rate * fps).

    ``encoder``: the ``audio_encoder`` component for the encoder kinds (default: moda-base's)."""
    feature_dim(kind)
    if kind in ENCODER_KINDS:
        _check_rate(sample_rate)
        return encoder_features(wav, fps, encoder if encoder is not None else default_encoder(),
                                num_frames=int(round(len(wav) / sample_rate * fps)))
    mel = audio_features(wav, sample_rate, fps=fps)
    if kind == "logmel":
        return mel
    ph = phone_stream(wav, sample_rate, fps)[:, :PHONE_COLUMNS[kind]]
    return np.concatenate([mel, ph.astype(np.float32)], axis=1)


#: Phone recognition runs on segments of at most this many seconds (cut at the quietest 0.1 s
#: of their last third), so that long speech streams: the first frames need only the first segments.
PHONE_SEGMENT_SECONDS = 30.0
#: ... and the first segment is at most this long, so that the start of a clip is recognised on
#: two cores at once: the calling process takes the first, the phone worker
#: (``moda_hub.speech.phone_worker``) the second and every later one, ahead of need. (Measured on the
#: 12 dev clips, cutting 6-14 s clips in two leaves the mean lip-sync r as it was: 0.368 vs 0.367.)
PHONE_FIRST_SEGMENT_SECONDS = 6.0
#: ... and the second (the phone worker's first) at most this long. Stage 1's first chunk reads a
#: 10 s window, so it waits for the phones of about the first 11 s: with a second segment of up to
#: 30 s it waited for the worker to recognise all of it (first streamed frames of a 60 s clip after
#: ~1.3 s); 12 s still reaches past 11 s wherever the cuts fall (the first ends after 4 s, the
#: second spans at least 8 s) and takes the worker about as long as the calling process's 6 s.
#: Clips up to ~16 s are cut exactly as before.
PHONE_SECOND_SEGMENT_SECONDS = 12.0
_CUT_STEP_SECONDS = 0.1          # segment borders fall on multiples of this (whole frames at 25/30 fps)


def _check_rate(sample_rate: int) -> None:
    if int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"the audio encoder hears 16 kHz speech, not {sample_rate} Hz — resample first")


def phone_segments(wav: np.ndarray, sample_rate: int, max_seconds: float = PHONE_SEGMENT_SECONDS,
                   first_seconds: float = PHONE_FIRST_SEGMENT_SECONDS,
                   second_seconds: float = PHONE_SECOND_SEGMENT_SECONDS):
    """Sample ranges [(a, b), ...] covering ``wav`` in order: the first at most
    ``min(first_seconds, max_seconds)`` long, the second at most ``min(second_seconds,
    max_seconds)``, the rest at most ``max_seconds``; one range when the clip is that short.
    Borders are multiples of 0.1 s, placed at the quietest 0.1 s in the last third of each
    segment (a pause, where recognition loses no context)."""
    n = len(wav)
    step = int(round(_CUT_STEP_SECONDS * sample_rate))
    out, a = [], 0
    while True:
        seconds = min((first_seconds, second_seconds)[len(out)] if len(out) < 2 else max_seconds, max_seconds)
        longest = max(step, int(seconds * sample_rate) // step * step)
        if n - a <= longest:
            break
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
    clip; the pocketsphinx phone stream (~6 % of the audio's duration) by
    :func:`phone_segments` segments: the first in this process when :meth:`upto` first asks for
    its frames, every later one in the phone worker process (``moda_hub.speech.phone_worker``), queued at
    once so that it runs beside stage 1 and rendering (pocketsphinx holds the GIL: a thread
    would not). A segment the worker has not started when it is needed, or that fails there, is
    recognised here instead; either way the rows are the same. Without a worker
    (``MODA_PHONE_WORKER=0``, one core) every segment is recognised here, on demand. A clip of
    up to 6 s is one segment, so its table equals ``speech_features(...)`` exactly.

    For the encoder kinds (``"whisper-tiny"``) the rows are the ``audio_encoder``'s states
    (``encoder``, required), computed window by window on demand (``moda_hub.speech.speech_states``).

    Args:
        wav ((N,) float32), sample_rate (Hz), fps (model frame rate), kind (see ``kinds.FEATURE_KINDS``),
        encoder (the pipeline's ``audio_encoder``, for the encoder kinds).

    Example:
        >>> table = FeatureTable(wav, 16000, 30)
        >>> feats = table.upto(300)          # (T, 94) tensor; rows [0, 300) are computed
    """

    def __init__(self, wav: np.ndarray, sample_rate: int, fps: float, kind: str = "logmel+phones+opening",
                 encoder=None):
        feature_dim(kind)
        self.wav, self.sample_rate, self.fps, self.kind = wav, sample_rate, fps, kind
        self._states = None
        if kind in ENCODER_KINDS:
            if encoder is None:
                raise ValueError(f"features {kind!r} need the pipeline's audio_encoder component")
            _check_rate(sample_rate)
            self._states = EncoderStates(wav, fps, encoder, int(round(len(wav) / sample_rate * fps)))
            self.num_frames = len(self._states)
            self.tensor = torch.from_numpy(self._states.array)
            return
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
        self._futures = [None] * len(self._segments)
        if len(self._segments) > 1:
            worker = shared_worker()
            if worker is not None:
                self._futures[1:] = [worker.submit(wav[a:b], sample_rate, fps) for a, b in self._segments[1:]]
                weakref.finalize(self, _cancel, list(self._futures))

    def __len__(self) -> int:
        return self.num_frames

    def upto(self, stop: int):
        """The (T, F) float32 tensor with at least rows [0, stop) computed."""
        stop = min(int(stop), self.num_frames)
        if self._states is not None:
            self._states.upto(stop)
            return self.tensor
        while self._ready < stop:
            k = self._done
            a, b = self._segments[k]
            f0 = int(round(a / self.sample_rate * self.fps))
            last = k == len(self._segments) - 1
            f1 = self.num_frames if last else int(round(b / self.sample_rate * self.fps))
            ph = self._worker_rows(k)
            if ph is None:
                ph = phone_stream(self.wav[a:b], self.sample_rate, self.fps)
            n_cols = PHONE_COLUMNS[self.kind]
            rows = ph[:f1 - f0, :n_cols]
            f1 = f0 + len(rows)
            self._array[f0:f1, -n_cols:] = rows
            self._done += 1
            self._ready = self.num_frames if self._done == len(self._segments) else f1
        return self.tensor

    def _worker_rows(self, k: int):
        """Segment ``k``'s phone-stream rows from the worker, or None: not sent there, taken back
        before the worker started it, or failed there."""
        fut, self._futures[k] = self._futures[k], None
        if fut is None or fut.cancel():
            return None
        try:
            return fut.result()
        except PhoneWorkerError:
            return None


@dataclass
class PreparedSpeech:
    """Speech made ready once for any number of calls of one pipeline (e.g. the Space's variations).

    wav: (N,) float32 mono at 16 kHz (what the video carries).
    features: the :class:`FeatureTable` of ``wav`` at the model's frame rate and feature kind
    (rows computed on demand and kept, so later calls reuse them).
    """
    wav: np.ndarray
    features: FeatureTable


def start_helpers(kind: str) -> None:
    """Start what computing ``kind`` needs beside the pipeline (the phone worker for the phone
    kinds), so that it is ready by the first call."""
    if "phones" in kind:
        shared_worker()


def _cancel(futures) -> None:
    """Take back the worker requests of an abandoned table (a stream closed early)."""
    for fut in futures:
        if fut is not None:
            fut.cancel()
