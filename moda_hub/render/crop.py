"""The renderer's canvas: a face crop of the portrait, and the feathered paste-back.

Coordinates are continuous pixels (pixel ``j`` covers ``[j, j+1)``, centre ``j + 0.5``, as
MediaPipe's ``x * W``). A :class:`CropBox` maps full-portrait pixels to canvas pixels by
``canvas = (full - (x0, y0)) * scale``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from moda_hub.errors import InvalidParameterError


@dataclass(frozen=True)
class CropBox:
    """Where the canvas sits in the full portrait.

    x0, y0: full-image pixel position of the canvas' top-left corner.
    width, height: canvas size in canvas pixels.
    scale: canvas pixels per full-image pixel (1.0 for full-image rendering).
    image_hw: (H, W) of the full portrait.
    """

    x0: float
    y0: float
    width: int
    height: int
    scale: float
    image_hw: tuple[int, int]

    def to_canvas(self, xy_full: np.ndarray) -> np.ndarray:
        """Full-image pixels (..., 2 or 3) -> canvas pixels (z, if given, is scaled too)."""
        xy = np.array(xy_full, dtype=np.float32, copy=True)
        xy[..., 0] = (xy[..., 0] - self.x0) * self.scale
        xy[..., 1] = (xy[..., 1] - self.y0) * self.scale
        if xy.shape[-1] > 2:
            xy[..., 2:] *= self.scale
        return xy

    def to_full(self, xy_canvas: np.ndarray) -> np.ndarray:
        """Canvas pixels (..., 2 or 3) -> full-image pixels."""
        xy = np.array(xy_canvas, dtype=np.float32, copy=True)
        xy[..., 0] = xy[..., 0] / self.scale + self.x0
        xy[..., 1] = xy[..., 1] / self.scale + self.y0
        if xy.shape[-1] > 2:
            xy[..., 2:] /= self.scale
        return xy

    @property
    def is_full_image(self) -> bool:
        """True when the canvas is pasted back into the portrait (scale 1, inside the image)."""
        return self.scale == 1.0 and self.x0 >= 0 and self.y0 >= 0 and \
            self.x0 + self.width <= self.image_hw[1] and self.y0 + self.height <= self.image_hw[0]

    @property
    def inner_edges(self) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): canvas edges that lie inside the portrait, not on its border."""
        H, W = self.image_hw
        return (self.x0 > 0, self.y0 > 0, self.x0 + self.width < W, self.y0 + self.height < H)


def face_crop_box(landmarks_px: np.ndarray, image_hw: tuple[int, int], output_size: int,
                  crop_scale: float = 2.2, shift_y: float = 0.05) -> CropBox:
    """The canvas for a face: a square crop, or (output_size=0) a region of the full portrait.

    landmarks_px: (478, 3) or (478, 2) full-image pixels. The square is centred on the face's
    bounding box moved down by ``shift_y`` times its side, with side ``crop_scale`` times the
    larger face side. output_size > 0: the square resampled to output_size x output_size (it may
    reach outside the portrait; the outside repeats the border). output_size = 0: the square at
    the portrait's own resolution, extended down to the bottom of the portrait (so the torso can
    move) and cut to the portrait, in whole pixels.
    """
    lm = np.asarray(landmarks_px, np.float64)[:468, :2]
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    size = crop_scale * float(max(hi - lo))
    cx, cy = (lo + hi) / 2.0
    cy += shift_y * size
    H, W = image_hw
    if output_size < 0:
        raise InvalidParameterError(
            f"output_size must be 0 (full image) or a positive size in pixels, got {output_size}")
    if output_size > 0:
        return CropBox(x0=float(cx - size / 2), y0=float(cy - size / 2), width=int(output_size),
                       height=int(output_size), scale=float(output_size) / size, image_hw=(H, W))
    x0 = int(np.clip(np.floor(cx - size / 2), 0, W - 1))
    y0 = int(np.clip(np.floor(cy - size / 2), 0, H - 1))
    x1 = int(np.clip(np.ceil(cx + size / 2), x0 + 1, W))
    return CropBox(x0=float(x0), y0=float(y0), width=x1 - x0, height=H - y0, scale=1.0, image_hw=(H, W))


def crop_texture(image_rgb: np.ndarray, box: CropBox, pad: int) -> np.ndarray:
    """The canvas image with ``pad`` extra pixels on every side, (h + 2 pad, w + 2 pad, 3) uint8.

    Canvas pixel (x, y) is texture pixel (x + pad, y + pad). Upscaling is bicubic; downscaling
    area-averages by a whole factor first, then bilinear; outside the portrait the border
    pixels repeat.
    """
    src = image_rgb
    k = 1
    if box.scale < 0.999 and int(1.0 / box.scale) >= 2:
        k = int(1.0 / box.scale)
        H, W = src.shape[:2]
        src = cv2.resize(src[: H // k * k, : W // k * k], (W // k, H // k), interpolation=cv2.INTER_AREA)
    s = box.scale * k
    # integer-centred coordinates: texture_i = s * (src_i + 0.5) - s * x0 / k ... written out:
    tx = s * 0.5 - box.scale * box.x0 + pad - 0.5
    ty = s * 0.5 - box.scale * box.y0 + pad - 0.5
    size = (box.width + 2 * pad, box.height + 2 * pad)
    if s == 1.0 and float(tx).is_integer() and float(ty).is_integer():
        # whole-pixel shift (full-image canvas): copy exactly
        m = np.float32([[1, 0, tx], [0, 1, ty]])
        return cv2.warpAffine(src, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    m = np.float32([[s, 0, tx], [0, s, ty]])
    flags = cv2.INTER_CUBIC if s > 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(src, m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class Feather:
    """Paste-back weights of a full-image canvas.

    mask, inverse: (h, w) float32, mask = 1 inside, ramping to 0 towards the canvas edges that
    lie inside the portrait; inverse = 1 - mask. widths: (left, top, right, bottom) ramp widths
    in pixels (0 on edges that are the portrait's own border).
    """

    mask: np.ndarray
    inverse: np.ndarray
    widths: tuple[int, int, int, int]


def feather_mask(box: CropBox, feather_px: int) -> Feather:
    """Paste-back weights ramping to 0 over ``feather_px`` pixels at the canvas edges that lie
    inside the portrait (edges on the portrait's border are not feathered)."""
    h, w = box.height, box.width
    f = int(min(max(int(feather_px), 1), h // 2, w // 2))
    left, top, right, bottom = box.inner_edges

    def ramp(n, lo_edge, hi_edge):
        i = np.arange(n, dtype=np.float32) + 0.5
        r = np.ones(n, np.float32)
        if lo_edge:
            r = np.minimum(r, i / f)
        if hi_edge:
            r = np.minimum(r, (n - i) / f)
        r = np.clip(r, 0.0, 1.0)
        return r * r * (3 - 2 * r)

    mask = np.ascontiguousarray(ramp(h, top, bottom)[:, None] * ramp(w, left, right)[None, :])
    widths = tuple(f if e else 0 for e in (left, top, right, bottom))
    return Feather(mask=mask, inverse=np.ascontiguousarray(1.0 - mask), widths=widths)


def paste_back(image_rgb: np.ndarray, canvas_rgb: np.ndarray, box: CropBox, feather: Feather,
               out: np.ndarray | None = None) -> np.ndarray:
    """The full portrait with the canvas blended in: (H, W, 3) uint8.

    box must be a full-image canvas (``box.is_full_image``); feather from :func:`feather_mask`.
    Only the ramps are blended; the rest is copied. ``out`` (H, W, 3) uint8 is filled and
    returned when given.
    """
    if out is None:
        out = np.empty_like(image_rgb)
    x0, y0 = int(box.x0), int(box.y0)
    x1, y1 = x0 + box.width, y0 + box.height
    h, w = box.height, box.width
    # the portrait around the canvas
    out[:y0] = image_rgb[:y0]
    out[y1:] = image_rgb[y1:]
    out[y0:y1, :x0] = image_rgb[y0:y1, :x0]
    out[y0:y1, x1:] = image_rgb[y0:y1, x1:]
    fl, ft, fr, fb = feather.widths
    # the canvas inside its ramps
    out[y0 + ft:y1 - fb, x0 + fl:x1 - fr] = canvas_rgb[ft:h - fb, fl:w - fr]
    # the ramps: top and bottom rows across, then left and right columns between them
    for rows, cols in ((slice(0, ft), slice(0, w)), (slice(h - fb, h), slice(0, w)),
                       (slice(ft, h - fb), slice(0, fl)), (slice(ft, h - fb), slice(w - fr, w))):
        if rows.stop > rows.start and cols.stop > cols.start:
            full_rows = slice(y0 + rows.start, y0 + rows.stop)
            full_cols = slice(x0 + cols.start, x0 + cols.stop)
            c = np.ascontiguousarray
            out[full_rows, full_cols] = cv2.blendLinear(
                c(canvas_rgb[rows, cols]), c(image_rgb[full_rows, full_cols]),
                c(feather.mask[rows, cols]), c(feather.inverse[rows, cols]))
    return out
