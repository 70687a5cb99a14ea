"""Pictures for the Space: numbered face boxes, the face mesh drawn on frames, side-by-side frames.

Coordinates: ``landmarks`` are ``(478, 2 or 3)`` (or ``(T, 478, 2 or 3)``) pixels of the picture
they are drawn on (x right, y down); z is ignored.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from moda_hub.face import topology as topo
from moda_hub.face.landmarks import face_box
from moda_hub.render.mesh import face_triangles

_BOX_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255)]
# RGB colours of the mesh drawing
_MESH = (90, 140, 160)
_OVAL = (235, 235, 235)
_LIPS = (255, 70, 90)
_EYES = (70, 220, 255)
_BROWS = (255, 170, 40)
_POINTS = (120, 255, 120)
_SHIFT = 4                      # cv2 fixed-point bits: 1/16 px precision


def faces_preview(image_rgb: np.ndarray, faces: Sequence[np.ndarray], chosen: Optional[int] = None,
                  max_side: int = 768) -> np.ndarray:
    """The portrait with each face's box and its number (``#0``, ``#1`` ... left to right).

    Args:
        image_rgb ((H, W, 3) uint8): the portrait.
        faces: ``(478, 3)`` landmarks_px per face (as :func:`~moda_hub.face.detect_faces` gives).
        chosen (int, optional): this face's box is drawn thicker and labelled "(used)".
        max_side (int, default 768): the preview is scaled down to at most this many pixels.

    Returns:
        (h, w, 3) uint8 RGB, ``h, w <= max_side``.
    """
    image = Image.fromarray(np.ascontiguousarray(image_rgb[..., :3]))
    k = min(1.0, max_side / max(image.size))
    if k < 1.0:
        image = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))),
                             Image.BILINEAR, reducing_gap=2.0)
    draw = ImageDraw.Draw(image)
    side = max(image.size)
    width = max(2, round(side / 200))
    font = _font(max(12, round(side / 22)))
    for i, face in enumerate(faces):
        box = face_box(face)
        x0, y0, x1, y1 = box.x0 * k, box.y0 * k, box.x1 * k, box.y1 * k
        colour = _BOX_COLOURS[i % len(_BOX_COLOURS)]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width * (2 if i == chosen else 1))
        label = f"#{i}" + (" (used)" if i == chosen else "")
        l, t, r, b = draw.textbbox((0, 0), label, font=font)
        ty = y0 - (b - t) - 2 * width if y0 - (b - t) - 2 * width >= 0 else y1 + width
        draw.rectangle([x0, ty, x0 + (r - l) + 2 * width, ty + (b - t) + 2 * width], fill=colour)
        draw.text((x0 + width - l, ty + width - t), label, fill=(0, 0, 0), font=font)
    return np.asarray(image)


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1)
def _mesh_edges() -> np.ndarray:
    """(E, 2) unique edges of the face tessellation (landmark ids)."""

    tris = face_triangles()
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def draw_landmarks(frame_rgb: np.ndarray, landmarks: np.ndarray, mesh: bool = True) -> np.ndarray:
    """Draw one face's mesh on a copy of ``frame_rgb``.

    Draws the tessellation (thin), all 478 points, then the face oval, lips, eyes, brows and irises.

    Args:
        frame_rgb ((h, w, 3) uint8): the picture.
        landmarks ((478, 2 or 3) float): pixels of ``frame_rgb``.
        mesh (bool, default True): also draw the tessellation's edges.

    Returns:
        (h, w, 3) uint8 RGB.
    """
    out = np.ascontiguousarray(frame_rgb[..., :3]).copy()
    xy = np.round(np.asarray(landmarks, np.float64)[:, :2] * (1 << _SHIFT)).astype(np.int32)
    scale = max(out.shape[:2]) / 512.0
    thin = 1
    thick = max(1, round(1.5 * scale))
    if mesh:
        cv2.polylines(out, list(xy[_mesh_edges()]), False, _MESH, thin, cv2.LINE_AA, _SHIFT)
    r = int(max(0.7, 1.1 * scale) * (1 << _SHIFT))
    for p in xy:
        cv2.circle(out, (int(p[0]), int(p[1])), r, _POINTS, -1, cv2.LINE_AA, _SHIFT)
    loops = [(topo.FACE_OVAL, _OVAL), (topo.LIPS_OUTER, _LIPS), (topo.LIPS_INNER, _LIPS),
             (topo.LEFT_EYE_LOOP, _EYES), (topo.RIGHT_EYE_LOOP, _EYES)]
    for loop, colour in loops:
        cv2.polylines(out, [xy[loop]], True, colour, thick, cv2.LINE_AA, _SHIFT)
    for brow in (topo.LEFT_BROW, topo.RIGHT_BROW):
        pts = xy[brow]
        pts = pts[np.argsort(pts[:, 0])]
        cv2.polylines(out, [pts], False, _BROWS, thick, cv2.LINE_AA, _SHIFT)
    for centre, ring in ((topo.LEFT_IRIS_CENTER, topo.LEFT_IRIS), (topo.RIGHT_IRIS_CENTER, topo.RIGHT_IRIS)):
        radius = int(np.mean(np.linalg.norm(xy[ring] - xy[centre], axis=1)))
        cv2.circle(out, tuple(int(v) for v in xy[centre]), radius, _EYES, thin, cv2.LINE_AA, _SHIFT)
    return out


def side_by_side(frames: np.ndarray, landmarks: Optional[np.ndarray], max_height: int = 512,
                 dim: float = 0.35) -> np.ndarray:
    """Rendered frames | the same frames darkened with the face mesh drawn on them.

    Args:
        frames ((t, h, w, 3) uint8): rendered frames.
        landmarks ((t, 478, 2 or 3) float | None): each frame's mesh in that frame's pixels;
            None draws nothing on the right (a renderer that cannot map the mesh).
        max_height (int, default 512): frames taller than this are scaled down first.
        dim (float, default 0.35): brightness of the frame under the mesh.

    Returns:
        (t, h', 2 w', 3) uint8, ``h' <= max_height``.
    """
    frames = np.asarray(frames)
    t, h, w = frames.shape[:3]
    k = min(1.0, max_height / h)
    size = (max(2, round(w * k)), max(2, round(h * k)))
    out = np.empty((t, size[1], 2 * size[0], 3), np.uint8)
    for i in range(t):
        frame = frames[i] if k == 1.0 else cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA)
        out[i, :, :size[0]] = frame
        dark = (frame.astype(np.float32) * dim).astype(np.uint8)
        if landmarks is not None:
            lm = np.asarray(landmarks[i], np.float64)[:, :2] * k
            dark = draw_landmarks(dark, lm)
        out[i, :, size[0]:] = dark
    return out
