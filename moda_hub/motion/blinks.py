"""Blinks at inference: a renewal process at the requested rate, applied to stage-1 eye motion.

The trained ProbAttn latent carries gaze, brows and head motion well, but samples drawn from
its N(0, I) prior close the eyes only part-way (a known VAE "prior hole": the posterior codes
blinks in a corner of latent space that prior samples rarely reach; measured on moda-base:
0.7 blinks a minute). So blinks are drawn explicitly, with the same renewal process the
synthetic corpus uses (gamma intervals at ``rate_per_min``, 100-400 ms, pulled towards pauses
in the speech), from the pipeline's ``generator`` — the ``blink_rate`` control is exact and
the same seed gives the same blinks.

Units: eye motion (T, 60, 3) canonical-unit offsets of ``topology.EYES`` points; closure
(T, 2) in [0, 1] (left, right eye; 1 = fully closed).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from ..face.rig import BLINK_L, BLINK_R, P_ALL, FaceRig
from ..data.motion import blink_events, blink_track
from ..face.topology import EYES, LEFT_BROW, LEFT_EYE, LEFT_EYE_LOOP, LEFT_IRIS, RIGHT_EYE

#: positions in EYES of the subject's left-eye parts (lids, brow, iris); the rest is the right eye.
_LEFT = np.isin(EYES, np.concatenate([LEFT_EYE, LEFT_EYE_LOOP, LEFT_BROW, LEFT_IRIS]))
#: positions in EYES of the eyelid points (both eyes).
_LIDS = np.isin(EYES, np.concatenate([LEFT_EYE, RIGHT_EYE]))
#: how much of the latent's own lid motion is kept: its prior samples close the lids part-way
#: (half-blinks at random times); damping them keeps the blink rate what was asked for.
LATENT_LID_SCALE = 0.4


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
