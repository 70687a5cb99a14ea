"""Automatic checks of rendered talking-portrait frames: what a viewer would call broken framing.

Each check takes rendered frames (T, H, W, 3) uint8 (decoded MP4 frames or the pipeline's
``output_type="np"``) and returns a number in plain units, so a harness
(``benchmarks/contact_sheet.py``) can list them per video and a test can assert on them:

- :func:`edge_streaks`: replicated edge pixels -- runs of rows (or columns) that repeat the row
  before them while carrying texture along it (vertical bars / horizontal smears), outside the
  face. Natural photos do not repeat a textured row for many rows; a crop that reaches past the
  photo's border and repeats its last row does.
- :func:`seam_jump`: the paste-back seam -- colour and gradient jump across the boundary of the
  pasted canvas, above what the photo itself has there.
- :func:`flicker_outside_face`: mean frame-to-frame change where nothing should move.
- :func:`mouth_depth`: how far the mouth moves (range of the inner-lip gap).

Masks are (H, W) bool, True = pixels the check looks at (e.g. ``~face_region(...)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from moda_hub.face import topology as topo

#: A run of at least this many repeated textured rows (or columns) is a streak, output pixels.
MIN_STREAK_RUN = 6


@dataclass(frozen=True)
class Streaks:
    """Longest runs of repeated rows / columns found, in pixels, and where (first index, or -1)."""

    rows: int
    row_at: int
    cols: int
    col_at: int

    @property
    def longest(self) -> int:
        return max(self.rows, self.cols)

    @property
    def found(self) -> bool:
        return self.longest >= MIN_STREAK_RUN


def _repeated_steps(frame: np.ndarray, mask: Optional[np.ndarray], min_texture: float, ratio: float) -> np.ndarray:
    """(H-1,) bool: row i+1 repeats row i (over the masked columns), and the row carries texture.

    Repeat: mean |row i+1 - row i| <= max(0.25, ratio x the row's own texture), where texture =
    mean |pixel - its right neighbour| along the row; texture must be >= ``min_texture`` (flat
    rows -- a plain wall -- are not streaks). Units 0-255, means over the three channels."""
    f = frame.astype(np.float32)
    vert = np.abs(f[1:] - f[:-1]).mean(axis=2)                      # (H-1, W)
    horiz = np.abs(f[:, 1:] - f[:, :-1]).mean(axis=2)               # (H, W-1)
    if mask is not None:
        m = mask.astype(np.float32)
        mv = m[1:] * m[:-1]
        mh = m[:, 1:] * m[:, :-1]
        nv, nh = mv.sum(axis=1), mh.sum(axis=1)
        vert_mean = (vert * mv).sum(axis=1) / np.maximum(nv, 1)
        tex = (horiz * mh).sum(axis=1) / np.maximum(nh, 1)
        enough = nv >= 0.25 * frame.shape[1]                          # a row mostly hidden: no call
    else:
        vert_mean, tex = vert.mean(axis=1), horiz.mean(axis=1)
        enough = np.ones(len(vert_mean), bool)
    t = np.minimum(tex[1:], tex[:-1])
    return enough & (t >= min_texture) & (vert_mean <= np.maximum(0.25, ratio * t))


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """Longest run of True in (N,) steps, as a pixel count (steps + 1), and its first index."""
    best, at, run = 0, -1, 0
    for i, v in enumerate(flags):
        run = run + 1 if v else 0
        if run > best:
            best, at = run, i - run + 1
    return (best + 1 if best else 0), at


def edge_streaks(frames: np.ndarray, mask: Optional[np.ndarray] = None, min_texture: float = 1.0,
                 ratio: float = 0.1) -> Streaks:
    """Longest runs of repeated textured rows and columns over ``frames`` (T, H, W, 3) or one
    (H, W, 3) uint8 frame, looking only at ``mask`` (H, W) bool pixels (None = all).

    A run of ``n`` rows each repeating the one before (see :func:`_repeated_steps`) counts as
    ``n`` px; ``Streaks.found`` when a run reaches :data:`MIN_STREAK_RUN`. Returns the worst frame's
    runs (rows and columns independently)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    rows = cols = 0
    row_at = col_at = -1
    for f in frames:
        r, ra = _longest_run(_repeated_steps(f, mask, min_texture, ratio))
        c, ca = _longest_run(_repeated_steps(f.transpose(1, 0, 2), None if mask is None else mask.T,
                                             min_texture, ratio))
        if r > rows:
            rows, row_at = r, ra
        if c > cols:
            cols, col_at = c, ca
    return Streaks(rows, row_at, cols, col_at)


def face_region(landmarks_px: np.ndarray, hw: tuple[int, int], grow: float = 1.3) -> np.ndarray:
    """(H, W) bool: the face -- the convex hull of the (T, 478, 2+) or (478, 2+) landmarks (output
    pixels) of every frame, scaled by ``grow`` about its centre (hair, ears, neck edge)."""
    lm = np.asarray(landmarks_px, np.float64)
    lm = lm.reshape(-1, lm.shape[-2], lm.shape[-1])[..., :468, :2]
    mask = np.zeros(hw, np.uint8)
    for pts in lm:
        c = pts.mean(axis=0)
        hull = cv2.convexHull(((pts - c) * grow + c - 0.5).astype(np.float32))
        cv2.fillConvexPoly(mask, np.round(hull * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    return mask > 0


def seam_jump(frames: np.ndarray, photo: np.ndarray, box: Sequence[float], width: int = 2,
              reach: int = 24) -> float:
    """Paste-back seam strength, 0-255 units, for frames (T, H, W, 3) or (H, W, 3) uint8 of the
    full image and the ``photo`` (H, W, 3) uint8 they were made from.

    ``box`` (x0, y0, x1, y1), full-image pixels: the pasted canvas. Along each of its edges that
    lies inside the photo, at every line parallel to it up to ``reach`` px either side (a feathered
    paste-back blends over a band, so a mismatch shows inside the band, not on its border): the
    mean |step across the line| of the frame minus the same in the photo, both the colour step
    (means of ``width`` px strips on either side) and the gradient step (the one-pixel difference);
    the largest, over lines, edges and frames. 0 = the boundary cannot be told from the photo;
    a visible seam is ~3 or more.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    H, W = photo.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    w = int(width)
    # vertical lines (x = const) spanning rows y0..y1, horizontal lines spanning x0..x1
    xs = [x for e in ((x0,) if x0 > 0 else ()) + ((x1,) if x1 < W else ()) for x in range(e - reach, e + reach + 1)
          if w <= x <= W - w]
    ys = [y for e in ((y0,) if y0 > 0 else ()) + ((y1,) if y1 < H else ()) for y in range(e - reach, e + reach + 1)
          if w <= y <= H - w]

    def steps(img: np.ndarray) -> np.ndarray:
        img = img.astype(np.float32)
        out = []
        for x in xs:
            out.append((np.abs(img[y0:y1, x - w:x].mean(1) - img[y0:y1, x:x + w].mean(1)).mean(),
                        np.abs(img[y0:y1, x - 1] - img[y0:y1, x]).mean()))
        for y in ys:
            out.append((np.abs(img[y - w:y, x0:x1].mean(0) - img[y:y + w, x0:x1].mean(0)).mean(),
                        np.abs(img[y - 1, x0:x1] - img[y, x0:x1]).mean()))
        return np.asarray(out, np.float64).reshape(-1, 2)

    ref = steps(photo)
    worst = 0.0
    for f in frames:
        if len(ref):
            worst = max(worst, float((steps(f) - ref).max()))
    return worst


def flicker_outside_face(frames: np.ndarray, mask: np.ndarray) -> float:
    """Mean |frame t - frame t-1| over ``mask`` (H, W) bool pixels and all frame pairs, 0-255 units
    (0 = perfectly still; H.264 noise ~0.2-0.5)."""
    frames = np.asarray(frames)
    if len(frames) < 2 or not mask.any():
        return 0.0
    total = 0.0
    for a, b in zip(frames[:-1], frames[1:]):
        total += float(np.abs(b[mask].astype(np.int16) - a[mask].astype(np.int16)).mean())
    return total / (len(frames) - 1)


def mouth_depth(landmarks: np.ndarray) -> float:
    """How far the mouth moves: 95th minus 5th percentile of the inner-lip gap over the outer-eye-
    corner distance (:func:`moda_hub.face.topology.mouth_aperture`) of (T, 478, 2+) landmarks, e.g.
    tracked again on the rendered video (frames without a face: NaN rows, ignored). ~0.1-0.3 for
    lively speech, < 0.02 for a mouth that barely moves."""
    ap = topo.mouth_aperture(np.asarray(landmarks, np.float64))
    ap = ap[np.isfinite(ap)]
    if len(ap) < 2:
        return float("nan")
    return float(np.percentile(ap, 95) - np.percentile(ap, 5))
