"""Inner-mouth synthesis: a dark cavity, teeth and a tongue where the lips part.

The interior is drawn in mouth coordinates ``(u, v)``: origin half-way between the inner
mouth corners (landmarks 78 and 308), ``u`` along corner-to-corner, ``v`` perpendicular
(down in the image), both in units of the corner-to-corner distance. The upper teeth hang
from the upper inner lip, the lower teeth and tongue sit on the lower inner lip, so the
interior is a texture attached to the mouth's geometry: the same mouth shape gives the same
pixels wherever the mouth is (no flicker). Edges are anti-aliased analytically.

Portrait with a closed mouth: synthetic upper teeth, coloured from the portrait itself
(:func:`mouth_colours`: the sclera, else the brightest low-chroma pixels), cavity and tongue
from the lips' colour. Portrait showing its teeth: its own mouth interior is split in two,
the upper half hangs from the upper lip and the lower half rests on the lower lip, and the
cavity opens between them -- so the real teeth stay when the mouth opens further.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from moda_hub.face import topology as topo
from moda_hub.render.jit import compiled
from moda_hub.render.mesh import LIPS_INNER_LOWER, LIPS_INNER_UPPER

# Upper / lower tooth boundaries, in mouth-width units from the centre (narrower to the sides).
_UPPER_GAPS = np.array([0.0, 0.105, 0.195, 0.27, 0.33, 0.38], np.float32)
_LOWER_GAPS = np.array([0.0, 0.065, 0.13, 0.19, 0.245, 0.295], np.float32)


@dataclass
class MouthModel:
    """Per-portrait inner-mouth appearance (colours RGB float32 0..255, sizes in mouth widths).

    ref_gap: the portrait's own mean inner-lip gap; synthesis starts when a frame's gap exceeds
    it by ``open_threshold`` and is fully on ``blend_range`` later. ``portrait*`` fields are set
    when the portrait shows its teeth (its interior is reused instead of synthetic teeth).
    """

    teeth_rgb: np.ndarray
    cavity_rgb: np.ndarray
    tongue_rgb: np.ndarray
    ref_gap: float
    teeth_height: float = 0.15
    lower_teeth_height: float = 0.0
    open_threshold: float = 0.01
    blend_range: float = 0.04
    # portrait showing its teeth: its canvas image (h, w, 3) uint8, mouth frame (origin (2,),
    # u axis (2,), v axis (2,), width px) and inner-lip curves v(u) sampled on _U
    portrait: np.ndarray | None = None
    portrait_frame: tuple | None = None
    portrait_upper: np.ndarray | None = None
    portrait_lower: np.ndarray | None = None
    portrait_split: np.ndarray | None = None      # where its interior parts, 0 (upper lip)..1

    @classmethod
    def from_portrait(cls, image_rgb: np.ndarray, ref_xy: np.ndarray, teeth_brightness: float = 0.95,
                      cavity_darkness: float = 0.25, **sizes) -> "MouthModel":
        """Build from the canvas image (h, w, 3) uint8 and its (478, 2) reference landmarks (px).

        teeth_brightness scales the teeth colour (teeth sit in the mouth's shade);
        cavity_darkness scales the lip colour for the cavity. ``sizes``: the other fields.
        """
        whites, lip, source = mouth_colours(image_rgb, ref_xy)
        teeth = np.clip(whites * teeth_brightness, 0, 255)
        own = {}
        if source == "teeth":
            (uu, vu), (ul, vl) = _lid_curves(ref_xy)
            frame = _frame(ref_xy)
            upper, lower = _smooth_curve(uu, vu, _U), _smooth_curve(ul, vl, _U)
            own = dict(portrait=image_rgb, portrait_frame=frame, portrait_upper=upper,
                       portrait_lower=lower, portrait_split=_darkest_split(image_rgb, frame, upper, lower))
        return cls(teeth_rgb=teeth.astype(np.float32),
                   cavity_rgb=(lip * cavity_darkness).astype(np.float32),
                   tongue_rgb=(lip * (_TONGUE_TINT if _chroma(lip[None])[0] >= GREY_CHROMA else np.float32(0.6))
                               ).astype(np.float32),
                   ref_gap=inner_gap(ref_xy), **own, **sizes)


def _frame(xy: np.ndarray):
    """Mouth frame from (478, 2) px: origin, unit u axis, unit v axis, width (px)."""
    c0, c1 = xy[78].astype(np.float64), xy[308].astype(np.float64)
    width = float(np.linalg.norm(c1 - c0))
    ex = (c1 - c0) / max(width, 1e-6)
    ey = np.array([-ex[1], ex[0]])
    return (c0 + c1) / 2.0, ex, ey, max(width, 1e-6)


def _lid_curves(xy: np.ndarray):
    """Upper and lower inner-lip polylines in mouth coordinates, u made increasing."""
    o, ex, ey, width = _frame(xy)
    out = []
    for ids in (LIPS_INNER_UPPER, LIPS_INNER_LOWER):
        d = xy[ids].astype(np.float64) - o
        u, v = d @ ex / width, d @ ey / width
        out.append((np.maximum.accumulate(u), v))
    return out


def inner_gap(xy: np.ndarray) -> float:
    """Mean gap between the inner lips (mouth widths), from (478, 2) landmarks in any px."""
    (_, vu), (_, vl) = _lid_curves(xy)
    return float(np.mean(vl[1:-1] - vu[1:-1]))


_TEETH_TINT = np.float32([1.0, 0.95, 0.85])   # teeth are warmer than the sclera or a white shirt
_TONGUE_TINT = np.float32([0.72, 0.55, 0.55])  # the tongue: the lips' colour, redder and darker
#: A portrait whose skin (or lips) has a median chroma below this is black and white: teeth and
#: tongue get no warm tint (a coloured mouth in a grey photo stands out).
GREY_CHROMA = 0.05


def _chroma(px: np.ndarray) -> np.ndarray:
    """(N,) (max - min) / max of (N, 3) RGB pixels: 0 grey, 1 fully saturated."""
    return (px.max(axis=1) - px.min(axis=1)) / np.maximum(px.max(axis=1), 1.0)


def mouth_colours(image_rgb: np.ndarray, ref_xy: np.ndarray):
    """Teeth and lip colours, (3,) float32 RGB each, from the portrait itself, and where the
    teeth colour came from: "teeth", "sclera" or "whites".

    image_rgb: (h, w, 3) uint8 canvas image; ref_xy: (478, 2) its landmarks (px).
    Teeth, in order of preference: the portrait's own teeth when its mouth shows them (bright,
    low-chroma pixels between the inner lips); the sclera (low-chroma pixels brighter than the
    median skin inside the eye openings, outside the iris circles, the brightest 30% of them); with too little visible
    sclera (closed eyes, glasses, tiny faces) the less colourful half of the brightest 3% of the
    canvas (shirt, hat, walls), never brighter than the brightest skin. Whites other than teeth
    are warmed a little (not in a black-and-white portrait). Lips: mean colour between the outer
    and inner lips.
    """
    h, w = image_rgb.shape[:2]
    img = image_rgb.reshape(-1, 3).astype(np.float32)

    def poly_mask(loops, shift=4):
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round((xy - 0.5) * (1 << shift)).astype(np.int32) for xy in loops], 255,
                     cv2.LINE_8, shift)
        return m.reshape(-1) > 0

    chroma = _chroma

    eyes = poly_mask([ref_xy[topo.RIGHT_EYE_LOOP], ref_xy[topo.LEFT_EYE_LOOP]])
    gy, gx = [g.reshape(-1) + 0.5 for g in np.mgrid[0:h, 0:w].astype(np.float32)]
    for centre, ring in ((topo.RIGHT_IRIS_CENTER, topo.RIGHT_IRIS), (topo.LEFT_IRIS_CENTER, topo.LEFT_IRIS)):
        c = ref_xy[centre]
        radius = 1.1 * float(np.linalg.norm(ref_xy[ring] - c, axis=1).mean())
        eyes &= (gx - c[0]) ** 2 + (gy - c[1]) ** 2 >= radius ** 2
    face = img[poly_mask([ref_xy[topo.FACE_OVAL]])]
    skin_top = float(np.percentile(face.mean(axis=1), 95)) if len(face) else 255.0
    skin_mid = float(np.median(face.mean(axis=1))) if len(face) else 128.0
    sclera = img[eyes]
    sclera = sclera[(chroma(sclera) < 0.35) & (sclera.mean(axis=1) > skin_mid)]
    mouth = poly_mask([ref_xy[topo.LIPS_INNER]])
    own = img[mouth]
    own = own[(chroma(own) < 0.35) & (own.mean(axis=1) > skin_mid)]
    if len(own) >= 20:                                          # the portrait shows its teeth
        lum = own.mean(axis=1)
        whites = np.median(own[lum >= np.percentile(lum, 50)], axis=0)
        tint, source = np.float32([1.0, 1.0, 1.0]), "teeth"   # already the colour of teeth
    elif len(sclera) >= 12:
        lum = sclera.mean(axis=1)
        whites = np.median(sclera[lum >= np.percentile(lum, 70)], axis=0)
        tint, source = _TEETH_TINT, "sclera"
    else:
        lum = img.mean(axis=1)
        bright = img[lum >= np.percentile(lum, 97)]
        c = chroma(bright)
        whites = np.median(bright[c <= np.median(c)], axis=0)
        whites *= min(1.0, skin_top / max(float(whites.mean()), 1.0))
        tint, source = _TEETH_TINT, "whites"
    if len(face) and float(np.median(chroma(face))) < GREY_CHROMA:    # black and white: no warm tint
        tint = np.float32([1.0, 1.0, 1.0])
    lips = poly_mask([ref_xy[topo.LIPS_OUTER]]) & ~poly_mask([ref_xy[topo.LIPS_INNER]])
    lip_px = img[lips]
    lip = lip_px.mean(axis=0) if len(lip_px) else np.array([150.0, 80.0, 80.0], np.float32)
    return (whites * tint).astype(np.float32), lip.astype(np.float32), source


def activity(xy: np.ndarray, model: MouthModel) -> float:
    """How much synthesis a frame gets, 0..1, from its (478, 2) landmarks: the lips parting more
    than in the portrait -- or, for a portrait showing its teeth, closing more than in it (the
    lips then cover its teeth instead of squashing them into a thin band)."""
    gap = inner_gap(xy)
    opening = (gap - model.ref_gap - model.open_threshold) / model.blend_range
    if model.portrait is not None:
        opening = max(opening, (model.ref_gap - gap - model.open_threshold) / model.blend_range)
    return float(np.clip(opening, 0.0, 1.0))


def _smooth_curve(knots_u: np.ndarray, knots_v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """v(u) through the lip points: monotone cubic Hermite (Fritsch-Carlson, no overshoot),
    constant outside the end knots. knots_u non-decreasing (K,), u any shape -> float32."""
    ku = knots_u + 1e-6 * np.arange(len(knots_u))          # strictly increasing
    h = np.diff(ku)
    delta = np.diff(knots_v) / h
    m = np.empty_like(knots_v)
    m[0], m[-1] = delta[0], delta[-1]
    same = delta[:-1] * delta[1:] > 0
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    d0, d1 = np.where(same, delta[:-1], 1.0), np.where(same, delta[1:], 1.0)
    m[1:-1] = np.where(same, (w1 + w2) / (w1 / d0 + w2 / d1), 0.0)
    x = np.clip(u, ku[0], ku[-1])
    k = np.clip(np.searchsorted(ku, x) - 1, 0, len(h) - 1)
    t = (x - ku[k]) / h[k]
    t2, t3 = t * t, t * t * t
    v = ((2 * t3 - 3 * t2 + 1) * knots_v[k] + (t3 - 2 * t2 + t) * h[k] * m[k]
         + (-2 * t3 + 3 * t2) * knots_v[k + 1] + (t3 - t2) * h[k] * m[k + 1])
    return v.astype(np.float32)


# 1-D profiles along the mouth (functions of u only), sampled once and looked up per pixel
_U = np.linspace(-0.6, 0.6, 1201).astype(np.float32)


def _gap_profile(centres: np.ndarray) -> np.ndarray:
    d = np.abs(np.abs(_U)[:, None] - centres[None]).min(axis=1)
    return np.clip(1.0 - d / 0.016, 0.0, 1.0).astype(np.float32)


_UPPER_GAP_PROFILE = _gap_profile(_UPPER_GAPS)
_LOWER_GAP_PROFILE = _gap_profile(_LOWER_GAPS)
_SIDE_PROFILE = (1.0 - np.clip((np.abs(_U) - 0.26) / 0.2, 0.0, 1.0)).astype(np.float32)


def synthesize(frame: np.ndarray, xy: np.ndarray, model: MouthModel, alpha: float) -> None:
    """Draw the inner mouth into ``frame`` (h, w, 3) uint8, in place.

    xy: (478, 2) landmarks in the frame's pixels; alpha: 0..1 overall strength (see :func:`activity`).
    The per-pixel work is one compiled pass (:func:`_mouth_kernel`) over the box around the lips.
    """
    if alpha <= 0.0:
        return
    h, w = frame.shape[:2]
    loop = xy[topo.LIPS_INNER]
    x0 = int(max(np.floor(loop[:, 0].min()) - 2, 0))
    y0 = int(max(np.floor(loop[:, 1].min()) - 2, 0))
    x1 = int(min(np.ceil(loop[:, 0].max()) + 2, w))
    y1 = int(min(np.ceil(loop[:, 1].max()) + 2, h))
    if x1 <= x0 or y1 <= y0:
        return
    o, ex, ey, width = _frame(xy)
    (uu, vu), (ul, vl) = _lid_curves(xy)
    upper, lower = _smooth_curve(uu, vu, _U), _smooth_curve(ul, vl, _U)
    t_cy = float(_smooth_curve(ul, vl, np.zeros(1, np.float32))[0]) + 0.01
    frame_geo = np.array([o[0], o[1], ex[0], ex[1], ey[0], ey[1], width], np.float32)
    if model.portrait is not None:
        po, pex, pey, pwidth = model.portrait_frame
        portrait = model.portrait
        portrait_geo = np.array([po[0], po[1], pex[0], pex[1], pey[0], pey[1], pwidth], np.float32)
        profiles = np.stack([upper, lower, model.portrait_upper, model.portrait_lower, model.portrait_split])
    else:
        portrait = np.zeros((1, 1, 3), np.uint8)
        portrait_geo = np.zeros(7, np.float32)
        profiles = np.stack([upper, lower, _SIDE_PROFILE, _UPPER_GAP_PROFILE, _LOWER_GAP_PROFILE])
    colours = np.stack([model.cavity_rgb, model.tongue_rgb, model.teeth_rgb]).astype(np.float32)
    sizes = np.array([t_cy, model.teeth_height, model.lower_teeth_height, alpha], np.float32)
    _mouth_kernel(frame, x0, y0, x1, y1, frame_geo, np.ascontiguousarray(profiles, np.float32),
                  np.float32(_U[0]), np.float32((len(_U) - 1) / (_U[-1] - _U[0])), colours, sizes,
                  model.portrait is not None, portrait, portrait_geo)


@compiled
def _mouth_kernel():
    """Per pixel of the box [x0, x1) x [y0, y1): mouth coordinates (u, v) of the pixel centre,
    the cavity between the inner lips (darker deep inside), the tongue (an ellipse on the lower
    lip), then either the portrait's own interior split at ``portrait_split`` (bilinear,
    edges replicated) or synthetic teeth; blended into the frame by ``alpha`` x the cavity's
    anti-aliased coverage. profiles (5, len(_U)): upper and lower inner-lip curves v(u), then
    (portrait) its upper, lower and split curves or (synthetic) the side, upper-gap and
    lower-gap profiles. geo: origin x, y, u axis, v axis (unit), width px."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def kernel(frame, x0, y0, x1, y1, geo, profiles, u0, u_scale, colours, sizes, own_teeth,
               portrait, pgeo):  # pragma: no cover - compiled
        f32 = np.float32
        n = profiles.shape[1]
        ox, oy, exx, exy, eyx, eyy, width = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
        inv_w = f32(1.0) / width
        px = width
        t_cy, teeth_h, lower_h, alpha = sizes[0], sizes[1], sizes[2], sizes[3]
        ph, pw = portrait.shape[0], portrait.shape[1]
        col = np.empty(3, np.float32)
        for gy in range(y0, y1):
            for gx in range(x0, x1):
                dx = f32(gx) + (f32(0.5) - ox)
                dy = f32(gy) + (f32(0.5) - oy)
                u = (dx * exx + dy * exy) * inv_w
                v = (dx * eyx + dy * eyy) * inv_w
                pos = (u - u0) * u_scale
                pos = min(max(pos, f32(0.0)), f32(n - 1))
                i0 = min(int(pos), n - 2)
                fr = pos - f32(i0)
                up = profiles[0, i0] + fr * (profiles[0, i0 + 1] - profiles[0, i0])
                lo = profiles[1, i0] + fr * (profiles[1, i0 + 1] - profiles[1, i0])
                au = abs(u)
                cover = (min(max((v - up) * px + f32(0.5), f32(0.0)), f32(1.0))
                         * min(max((lo - v) * px + f32(0.5), f32(0.0)), f32(1.0))
                         * min(max((f32(0.5) - au) * px + f32(0.5), f32(0.0)), f32(1.0)))
                if cover <= 0.0:
                    continue
                depth = min(max(min(v - up, lo - v) * f32(10.0), f32(0.0)), f32(1.0)) \
                    * (f32(1.0) - min(max((au - f32(0.3)) * f32(5.0), f32(0.0)), f32(1.0)))
                r = np.sqrt((u * f32(1.0 / 0.34)) ** 2 + ((v - t_cy) * f32(10.0)) ** 2)
                a_tg = min(max((f32(1.0) - r) * f32(0.1) * px + f32(0.5), f32(0.0)), f32(1.0)) * f32(0.9)
                lit = f32(0.7) + f32(0.3) * min(max((v - t_cy + f32(0.1)) * f32(12.5), f32(0.0)), f32(1.0))
                for c in range(3):
                    col[c] = colours[0, c] * (f32(1.6) - f32(0.8) * depth)
                    col[c] += a_tg * (colours[1, c] * lit - col[c])
                p2 = profiles[2, i0] + fr * (profiles[2, i0 + 1] - profiles[2, i0])
                p3 = profiles[3, i0] + fr * (profiles[3, i0 + 1] - profiles[3, i0])
                p4 = profiles[4, i0] + fr * (profiles[4, i0 + 1] - profiles[4, i0])
                if own_teeth:
                    up_r, lo_r, split = p2, p3, p4
                    gap_r = max(lo_r - up_r, f32(0.0))
                    h_up = split * gap_r
                    h_lo = (f32(1.0) - split) * gap_r
                    cut = up + h_up + f32(0.5) * ((lo - up) - gap_r)
                    if v <= cut:
                        t = v - up
                        v_src = up_r + t
                        cov = min(max((h_up - t) * px + f32(0.5), f32(0.0)), f32(1.0))
                    else:
                        t = lo - v
                        v_src = lo_r - t
                        cov = min(max((h_lo - t) * px + f32(0.5), f32(0.0)), f32(1.0))
                    if cov > 0.0:
                        sx = (pgeo[0] - f32(0.5)) + (u * pgeo[2] + v_src * pgeo[4]) * pgeo[6]
                        sy = (pgeo[1] - f32(0.5)) + (u * pgeo[3] + v_src * pgeo[5]) * pgeo[6]
                        fx0 = np.floor(sx)
                        fy0 = np.floor(sy)
                        wx = sx - fx0
                        wy = sy - fy0
                        ax = min(max(int(fx0), 0), pw - 1)
                        bx = min(max(int(fx0) + 1, 0), pw - 1)
                        ay = min(max(int(fy0), 0), ph - 1)
                        by = min(max(int(fy0) + 1, 0), ph - 1)
                        for c in range(3):
                            top = f32(portrait[ay, ax, c]) + wx * (f32(portrait[ay, bx, c]) - f32(portrait[ay, ax, c]))
                            bot = f32(portrait[by, ax, c]) + wx * (f32(portrait[by, bx, c]) - f32(portrait[by, ax, c]))
                            own = top + wy * (bot - top)
                            col[c] += cov * (own - col[c])
                else:
                    side, upper_gap, lower_gap = p2, p3, p4
                    u2 = (f32(2.0) * u) ** 2
                    if lower_h > 0.0:
                        lth = lower_h * (f32(1.0) - f32(2.0) * u2)
                        a_lt = min(max((v - (lo - lth)) * px + f32(0.5), f32(0.0)), f32(1.0)) \
                            * min(max(lth * px + f32(0.5), f32(0.0)), f32(1.0))
                        lt_shade = f32(0.6) - f32(0.1) * lower_gap
                        for c in range(3):
                            col[c] += a_lt * (colours[2, c] * lt_shade - col[c])
                    th = teeth_h * (f32(1.0) - f32(0.35) * u2)
                    # the teeth's biting edge: soft over ~2.5 % of the mouth width (1 px on small mouths)
                    a_ut = min(max((up + th - v) * min(px, f32(40.0)) + f32(0.5), f32(0.0)), f32(1.0)) * side
                    under_lip = f32(1.0) - f32(0.3) * np.exp(-max(v - up, f32(0.0)) * f32(40.0))
                    ut_shade = (f32(1.0) - f32(0.06) * upper_gap) * under_lip * (f32(0.7) + f32(0.3) * side)
                    for c in range(3):
                        col[c] += a_ut * (colours[2, c] * ut_shade - col[c])
                a = alpha * cover
                for c in range(3):
                    roi = f32(frame[gy, gx, c])
                    out = roi + a * (col[c] - roi) + f32(0.5)
                    frame[gy, gx, c] = np.uint8(min(max(out, f32(0.0)), f32(255.0)))

    return kernel


def _darkest_split(image_rgb, frame, upper, lower, rows: int = 24) -> np.ndarray:
    """Per column of the portrait's open mouth (sampled on _U), where its interior parts, as a
    fraction from the upper (0) to the lower (1) inner lip: at a clearly dark line (the gap
    between upper and lower teeth) in the lower 50-95%, else at 90% (a smile shows mostly upper
    teeth, which belong to the upper lip); smoothed along the mouth."""
    o, ex, ey, width = frame
    cols = np.linspace(0, len(_U) - 1, 61).astype(int)
    frac = np.linspace(0.5, 0.95, rows, dtype=np.float32)[:, None]
    vv = upper[cols][None] + frac * (lower[cols] - upper[cols])[None]        # (rows, cols)
    uu = np.broadcast_to(_U[cols][None], vv.shape)
    sx = (o[0] - 0.5 + (uu * ex[0] + vv * ey[0]) * width).astype(np.float32)
    sy = (o[1] - 0.5 + (uu * ex[1] + vv * ey[1]) * width).astype(np.float32)
    lum = cv2.remap(image_rgb, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lum = cv2.GaussianBlur(lum.astype(np.float32).mean(axis=2), (3, 3), 0)
    darkest = np.argmin(lum, axis=0)
    clear = lum[darkest, np.arange(lum.shape[1])] < 0.8 * np.median(lum, axis=0)
    split = np.where(clear, frac[darkest, 0], 0.9)
    split = np.convolve(np.pad(split, 4, mode="edge"), np.ones(9) / 9, mode="valid")
    return np.interp(_U, _U[cols], split).astype(np.float32)
