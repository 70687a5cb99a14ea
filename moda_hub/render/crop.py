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


#: Photos up to this many pixels are animated as the full image by default (``output_size=None``):
#: the person's own framing and resolution, what LivePortrait's paste-back and SadTalker's "full"
#: give. Larger photos get the renderer's face crop (512 px), which keeps each frame's cost and
#: the video's size bounded.
FULL_IMAGE_MAX_PIXELS = 1_000_000


def default_output_size(image_hw: tuple[int, int]) -> int | None:
    """``output_size`` when the caller gives none: 0 (the full image pasted back) for photos of
    at most :data:`FULL_IMAGE_MAX_PIXELS`, else None (the renderer's configured crop)."""
    H, W = image_hw
    return 0 if H * W <= FULL_IMAGE_MAX_PIXELS else None


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

    @property
    def is_full_image(self) -> bool:
        """True when the canvas is pasted back into the portrait (scale 1, inside the image)."""
        return self.scale == 1.0 and self.x0 >= 0 and self.y0 >= 0 and \
            self.x0 + self.width <= self.image_hw[1] and self.y0 + self.height <= self.image_hw[0]

    @property
    def border_edges(self) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): canvas edges on or beyond the portrait's border (nothing but
        the background fill lies past them, so the renderer pins them)."""
        H, W = self.image_hw
        x1 = self.x0 + self.width / self.scale
        y1 = self.y0 + self.height / self.scale
        eps = 1e-3
        return (self.x0 <= eps, self.y0 <= eps, x1 >= W - eps, y1 >= H - eps)

    @property
    def inner_edges(self) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): canvas edges that lie inside the portrait, not on its border."""
        H, W = self.image_hw
        return (self.x0 > 0, self.y0 > 0, self.x0 + self.width < W, self.y0 + self.height < H)


def face_crop_box(landmarks_px: np.ndarray, image_hw: tuple[int, int], output_size: int,
                  crop_scale: float = 2.2, shift_y: float = 0.05) -> CropBox:
    """The canvas for a face: a square crop, or (output_size=0) a region of the full portrait.

    landmarks_px: (478, 3) or (478, 2) full-image pixels. The wanted square is centred on the
    face's bounding box moved down by ``shift_y`` times its side, with side ``crop_scale`` times
    the larger face side.

    output_size > 0 (framing rule, the same for the library, CLI, batch and Space): the square
    stays inside the photo. It is shifted into the photo first; where the photo is too small for
    it, it shrinks to the photo's shorter side (the face then fills more of the frame), but never
    below the part of the face that is in the photo. Only where even that does not fit (the face
    in the photo is longer than the photo's shorter side, e.g. a close-up cut at the forehead and
    chin) does the square reach outside; that outside is filled
    with the blurred mirror of the photo (:func:`crop_texture`), never with repeated edge pixels.
    The square is resampled to output_size x output_size.

    output_size = 0: the square at the portrait's own resolution, extended down to the bottom of
    the portrait (so the torso can move) and cut to the portrait, in whole pixels.
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
        limit = np.array([W, H], np.float64)
        visible = np.clip(hi, 0, limit) - np.clip(lo, 0, limit)          # the face inside the photo
        side = max(min(size, float(W), float(H)), float(visible.max()))
        if side < size:                    # shrunk: keep the same share of room below the face
            cy = (lo[1] + hi[1]) / 2.0 + shift_y * side
        vis_lo = np.clip(lo, 0, limit)
        x0 = _place(cx - side / 2, side, float(W), vis_lo[0], vis_lo[0] + visible[0])
        y0 = _place(cy - side / 2, side, float(H), vis_lo[1], vis_lo[1] + visible[1])
        return CropBox(x0=x0, y0=y0, width=int(output_size), height=int(output_size),
                       scale=float(output_size) / side, image_hw=(H, W))
    x0 = int(np.clip(np.floor(cx - size / 2), 0, W - 1))
    y0 = int(np.clip(np.floor(cy - size / 2), 0, H - 1))
    x1 = int(np.clip(np.ceil(cx + size / 2), x0 + 1, W))
    return CropBox(x0=float(x0), y0=float(y0), width=x1 - x0, height=H - y0, scale=1.0, image_hw=(H, W))


def _place(start: float, side: float, extent: float, face_lo: float, face_hi: float) -> float:
    """Start of a span of length ``side`` as near ``start`` as allowed: inside [0, extent] and
    holding the face's visible span [face_lo, face_hi]. A span longer than the extent covers it
    (start within [extent - side, 0]), still holding the face."""
    lo, hi = face_hi - side, face_lo                      # starts that hold the face
    if side <= extent:
        lo, hi = max(lo, 0.0), min(hi, extent - side)
    else:
        lo, hi = max(lo, extent - side), min(hi, 0.0)
    return float(min(max(start, lo), max(lo, hi)))


def crop_texture(image_rgb: np.ndarray, box: CropBox, pad: int) -> np.ndarray:
    """The canvas image with ``pad`` extra pixels on every side, (h + 2 pad, w + 2 pad, 3) uint8.

    Canvas pixel (x, y) is texture pixel (x + pad, y + pad). Upscaling is bicubic; downscaling
    area-averages by a whole factor first, then bilinear. Outside the portrait the texture is the
    documented background fill, :func:`outside_fill`: the portrait mirrored at its border and
    blurred, never repeated edge pixels.
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
        texture = cv2.warpAffine(src, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    else:
        m = np.float32([[s, 0, tx], [0, s, ty]])
        flags = cv2.INTER_CUBIC if s > 1.0 else cv2.INTER_LINEAR
        texture = cv2.warpAffine(src, m, size, flags=flags, borderMode=cv2.BORDER_REFLECT)
    # where the portrait ends, in texture pixels (the source image's edges, mapped)
    x_lo, y_lo = tx - s * 0.5 + 0.5, ty - s * 0.5 + 0.5
    inside = (x_lo, y_lo, x_lo + s * src.shape[1], y_lo + s * src.shape[0])
    return outside_fill(texture, inside, blur_px=BACKGROUND_BLUR * max(box.width, box.height))


#: Blur of the background fill outside the portrait (Gaussian sigma), fraction of the canvas side.
BACKGROUND_BLUR = 0.02
#: The fill reaches full blur this many px past the portrait's border (a sharp mirror over a
#: longer stretch reads as a mirrored copy of the face when the fill is only a few px wide).
FILL_FADE_PX = 3.0


def outside_fill(texture: np.ndarray, inside: tuple[float, float, float, float], blur_px: float) -> np.ndarray:
    """The documented background fill: outside the rectangle ``inside`` (x0, y0, x1, y1), texture
    pixels, the mirrored portrait ``texture`` (h, w, 3) uint8 already holds is blurred (Gaussian,
    sigma ``blur_px``), fading in over :data:`FILL_FADE_PX` past the border (near the border the
    blurred mirror has the photo's local colour, so no edge or streak shows). Works in place
    and returns ``texture``; its inside is left untouched."""
    h, w = texture.shape[:2]
    x0, y0, x1, y1 = inside
    if x0 <= 0 and y0 <= 0 and x1 >= w and y1 >= h:
        return texture
    sigma = max(float(blur_px), 1.0)
    out = texture
    reach = int(np.ceil(3 * sigma)) + 1           # blur context taken from inside the portrait
    # one strip per side that lies (partly) outside: blurred there, blended by distance outside
    strips = [(0, int(np.ceil(y0)), 0, w), (int(np.floor(y1)), h, 0, w),
              (0, h, 0, int(np.ceil(x0))), (0, h, int(np.floor(x1)), w)]
    for r0, r1, c0, c1 in strips:
        r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        if r1 <= r0 or c1 <= c0:
            continue
        R0, R1, C0, C1 = max(r0 - reach, 0), min(r1 + reach, h), max(c0 - reach, 0), min(c1 + reach, w)
        blurred = np.ascontiguousarray(_wide_blur(out[R0:R1, C0:C1], sigma)[r0 - R0:r1 - R0, c0 - C0:c1 - C0])
        xs = np.arange(c0, c1, dtype=np.float32) + 0.5
        ys = np.arange(r0, r1, dtype=np.float32) + 0.5
        dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0.0)          # px outside, per column
        dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0.0)
        a = np.clip(np.maximum(dy[:, None], dx[None, :]) / np.float32(FILL_FADE_PX), 0.0, 1.0)
        a = np.ascontiguousarray(a * a * (3 - 2 * a), np.float32)
        out[r0:r1, c0:c1] = cv2.blendLinear(np.ascontiguousarray(out[r0:r1, c0:c1]), blurred, 1 - a, a)
    return out


def _wide_blur(region: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (h, w, 3) uint8 with a large ``sigma`` (px): computed at 1/f resolution
    (f = sigma / 3, area-averaged) and enlarged bilinearly -- the same soft result as a full-size
    kernel at a small fraction of the cost (a 3000 px photo's margin: seconds -> milliseconds)."""
    h, w = region.shape[:2]
    f = max(1, int(sigma / 3.0))
    if f == 1 or min(h, w) < 4 * f:
        return cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    small = cv2.resize(region, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


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


def paste_region(box: CropBox) -> tuple[int, int, int, int] | None:
    """The part of the portrait that pasting ``box`` back can change, widened to whole 2 x 2
    blocks: (x0, y0, x1, y1) full-image pixels, all even, holding the canvas. Outside it a
    pasted-back frame is the portrait itself, and a yuv420p encoder (chroma per 2 x 2 block) can
    convert the region alone and get the same planes as for the whole frame. None when ``box``
    is not a full-image canvas or the portrait has an odd width or height (an encoder pads those).
    """
    H, W = box.image_hw
    if not box.is_full_image or H % 2 or W % 2:
        return None
    x0, y0 = int(box.x0) // 2 * 2, int(box.y0) // 2 * 2
    x1, y1 = -(-(int(box.x0) + box.width) // 2) * 2, -(-(int(box.y0) + box.height) // 2) * 2
    return x0, y0, x1, y1


def paste_back(image_rgb: np.ndarray, canvas_rgb: np.ndarray, box: CropBox, feather: Feather,
               out: np.ndarray | None = None) -> np.ndarray:
    """The full portrait with the canvas blended in: (H, W, 3) uint8.

    box must be a full-image canvas (scale 1, inside the portrait); feather from :func:`feather_mask`.
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
