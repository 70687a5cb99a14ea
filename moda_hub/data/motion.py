"""Non-lip motion of the synthetic corpus: blinks, brows, gaze, head pose and torso.

All functions are driven by an explicit ``numpy.random.Generator`` (deterministic for a
seed) and return per-frame tracks at ``fps`` (frame ``k`` at ``(k + 0.5) / fps`` seconds, the audio
front-end's frame centres, see :func:`moda_hub.speech.audio.frame_times`):

- :func:`blink_events`: inference's blink process (:mod:`moda_hub.motion.blinks`: gamma
  intervals, 100-400 ms each, preferring pauses in speech) at a rate drawn per utterance in
  :data:`CORPUS_BLINK_RATE`; ``blink_track`` turns the events into eyelid closure 0 .. 1;
- :func:`brow_track`: small brow raises at emphasised syllables;
- :func:`gaze_track`: small saccades (degrees), fixations of 0.4-3 s;
- :func:`head_track`: (T, 7) head-pose offsets ``[d_pitch, d_yaw, d_roll (degrees),
  d_tx, d_ty, d_tz (canonical units), d_log_scale]`` relative to the reference pose: an
  Ornstein-Uhlenbeck process per channel (a few degrees std), livelier during speech and
  calmer in pauses, smoothed, plus nods at emphasised syllables;
- :func:`torso_track`: (T, 2) x, y shift of the shoulders (canonical units) following the
  head with a lag, plus breathing.

:func:`speech_activity` and :func:`emphasis_times` read the phoneme timeline.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

from moda_hub.data.visemes import phonemes_to_segments
from moda_hub.face.pose import euler_to_matrix
from moda_hub.motion.blinks import blink_events as renewal_blinks

Timeline = Sequence[Tuple[str, float, float]]

_VOWELS = {"AA", "AE", "EH", "IY", "IH", "AH", "AO", "OW", "UW", "UH", "ER"}


# --- speech-derived cues -------------------------------------------------------------------
def pauses(phonemes: Timeline, duration: float, min_len: float = 0.15
           ) -> List[Tuple[float, float]]:
    """Silent stretches ``[(start_s, end_s)]`` at least ``min_len`` long (incl. lead/tail)."""
    out = []
    for sg in phonemes_to_segments(phonemes, duration):
        if sg.viseme == "sil" and sg.end - sg.start >= min_len:
            out.append((sg.start, sg.end))
    return out


def speech_activity(phonemes: Timeline, num_frames: int, fps: float = 30.0) -> np.ndarray:
    """(T,) float32 in [0, 1]: 1 while speaking, 0 in pauses, smoothed over ~0.25 s."""
    t = (np.arange(num_frames) + 0.5) / fps
    act = np.ones(num_frames)
    for s, e in pauses(phonemes, num_frames / fps, min_len=0.12):
        act[(t >= s) & (t < e)] = 0.0
    return np.clip(gaussian_filter1d(act, 0.25 * fps, mode="nearest"), 0, 1).astype(np.float32)


def emphasis_times(phonemes: Timeline, rng: np.random.Generator, prob: float = 0.45
                   ) -> np.ndarray:
    """Onsets (seconds) of emphasised syllables: long vowels (top third by duration) kept
    with probability ``prob``, at most one every 0.6 s."""
    segs = [s for s in phonemes_to_segments(phonemes) if s.viseme in _VOWELS]
    if not segs:
        return np.zeros(0)
    dur = np.array([s.end - s.start for s in segs])
    thr = np.quantile(dur, 0.6)
    out = []
    for sg, d in zip(segs, dur):
        if d >= thr and rng.random() < prob and (not out or sg.start - out[-1] > 0.6):
            out.append(sg.start)
    return np.asarray(out)


# --- blinks ----------------------------------------------------------------------------------
#: Blinks per minute of a corpus utterance are drawn uniformly in this range (people: 15-20).
CORPUS_BLINK_RATE = (14.0, 19.0)


def blink_events(duration: float, rng: np.random.Generator,
                 pause_spans: Optional[Sequence[Tuple[float, float]]] = None,
                 rate_per_min: Optional[float] = None) -> List[Tuple[float, float, float]]:
    """Blink events of a corpus utterance: :func:`moda_hub.motion.blinks.blink_events` at
    ``rate_per_min``, drawn in :data:`CORPUS_BLINK_RATE` when not given."""
    rate = float(rng.uniform(*CORPUS_BLINK_RATE)) if rate_per_min is None else float(rate_per_min)
    return renewal_blinks(duration, rng, pause_spans, rate)


# --- brows and gaze --------------------------------------------------------------------------
def brow_track(emphasis: np.ndarray, num_frames: int, fps: float, rng: np.random.Generator,
               prob: float = 0.35) -> np.ndarray:
    """(T,) float32 brow raise 0..1: raises (0.3-1.0; rise 0.15 s, hold 0.1-0.5 s, fall
    0.3 s) at a random ``prob`` share of the emphasis times, on a small slow baseline."""
    t = (np.arange(num_frames) + 0.5) / fps
    out = np.zeros(num_frames)
    for e in emphasis:
        if rng.random() >= prob:
            continue
        amp, hold = rng.uniform(0.3, 1.0), rng.uniform(0.1, 0.5)
        s = e - 0.1
        up = np.clip((t - s) / 0.15, 0, 1)
        down = np.clip(1 - (t - s - 0.15 - hold) / 0.3, 0, 1)
        bump = np.minimum(up, down)
        out = np.maximum(out, amp * (0.5 - 0.5 * np.cos(np.pi * bump)))
    base = gaussian_filter1d(rng.normal(0, 1, num_frames), 1.5 * fps, mode="wrap")
    base = 0.08 * base / (base.std() + 1e-8) + rng.uniform(0.0, 0.1)
    return np.clip(out + base, 0.0, 1.0).astype(np.float32)


def gaze_track(num_frames: int, fps: float, rng: np.random.Generator,
               blinks: Optional[Sequence[Tuple[float, float, float]]] = None) -> np.ndarray:
    """(T, 2) float32 gaze (x, y) in degrees: fixations of 0.4-3 s at small random angles
    (std 2.5 deg x, 1.5 deg y) around a per-utterance centre, saccades of ~50 ms between them
    (often during blinks), tiny fixational drift."""
    t = (np.arange(num_frames) + 0.5) / fps
    centre = rng.normal(0, [2.0, 1.5])
    times, targets = [0.0], [centre + rng.normal(0, [2.5, 1.5])]
    blink_t = [s + 0.3 * L for s, L, _ in (blinks or [])]
    tt = 0.0
    while tt < num_frames / fps:
        tt += float(rng.uniform(0.4, 3.0))
        near = [b for b in blink_t if abs(b - tt) < 0.5]
        if near and rng.random() < 0.5:
            tt = near[0]
        times.append(tt)
        targets.append(centre + rng.normal(0, [2.5, 1.5]))
    times, targets = np.array(times), np.array(targets)
    out = np.zeros((num_frames, 2))
    for k in range(len(times)):
        step = targets[k] - (targets[k - 1] if k else 0.0)
        ramp = np.clip((t - times[k]) / 0.05, 0, 1) if k else np.ones_like(t)
        out += ramp[:, None] * step[None]
    drift = gaussian_filter1d(rng.normal(0, 1, (num_frames, 2)), 0.3 * fps, axis=0)
    out += 0.3 * drift / (drift.std() + 1e-8)
    return out.astype(np.float32)


# --- head and torso --------------------------------------------------------------------------
HEAD_STD = np.array([2.0, 3.0, 1.3, 0.015, 0.012, 0.015])   # deg x3, canonical units x3
HEAD_TAU = np.array([1.2, 2.0, 2.5, 2.0, 2.0, 2.5])          # seconds
#: The head turns about the neck: a pivot below and behind the face (canonical units), so
#: rotations also move the face (a nod moves it down and forward).
NECK_PIVOT = np.array([0.0, 1.2, 0.8])
CAMERA_DISTANCE = 6.0                                         # canonical units, for d_log_scale


def _ou(num_frames: int, fps: float, std: np.ndarray, tau: np.ndarray, drive: np.ndarray,
        rng: np.random.Generator, x0: np.ndarray) -> np.ndarray:
    """Ornstein-Uhlenbeck paths (T, C) with stationary ``std`` and time constants ``tau``;
    the driving noise is scaled per frame by ``drive`` (T,) and the damping grows where
    ``drive`` is low (stillness in pauses)."""
    dt = 1.0 / fps
    C = len(std)
    noise = rng.normal(0.0, 1.0, (num_frames, C))
    x = np.empty((num_frames, C))
    cur = x0.astype(np.float64).copy()
    for k in range(num_frames):
        a = drive[k]
        damp = dt / tau * (1.0 + 1.5 * (1.0 - a))
        cur = cur - damp * cur + std * np.sqrt(2.0 * dt / tau) * a * noise[k]
        x[k] = cur
    return x


def head_track(num_frames: int, fps: float, rng: np.random.Generator,
               activity: Optional[np.ndarray] = None, emphasis: Optional[np.ndarray] = None,
               liveliness: Optional[float] = None) -> np.ndarray:
    """(T, 7) float32 head-pose offsets ``[d_pitch, d_yaw, d_roll (deg), d_tx, d_ty, d_tz
    (canonical units), d_log_scale]`` relative to the reference pose (near 0 at frame 0).

    activity: (T,) 0..1 speech activity (:func:`speech_activity`); motion is livelier
        while speaking and settles in pauses. emphasis: times (s) of nods (pitch down
        1-2.5 deg and back over ~0.4 s, with a little yaw). liveliness: overall scale,
        drawn in 0.5..1.2 when not given.

    Rotations turn the head about :data:`NECK_PIVOT`, so they also translate the face;
    ``d_log_scale`` follows ``d_tz`` (nearer = larger) at :data:`CAMERA_DISTANCE`.
    """

    if activity is None:
        activity = np.ones(num_frames)
    live = float(rng.uniform(0.5, 1.2)) if liveliness is None else float(liveliness)
    std = HEAD_STD * live * rng.uniform(0.7, 1.3, 6)
    drive = 0.35 + 0.65 * np.asarray(activity, np.float64)
    x0 = rng.normal(0.0, 0.25, 6) * std
    x = _ou(num_frames, fps, std, HEAD_TAU, drive, rng, x0)
    x = gaussian_filter1d(x, 0.08 * fps, axis=0, mode="nearest")
    t = (np.arange(num_frames) + 0.5) / fps
    for e in (emphasis if emphasis is not None else []):
        amp = rng.uniform(1.0, 2.5) * live
        w = rng.uniform(0.15, 0.25)
        bump = np.exp(-0.5 * np.square((t - e - w) / w))
        x[:, 0] += amp * bump                                  # + pitch = nose down (nod)
        x[:, 1] += rng.normal(0, 0.5) * live * bump
    head = np.zeros((num_frames, 7))
    head[:, :6] = x
    R = euler_to_matrix(x[:, :3])                              # (T, 3, 3)
    head[:, 3:6] += NECK_PIVOT[None] - R @ NECK_PIVOT
    head[:, 6] = -head[:, 5] / CAMERA_DISTANCE + gaussian_filter1d(
        rng.normal(0, 0.002, num_frames), 0.5 * fps, mode="nearest")
    return head.astype(np.float32)


def torso_track(head: np.ndarray, fps: float, rng: np.random.Generator) -> np.ndarray:
    """(T, 2) float32 shoulder shift (x, y) in canonical units: follows the head's
    translation and yaw/pitch with a first-order lag of 0.25-0.5 s, plus breathing
    (0.2-0.33 Hz, ~0.004 up/down)."""
    T = len(head)
    target = np.stack([0.6 * head[:, 3] + 0.002 * head[:, 1],
                       0.4 * head[:, 4] + 0.001 * head[:, 0]], axis=1)
    tau = float(rng.uniform(0.25, 0.5))
    alpha = 1.0 / (1.0 + tau * fps)
    zi = ((1.0 - alpha) * target[:1]) if T else np.zeros((1, 2))   # start at rest
    out, _ = lfilter([alpha], [1.0, alpha - 1.0], target, axis=0, zi=zi)
    t = (np.arange(T) + 0.5) / fps
    f = rng.uniform(0.2, 0.33)
    out[:, 1] += rng.uniform(0.002, 0.005) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out.astype(np.float32)
