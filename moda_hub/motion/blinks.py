"""Blinks: a renewal process at the requested rate, applied to stage-1 eye motion; blink counting.

The trained ProbAttn latent carries gaze, brows and head motion well, but samples drawn from
its N(0, I) prior close the eyes only part-way (a known VAE "prior hole": the posterior codes
blinks in a corner of latent space that prior samples rarely reach; measured on moda-base:
0.7 blinks a minute). So blinks are drawn explicitly (:func:`blink_events`: gamma intervals at
``rate_per_min``, 100-400 ms, pulled towards pauses in the speech), from the pipeline's
``generator`` — the ``blink_rate`` control is exact and the same seed gives the same blinks.
The synthetic corpus (:mod:`moda_hub.data.motion`) draws its blinks with this process at its
own rates; nothing here depends on the corpus.

Units: eye motion (T, 60, 3) canonical-unit offsets of ``topology.EYES`` points; closure
(T, 2) in [0, 1] (left, right eye; 1 = fully closed).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..face.rig import BLINK_L, BLINK_R, P_ALL, FaceRig
from ..face.topology import EYES, LEFT_BROW, LEFT_EYE, LEFT_EYE_LOOP, LEFT_IRIS, RIGHT_EYE

#: positions in EYES of the subject's left-eye parts (lids, brow, iris); the rest is the right eye.
_LEFT = np.isin(EYES, np.concatenate([LEFT_EYE, LEFT_EYE_LOOP, LEFT_BROW, LEFT_IRIS]))
#: positions in EYES of the eyelid points (both eyes).
_LIDS = np.isin(EYES, np.concatenate([LEFT_EYE, RIGHT_EYE]))
#: how much of the latent's own lid motion is kept: its prior samples close the lids part-way
#: (half-blinks at random times); damping them keeps the blink rate what was asked for.
LATENT_LID_SCALE = 0.4
#: A frame counts as (part of) a blink when its eye openness is below this fraction of the clip's
#: median openness (the open level). ``moda evaluate``, the corpus statistics and the Space's plot
#: all count blinks with it.
BLINK_CLOSED_RATIO = 0.5


def blink_events(duration: float, rng: np.random.Generator,
                 pause_spans: Optional[Sequence[Tuple[float, float]]], rate_per_min: float,
                 pause_pull: float = 0.7) -> List[Tuple[float, float, float]]:
    """Blink events ``[(start_s, length_s, amplitude)]`` over ``duration`` seconds.

    A renewal process: intervals are gamma (shape 3, mean ``60 / rate_per_min``), at least 0.35 s. A blink that falls
    within 1.2 s before or after the start of a pause moves there with probability
    ``pause_pull`` (people blink at phrase boundaries). Lengths 100-400 ms (log-normal
    around 200 ms), amplitude 0.85-1.0 (1 = fully closed). The first blink has a random
    phase, so utterances cut from one long process look alike.
    """
    mean = 60.0 / float(rate_per_min)
    shape = 3.0
    starts = []
    t = float(rng.uniform(0.0, 1.0)) * rng.gamma(shape, mean / shape)
    while t < duration:
        starts.append(t)
        t += max(0.35, float(rng.gamma(shape, mean / shape)))
    anchors = np.array([s for s, e in (pause_spans or []) if e - s > 0.2])
    out = []
    for s in starts:
        if len(anchors):
            d = anchors - s
            k = int(np.argmin(np.abs(d)))
            if abs(d[k]) < 1.2 and rng.random() < pause_pull:
                s = float(anchors[k] + rng.uniform(0.0, 0.15))
        length = float(np.clip(np.exp(rng.normal(np.log(0.2), 0.3)), 0.1, 0.4))
        amp = float(np.clip(rng.normal(0.97, 0.05), 0.85, 1.0))
        if s < duration and (not out or s - out[-1][0] > 0.35):
            out.append((s, length, amp))
    return out


def blink_profile(t: np.ndarray, start: float, length: float) -> np.ndarray:
    """Closure 0..1 of one blink at times ``t`` (s): fast close (30 %), short hold (10 %),
    slower reopening (60 %), cosine ramps."""
    u = (t - start) / length
    out = np.zeros_like(u)
    c = (u >= 0) & (u < 0.3)
    out[c] = 0.5 - 0.5 * np.cos(np.pi * u[c] / 0.3)
    out[(u >= 0.3) & (u < 0.4)] = 1.0
    o = (u >= 0.4) & (u < 1.0)
    out[o] = 0.5 + 0.5 * np.cos(np.pi * (u[o] - 0.4) / 0.6)
    return out


def blink_track(events: Sequence[Tuple[float, float, float]], num_frames: int,
                fps: float = 30.0, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """(T, 2) float32 eyelid closure (left, right) 0..1 from :func:`blink_events`.

    Each frame is the mean over its exposure (4 sub-samples across 1/fps), so a short
    blink still shows as a partly closed frame. Left/right differ by a few percent.
    """
    t = (np.arange(num_frames)[:, None] + 0.5 + np.array([-0.375, -0.125, 0.125, 0.375])) / fps
    out = np.zeros((num_frames, 2))
    for s, length, amp in events:
        k0, k1 = int((s - 0.1) * fps), int((s + length + 0.1) * fps) + 1
        k0, k1 = max(k0, 0), min(k1, num_frames)
        if k1 <= k0:
            continue
        prof = blink_profile(t[k0:k1], s, length).mean(axis=1)
        asym = 1.0 + (rng.normal(0, 0.03, 2) if rng is not None else np.zeros(2))
        out[k0:k1] = np.maximum(out[k0:k1], np.clip(amp * prof[:, None] * asym, 0, 1))
    return out.astype(np.float32)


def speech_pauses(wav: np.ndarray, sample_rate: int, min_len: float = 0.2) -> List[Tuple[float, float]]:
    """Quiet stretches [(start_s, end_s)] at least ``min_len`` long: 20 ms RMS below 10 % of
    the clip's 95th-percentile RMS."""
    hop = max(1, int(0.02 * sample_rate))
    n = len(wav) // hop
    if n == 0:
        return []
    rms = np.sqrt(np.mean(wav[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    quiet = rms < 0.1 * max(np.percentile(rms, 95), 1e-6)
    out, start = [], None
    for i, q in enumerate(np.append(quiet, False)):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * hop / sample_rate >= min_len:
                out.append((start * hop / sample_rate, i * hop / sample_rate))
            start = None
    return out


def sample_blink_closure(num_frames: int, fps: float, rate_per_min: float,
                         generator: Optional[torch.Generator] = None,
                         pauses: Optional[List[Tuple[float, float]]] = None) -> np.ndarray:
    """(T, 2) float32 eyelid closure of blinks at ``rate_per_min``, drawn through ``generator``."""
    if rate_per_min <= 0:
        return np.zeros((num_frames, 2), np.float32)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    events = blink_events(num_frames / fps, rng, pauses, rate_per_min=float(rate_per_min))
    return blink_track(events, num_frames, fps, rng).astype(np.float32)


def closed_eye_offsets(subject_canonical: np.ndarray) -> np.ndarray:
    """(60, 3) eye offsets of the subject with both eyes fully closed (the corpus's face rig)."""
    params = np.zeros((1, P_ALL), np.float32)
    params[0, [BLINK_L, BLINK_R]] = 1.0
    return FaceRig(subject_canonical).offsets(params)[0, EYES].astype(np.float32)


def apply_blinks(eye: np.ndarray, closure: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Blend eye motion (T, 60, 3) towards the closed pose ``closed`` (60, 3) by closure (T, 2).

    The eyelid points of ``eye`` are first scaled by :data:`LATENT_LID_SCALE`."""
    eye = np.where(_LIDS[None, :, None], eye * LATENT_LID_SCALE, eye)
    c = np.where(_LEFT[None, :], closure[:, :1], closure[:, 1:2])[..., None]     # (T, 60, 1)
    return ((1.0 - c) * eye + c * closed[None]).astype(np.float32)


def count_blinks(eye_openness: np.ndarray, fps: float, closed_ratio: float = BLINK_CLOSED_RATIO) -> int:
    """Blinks in an eye-openness curve (T,): dips below ``closed_ratio`` x the clip's median
    openness, counted once per dip."""
    if len(eye_openness) == 0:
        return 0
    closed = eye_openness < closed_ratio * np.median(eye_openness)
    return int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])
