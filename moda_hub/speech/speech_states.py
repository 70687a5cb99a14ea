"""Stage-1 features from the ``audio_encoder`` component: Whisper states at the model's frame rate.

Whisper sees at most 30 s, and its cost grows with the window, so a clip of any length is
encoded in overlapping windows of :data:`WINDOW_SECONDS` (``ENCODER_HOP_SECONDS`` apart), each
window's states blended into its neighbours' with the raised-cosine cross-fade stage 1 uses
(``moda_hub.models.moda.crossfade_weights``): no seam where one window hands over to the next.
The 50 Hz states are then linearly interpolated to the centres ``(t + 0.5) / fps`` of the
model's frames (state ``k`` is centred at ``k / 50`` s).

:class:`EncoderStates` computes the windows on demand, so streaming needs only the first
windows before its first frames; memory is the clip's log-mel (80 x 100 floats a second), the
output rows and the 50 Hz states of the last window or two.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..models.audio_encoder import SAMPLE_RATE, STATE_RATE, WhisperTinyEncoder
from ..models.moda import crossfade_weights, window_plan
from ..options import SHIPPED_MODEL
from ..weights import load_component

#: Encoder window, seconds (Whisper's table covers 30; a 10 s window costs about a third of 30 s).
WINDOW_SECONDS = 10.0
#: Overlap of consecutive windows, seconds: the cross-fade length (each window's edge states,
#: which lack context on one side, get little weight).
OVERLAP_SECONDS = 2.0


def state_windows(n_states: int, window_seconds: Optional[float] = None, overlap_seconds: Optional[float] = None):
    """[(s0, s1), ...] state ranges of the encoder windows covering ``n_states`` states
    (``moda_hub.models.moda.window_plan`` with hop ``window - overlap``; defaults
    :data:`WINDOW_SECONDS`, :data:`OVERLAP_SECONDS`)."""
    window = int(round((WINDOW_SECONDS if window_seconds is None else window_seconds) * STATE_RATE))
    overlap = int(round((OVERLAP_SECONDS if overlap_seconds is None else overlap_seconds) * STATE_RATE))
    return window_plan(n_states, window, window - overlap)


class EncoderStates:
    """Whisper states of one clip at ``fps``, computed window by window on demand.

    Args:
        wav ((N,) float32 16 kHz), fps (the model's frame rate), encoder (``WhisperTinyEncoder``),
        num_frames (rows; default ``round(N / 16000 * fps)``).

    ``upto(stop)`` returns the (T, 384) float32 array with rows [0, stop) final; the whole
    clip's rows equal :func:`encoder_features` exactly, whatever the order of calls.
    """

    def __init__(self, wav: np.ndarray, fps: float, encoder, num_frames: Optional[int] = None):

        self.encoder, self.fps = encoder, float(fps)
        self.num_frames = int(round(len(wav) / SAMPLE_RATE * fps)) if num_frames is None else int(num_frames)
        power = encoder.log_mel_power(wav)                             # (80, M) log10 power, 100 Hz
        self._mel = encoder.scale_log_mel(power, float(power.max()) if power.numel() else 0.0)
        self.n_states = max(1, (self._mel.shape[1] + 1) // 2)
        self.windows = state_windows(self.n_states)
        overlap = int(round(OVERLAP_SECONDS * STATE_RATE))
        self._blend = [crossfade_weights(a, b, self.n_states, overlap).numpy() for a, b in self.windows]
        dim = encoder.config.d_model
        # weighted sums of the 50 Hz states [base, base + len) still needed (a window or two, not
        # the clip: states before the rows still to compute are dropped, so memory stays flat)
        self._base = 0
        self._states = np.zeros((0, dim), np.float32)
        self._wsum = np.zeros(0, np.float32)
        self._done = 0                                                     # windows encoded
        self.array = np.zeros((self.num_frames, dim), np.float32)
        # frame t at (t + 0.5) / fps s interpolates states k0 and k1 = k0 + 1 (state k at k / 50 s)
        pos = np.clip((np.arange(self.num_frames) + 0.5) / self.fps * STATE_RATE, 0, self.n_states - 1)
        self._k0 = np.minimum(np.floor(pos).astype(np.int64), max(self.n_states - 2, 0))
        self._k1 = np.minimum(self._k0 + 1, self.n_states - 1)
        self._w = (pos - self._k0).astype(np.float32)[:, None]
        self._ready = 0                                                    # rows [0, ready) final

    def __len__(self) -> int:
        return self.num_frames

    def _encode_next(self) -> None:
        a, b = self.windows[self._done]
        # drop the states no row still to compute reads (rows read k0 >= k0[ready]; this window
        # and later ones start at a)
        keep = min(a, int(self._k0[self._ready])) if self._ready < self.num_frames else a
        if keep > self._base:
            self._states, self._wsum = self._states[keep - self._base:], self._wsum[keep - self._base:]
            self._base = keep
        grow = b - self._base - len(self._wsum)
        if grow > 0:
            self._states = np.concatenate([self._states, np.zeros((grow, self._states.shape[1]), np.float32)])
            self._wsum = np.concatenate([self._wsum, np.zeros(grow, np.float32)])
        if self._mel.shape[1] == 0:
            self._wsum[:] = 1.0
        else:
            states = self.encoder.encode(self._mel[:, 2 * a:2 * b]).cpu().numpy()[:b - a]
            w = self._blend[self._done][:len(states)]
            i = a - self._base
            self._states[i:i + len(states)] += states * w[:, None]
            self._wsum[i:i + len(states)] += w
        self._done += 1

    def upto(self, stop: int) -> np.ndarray:
        """The (T, D) float32 array with at least rows [0, stop) computed."""
        stop = min(int(stop), self.num_frames)
        if self._ready >= stop:
            return self.array
        # a state is final once every window covering it is encoded: states before the next
        # window's start; frame t is final once its k1 is
        last = int(self._k1[stop - 1])
        while self._done < len(self.windows) and self.windows[self._done][0] <= last:
            self._encode_next()
        final = self.windows[self._done][0] if self._done < len(self.windows) else self.n_states
        r0, r1 = self._ready, int(np.searchsorted(self._k1, final, side="left"))
        if r1 > r0:
            k0, k1, w = self._k0[r0:r1] - self._base, self._k1[r0:r1] - self._base, self._w[r0:r1]
            inv = 1.0 / np.maximum(self._wsum, 1e-6)[:, None]
            self.array[r0:r1] = self._states[k0] * inv[k0] * (1 - w) + self._states[k1] * inv[k1] * w
            self._ready = r1
        return self.array


def encoder_features(wav: np.ndarray, fps: float, encoder, num_frames: Optional[int] = None) -> np.ndarray:
    """(T, d_model) float32 Whisper states of a whole clip (16 kHz) at ``fps``,
    T = ``round(len(wav) / 16000 * fps)`` unless ``num_frames`` is given."""
    table = EncoderStates(wav, fps, encoder, num_frames)
    return table.upto(table.num_frames).copy()


_SHARED = {}


def set_default_encoder(encoder) -> None:
    """Make ``encoder`` what :func:`default_encoder` returns in this process (and in corpus
    workers forked from it) — a build uses the encoder it ships, wherever that was loaded from."""
    _SHARED["enc"] = encoder


def default_encoder():
    """The ``audio_encoder`` of the shipped ``pretrained/moda-base`` (loaded once per process,
    float32, eval mode) — for building corpora (``scripts/build_moda_base.py`` puts the encoder it
    builds with here first, so its corpus workers use that one)."""
    if "enc" not in _SHARED:
        enc = load_component(WhisperTinyEncoder, WhisperTinyEncoder.from_pretrained, SHIPPED_MODEL, "audio_encoder")
        _SHARED["enc"] = enc.float().eval()
    return _SHARED["enc"]
