"""Motion post-processing between stage 1 and stage 2: user controls and frame-rate resampling.

Motion is a dict of numpy arrays (see ``moda_hub.models.moda``): ``lip`` (T, 40, 3) and
``eye`` (T, 60, 3) canonical-unit offsets, ``head`` (T, 7) pose offsets [degrees x3,
canonical units x3, log-scale], ``torso`` (T, 2) canonical units.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

Motion = Dict[str, np.ndarray]


def source_range(dst_start: int, dst_stop: int, src_fps: float, dst_fps: float, src_len: int) -> tuple:
    """Source frames [s0, s1) that :func:`resample_motion` needs for output frames [dst_start, dst_stop)."""
    s0 = int(np.floor(dst_start * src_fps / dst_fps))
    s1 = int(np.floor((dst_stop - 1) * src_fps / dst_fps)) + 2
    return max(0, min(s0, src_len - 1)), max(1, min(s1, src_len))


def resample_motion(motion: Motion, src_fps: float, dst_fps: float, num_frames: int,
                    dst_start: int = 0, src_start: int = 0) -> Motion:
    """Linear resampling in time from ``src_fps`` to ``num_frames`` frames at ``dst_fps``.

    Output frame k (counted from ``dst_start``) sits at (dst_start + k) / dst_fps seconds;
    ``motion`` holds source frames from ``src_start`` on. Times past the last source frame
    hold its value.
    """
    out = {}
    for name, x in motion.items():
        T = x.shape[0]
        t = (np.arange(num_frames) + dst_start) * (src_fps / dst_fps) - src_start
        k0 = np.clip(np.floor(t).astype(int), 0, T - 1)
        k1 = np.clip(k0 + 1, 0, T - 1)
        w = np.clip(t - k0, 0.0, 1.0).reshape(-1, *([1] * (x.ndim - 1)))
        out[name] = ((1 - w) * x[k0] + w * x[k1]).astype(np.float32)
    return out


def apply_controls(motion: Motion, mouth_scale: float = 1.0, head_motion_scale: float = 1.0,
                   still: bool = False, lip_amplitude: float = 1.0,
                   lip_closure: Optional[np.ndarray] = None) -> Motion:
    """User controls on generated motion.

    lip_amplitude: the model's calibrated mouth amplitude (``ModaModel.config.lip_amplitude``),
        applied about the portrait's closed lips: with ``lip_closure`` (40, 3), the offsets that
        close the portrait's lips (``moda_hub.face.expression.lip_closure``), lip offsets ``d``
        become ``A * d - (A - 1) * lip_closure`` — the opening measured from closed lips is
        scaled, so a portrait photographed with the lips apart still closes exactly where the
        model closes it (scaling the offsets about the portrait's open mouth would push the lips
        through each other there).
    mouth_scale: then multiplies lip offsets (1 = as generated, 0 = lips still as in the portrait).
    head_motion_scale: multiplies head-pose and torso offsets.
    still: head and torso fixed at the portrait's pose; eyes, blinks and lips kept.
    """
    out = dict(motion)
    lip = motion["lip"]
    if lip_amplitude != 1.0:
        closure = np.zeros(lip.shape[-2:], np.float32) if lip_closure is None else lip_closure
        lip = np.float32(lip_amplitude) * lip - np.float32(lip_amplitude - 1.0) * closure
    out["lip"] = lip * np.float32(mouth_scale)
    scale = 0.0 if still else head_motion_scale
    out["head"] = motion["head"] * np.float32(scale)
    out["torso"] = motion["torso"] * np.float32(scale)
    return out
