"""Landmark sketches: a face mesh rasterised into a few line/fill channels for the neural renderer.

The neural renderer (:mod:`moda_hub.models.neural_renderer`) sees the target face as a drawing,
not as numbers, so that a convolutional network can line its output up with it pixel by pixel.
Channels (float32 in [0, 1], anti-aliased, drawn with cv2 at sub-pixel precision):

0. contours: face oval, both brows, nose bridge and nostrils;
1. eyes: both lid loops and both irises (filled discs);
2. lips: outer and inner lip loops;
3. mouth opening: the inner-lip polygon filled (where teeth / cavity show);
4. depth: the face tessellation filled with each triangle's mean depth (near = bright), so head
   turns and the jaw's 3-D shape are visible, not only the outlines.

Coordinates: ``landmarks`` are canvas pixels (x right, y down, continuous convention: pixel
``j`` covers ``[j, j + 1)``), as :meth:`moda_hub.render.crop.CropBox.to_canvas` gives them.
"""
from __future__ import annotations

import cv2
import numpy as np

from moda_hub.face import topology as topo
from moda_hub.render.mesh import face_triangles

NUM_CHANNELS = 5
_SHIFT = 4                                    # cv2 fixed-point bits (1/16 px)

# Open polylines (brows follow MediaPipe's FACEMESH_*_EYEBROW upper arcs; nose bridge and wings).
_BROWS = (np.array([46, 53, 52, 65, 55]), np.array([70, 63, 105, 66, 107]),
          np.array([276, 283, 282, 295, 285]), np.array([300, 293, 334, 296, 336]))
_NOSE = (np.array([168, 6, 197, 195, 5, 4, 1, 19, 94, 2]), np.array([98, 97, 2, 326, 327]),
         np.array([64, 98, 240]), np.array([294, 327, 460]))


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def draw_sketch(landmarks: np.ndarray, size: int | tuple[int, int], thickness: float | None = None) -> np.ndarray:
    """Rasterise one face mesh.

    Args:
        landmarks ((478, 3) float): canvas pixels (z in the same pixel units, smaller = nearer).
        size (int or (height, width)): canvas size in pixels.
        thickness (float, optional): line width in pixels; default ``max(1, side / 128)``.

    Returns:
        (NUM_CHANNELS, h, w) float32 in [0, 1] (channels in the module docstring).
    """
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    lm = np.asarray(landmarks, np.float32)
    xy = lm[:, :2] - 0.5                        # cv2 draws pixel centres at integers
    t = int(round(thickness if thickness is not None else max(1.0, max(h, w) / 128.0)))
    out = np.zeros((NUM_CHANNELS, h, w), np.uint8)
    line = dict(isClosed=False, color=255, thickness=t, lineType=cv2.LINE_AA, shift=_SHIFT)
    loop = dict(line, isClosed=True)
    cv2.polylines(out[0], [_poly(xy[topo.FACE_OVAL])], **loop)
    cv2.polylines(out[0], [_poly(xy[i]) for i in _BROWS + _NOSE], **line)
    cv2.polylines(out[1], [_poly(xy[topo.LEFT_EYE_LOOP]), _poly(xy[topo.RIGHT_EYE_LOOP])], **loop)
    for centre, ring in ((topo.LEFT_IRIS_CENTER, topo.LEFT_IRIS), (topo.RIGHT_IRIS_CENTER, topo.RIGHT_IRIS)):
        radius = float(np.linalg.norm(xy[ring] - xy[centre], axis=1).mean())
        cv2.circle(out[1], tuple(int(v) for v in np.round(xy[centre] * (1 << _SHIFT))),
                   max(1, int(round(radius * (1 << _SHIFT)))), 255, -1, cv2.LINE_AA, _SHIFT)
    cv2.polylines(out[2], [_poly(xy[topo.LIPS_OUTER]), _poly(xy[topo.LIPS_INNER])], **loop)
    cv2.fillPoly(out[3], [_poly(xy[topo.LIPS_INNER])], 255, cv2.LINE_AA, _SHIFT)
    _draw_depth(out[4], lm)
    return out.astype(np.float32) * np.float32(1.0 / 255.0)


def _draw_depth(canvas: np.ndarray, lm: np.ndarray) -> None:
    """Face triangles filled far to near with their depth mapped to 40..255 (near = bright)."""

    tri = face_triangles()
    z = lm[:468, 2]
    zt = z[tri].mean(axis=1)
    lo, hi = float(z.min()), float(z.max())
    shade = 255.0 - 215.0 * (zt - lo) / max(hi - lo, 1e-6)
    pts = _poly(lm[:468, :2] - 0.5)[tri]                       # (F, 3, 2)
    for k in np.argsort(-zt, kind="stable"):
        cv2.fillConvexPoly(canvas, pts[k], int(shade[k]), cv2.LINE_8, _SHIFT)
