"""Motion over time as a matplotlib figure: mouth aperture, eye openness (blinks), head pose.

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so it is safe in server threads and
figures are freed with their last reference.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from moda_hub.face.topology import eye_openness, mouth_aperture
from moda_hub.motion.blinks import BLINK_CLOSED_RATIO, count_blinks
from moda_hub.options import SAMPLE_RATE
from moda_hub.speech.audio import rms_envelope

_COLOURS = ["#4c6ef5", "#e8590c", "#2f9e44", "#ae3ec9"]


def blink_threshold(openness: np.ndarray) -> float:
    """Eye openness below which a frame counts as (part of) a blink: the threshold of
    :func:`moda_hub.motion.blinks.count_blinks` (``BLINK_CLOSED_RATIO`` x the median, the open level), so
    the plot counts what ``moda evaluate`` counts."""
    return BLINK_CLOSED_RATIO * float(np.median(openness)) if len(openness) else 0.0


def motion_figure(variations: Sequence, wav: Optional[np.ndarray] = None, sample_rate: int = SAMPLE_RATE):
    """Three panels over time (seconds), one line per variation.

    Args:
        variations: objects with ``landmarks`` (T, 478, 3) image pixels, ``motion["head"]``
            (T, 7) (first three: pitch, yaw, roll offsets in degrees), ``fps`` and ``seed``
            (:class:`~moda_hub.space.animate.Variation`).
        wav ((N,) float32, optional): the speech; its loudness is shaded under the mouth curve.
        sample_rate (int, default 16000): Hz of ``wav``.

    Returns:
        matplotlib.figure.Figure: mouth aperture (inner-lip gap / eye-corner distance), eye
        openness (lid gap / eye-corner distance, blinks counted), head pose offsets (degrees).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 6.9), layout="constrained")
    fig.suptitle("Motion over time: mouth aperture, blinks and head pose", fontsize=11)
    ax_mouth, ax_eye, ax_head = fig.subplots(3, 1, sharex=True)
    if wav is not None and len(variations):

        fps = variations[0].fps
        env = rms_envelope(np.asarray(wav, np.float32), sample_rate, fps)
        t = np.arange(len(env)) / fps
        twin = ax_mouth.twinx()
        twin.fill_between(t, 0, env, color="0.85", step="mid", label="speech loudness")
        twin.set_yticks([])
        twin.set_ylim(0, max(float(env.max()) * 1.1, 1e-6))
        ax_mouth.set_zorder(twin.get_zorder() + 1)
        ax_mouth.patch.set_visible(False)
    for i, var in enumerate(variations):
        colour = _COLOURS[i % len(_COLOURS)]
        t = np.arange(len(var.landmarks)) / var.fps
        ax_mouth.plot(t, mouth_aperture(var.landmarks), color=colour, lw=1.4, label=f"seed {var.seed}")
        eyes = eye_openness(var.landmarks)
        ax_eye.plot(t, eyes, color=colour, lw=1.4, label=f"seed {var.seed}: {count_blinks(eyes, var.fps)} blinks")
        if i == 0:
            ax_eye.axhline(blink_threshold(eyes), color="0.5", lw=0.8, ls="--")
        head = np.asarray(var.motion["head"])
        for j, style in enumerate(("-", "--", ":")):          # pitch, yaw, roll
            ax_head.plot(t, head[:, j], color=colour, ls=style, lw=1.2)
    ax_mouth.set_ylabel("mouth aperture")
    ax_mouth.set_title("Lips (the same for every seed: they follow the speech)", fontsize=10, loc="left")
    ax_eye.set_ylabel("eye openness")
    ax_eye.set_title("Blinks (a dip below the dashed line counts as one)", fontsize=10, loc="left")
    ax_head.set_ylabel("degrees")
    ax_head.set_title("Head pose: pitch (solid), yaw (dashed), roll (dotted) from the portrait's",
                      fontsize=10, loc="left")
    ax_head.set_xlabel("time (s)")
    for ax in (ax_mouth, ax_eye):
        ax.legend(fontsize=8, loc="upper right")
    for ax in (ax_mouth, ax_eye, ax_head):
        ax.grid(alpha=0.3)
    return fig
