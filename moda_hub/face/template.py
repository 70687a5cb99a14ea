"""The canonical face template: the mean 478-point face mesh that defines canonical space.

``canonical_template()`` is a ``(478, 3)`` float32 mesh in canonical units:

- centred: the mean of all 478 points is 0;
- x right, y down (as in the image of a frontal face), z like MediaPipe (away from the
  camera; the nose tip has the smallest z);
- scaled so that the distance between points 33 and 263 (outer eye corners) is 1.0;
- oriented frontally: the facial midline lies in the plane x = 0 (no yaw, no roll), and
  pitch is the average pitch of the portraits it was built from (people facing the camera).

It is the generalised Procrustes mean of real faces (the LFW faces bundled with
scikit-image, ``skimage.data.astronaut()`` and matplotlib's ``grace_hopper.jpg``, each
also mirrored), meshed with MediaPipe. It is stored in ``data/canonical_template.npy``
and rebuilt by ``scripts/build_template.py``; loading it does not import MediaPipe.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from moda_hub.face.topology import EYE_OUTER_LEFT, EYE_OUTER_RIGHT, NUM_LANDMARKS

TEMPLATE_PATH = Path(__file__).parent / "data" / "canonical_template.npy"

# Points on the facial midline (forehead top to chin), used to orient the template.
MIDLINE = np.array([10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 164, 0, 11, 12,
                    13, 14, 15, 16, 17, 18, 200, 199, 175, 152])


@functools.lru_cache(maxsize=1)
def canonical_template() -> np.ndarray:
    """The canonical template, ``(478, 3)`` float32, canonical units (read-only, cached).

    Example:
        >>> t = canonical_template()
        >>> t.shape, round(float(np.linalg.norm(t[33] - t[263])), 4)
        ((478, 3), 1.0)
    """
    if not TEMPLATE_PATH.exists():
        raise FileNotFoundError(
            f"the canonical face template {TEMPLATE_PATH} is missing — reinstall moda-hub "
            "or rebuild it with `python scripts/build_template.py`")
    template = np.load(TEMPLATE_PATH).astype(np.float32)
    if template.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"{TEMPLATE_PATH} holds shape {template.shape}, expected "
                         f"({NUM_LANDMARKS}, 3) — rebuild it with scripts/build_template.py")
    template.setflags(write=False)
    return template


def normalize_shape(points: np.ndarray) -> np.ndarray:
    """Centre ``(..., 478, 3)`` points (mean 0) and scale them so that the 33-263 distance
    is 1 (canonical units). Rotation is left as it is. Returns float64."""
    p = np.asarray(points, np.float64)
    p = p - p.mean(-2, keepdims=True)
    eye = np.linalg.norm(p[..., EYE_OUTER_LEFT, :] - p[..., EYE_OUTER_RIGHT, :], axis=-1)
    return p / eye[..., None, None]
