"""Face parameters -> dense (478, 3) canonical mesh offsets: a small procedural face rig.

:class:`FaceRig` is built once per subject from its canonical mesh (478, 3) (canonical
space: centred, x right, y down, z away from the camera, outer-eye-corner distance 1.0).
``rig.offsets(params)`` turns per-frame parameters ``(T, P)`` over :data:`PARAMS` into
dense offsets ``(T, 478, 3)`` float32 in canonical units, so that
``subject_mesh + offsets`` is the deformed face (the stage-2 target; stage-1 lip / eye
targets are its ``topology.LIPS`` / ``topology.EYES`` rows).

Parameters (:data:`PARAMS`): the seven mouth parameters :data:`MOUTH_PARAMS`
(0..~1) then ``blink_left``, ``blink_right`` (0 open .. 1 closed; MediaPipe's "left" = the
subject's left), ``brow_raise`` (0..1, 1 = about 0.045 canonical units up), ``gaze_x``,
``gaze_y`` (eye rotation in degrees, + = image right / down).

What each one does to the mesh:

- the rig's *base* is the subject's mesh with its inner lips brought together (a portrait
  with a smile or an open mouth still gets a relaxed-closed mouth at silence);
- ``jaw_open``: rotation of the jaw about a left-right axis through a pivot near the ears
  (at the height of the nose base, cheek depth); per-point weights are 1 on the lower lip,
  chin and lower face, 0 on the upper lip and above, about 0.5 at the mouth corners and
  falling smoothly over the cheeks. 1.0 opens the inner lips (points 13/14) by
  :data:`JAW_GAP_AT_FULL` x the outer-eye-corner distance; the corners also move in a little
  and the upper lip up a little;
- ``lip_round``: corners pulled towards the mouth centre (-28 % width), lips forward
  (-0.07 z), opening a little rounder; ``lip_spread``: corners outward (+14 %), back and
  slightly up, lips thinner;
- ``upper_lip_raise``: upper lip up 0.045; ``lower_lip_tuck``: lower lip up 0.035 and back
  0.05 (under the upper teeth); ``lip_part``: inner lips apart by 0.05 without the jaw;
- ``lip_press``: after all of the above, brings each pair of inner-lip points together
  (upper lip 40 % of the way, lower lip 60 %), carrying the outer lips along with a
  falloff; a final step keeps the inner lips from crossing;
- ``blink_*``: each upper-lid point moves 80 % of the way to its lower-lid partner and the
  lower lid rises 20 % (1.0 = closed), the skin above follows with a falloff;
- ``brow_raise``: brows and forehead skin up, upper lid slightly;
- ``gaze_*``: the iris points shift by eyeball radius x sin(angle); lids follow vertical
  gaze a little.
"""
from __future__ import annotations

import numpy as np

from moda_hub.face import topology as topo

#: The rig's seven mouth parameters (the synthetic corpus's visemes are targets over these).
MOUTH_PARAMS = ("jaw_open", "lip_round", "lip_spread", "upper_lip_raise", "lower_lip_tuck",
                "lip_press", "lip_part")
PARAMS = MOUTH_PARAMS + ("blink_left", "blink_right", "brow_raise", "gaze_x", "gaze_y")
P_ALL = len(PARAMS)
(JAW, ROUND, SPREAD, RAISE, TUCK, PRESS, PART,
 BLINK_L, BLINK_R, BROW, GAZE_X, GAZE_Y) = range(P_ALL)

#: Inner-lip gap (13-14) that ``jaw_open = 1`` adds, in outer-eye-corner distances.
JAW_GAP_AT_FULL = 0.26
#: Eyeball radius in canonical units (about 12 mm for a 90 mm outer-eye-corner distance).
EYEBALL_RADIUS = 0.13

# Inner-lip pairs (upper, lower), corner to corner without the corners (78 / 308).
INNER_UPPER = np.array([191, 80, 81, 82, 13, 312, 311, 310, 415])
INNER_LOWER = np.array([95, 88, 178, 87, 14, 317, 402, 318, 324])
OUTER_UPPER = np.array([185, 40, 39, 37, 0, 267, 269, 270, 409])
OUTER_LOWER = np.array([146, 91, 181, 84, 17, 314, 405, 321, 375])
INNER_CORNERS = np.array([78, 308])
OUTER_CORNERS = np.array([61, 291])

# Eyelid pairs (upper, lower) without the corners; right eye then left eye.
LID_PAIRS = {
    "right": (topo.RIGHT_EYE_UPPER[1:-1], topo.RIGHT_EYE_LOWER[1:-1]),
    "left": (topo.LEFT_EYE_UPPER[1:-1], topo.LEFT_EYE_LOWER[1:-1]),
}
IRIS = {"right": np.concatenate([[topo.RIGHT_IRIS_CENTER], topo.RIGHT_IRIS]),
        "left": np.concatenate([[topo.LEFT_IRIS_CENTER], topo.LEFT_IRIS])}


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class FaceRig:
    """Procedural rig of one subject.

    mesh: (478, 3) canonical mesh of the subject (the subject condition). Offsets returned
    by :meth:`offsets` are relative to this mesh.

    Example::

        >>> rig = FaceRig(canonical_template())
        >>> p = np.zeros((1, len(PARAMS)), np.float32); p[0, JAW] = 1.0
        >>> topology.mouth_aperture(rig.mesh + rig.offsets(p))   # about 0.26
    """

    def __init__(self, mesh: np.ndarray):
        mesh = np.asarray(mesh, np.float64)
        if mesh.shape != (topo.NUM_LANDMARKS, 3):
            raise ValueError(f"FaceRig needs a (478, 3) canonical mesh, got {mesh.shape}")
        self.mesh = mesh.astype(np.float32)
        self.iod = float(np.linalg.norm(mesh[topo.EYE_OUTER_RIGHT] - mesh[topo.EYE_OUTER_LEFT]))
        n = topo.NUM_LANDMARKS
        x, y = mesh[:, 0], mesh[:, 1]
        s = self.iod

        # --- mouth frame ---------------------------------------------------------------
        corners = mesh[OUTER_CORNERS]
        self.mouth_center = 0.5 * (mesh[13] + mesh[14])
        cx = float(0.5 * (corners[0, 0] + corners[1, 0]))
        self.half_width = a = float(0.5 * abs(corners[1, 0] - corners[0, 0]))
        xn = (x - cx) / a                                      # -1 / +1 at the corners
        # lip midline: between inner-lip pairs; beyond the corners rising to the pivot
        up, lo = mesh[INNER_UPPER], mesh[INNER_LOWER]
        mid_x = np.concatenate([[mesh[78, 0]], 0.5 * (up[:, 0] + lo[:, 0]), [mesh[308, 0]]])
        mid_y = np.concatenate([[mesh[78, 1]], 0.5 * (up[:, 1] + lo[:, 1]), [mesh[308, 1]]])
        order = np.argsort(mid_x)
        mid_x, mid_y = mid_x[order], mid_y[order]
        self.pivot = np.array([0.0, mesh[2, 1] - 0.05 * s,
                               0.5 * (mesh[234, 2] + mesh[454, 2]) - 0.05 * s])
        ear_dx = 0.8 * s
        ymid = np.interp(x, mid_x, mid_y)
        left_out = x < mid_x[0]
        right_out = x > mid_x[-1]
        ymid[left_out] = mid_y[0] + (self.pivot[1] - mid_y[0]) * np.clip(
            (mid_x[0] - x[left_out]) / ear_dx, 0, 1)
        ymid[right_out] = mid_y[-1] + (self.pivot[1] - mid_y[-1]) * np.clip(
            (x[right_out] - mid_x[-1]) / ear_dx, 0, 1)
        v = y - ymid                                           # + below the lip midline
        lower = v > 0
        upper_lip = np.concatenate([INNER_UPPER, OUTER_UPPER])
        lower_lip = np.concatenate([INNER_LOWER, OUTER_LOWER])
        lower[upper_lip] = False
        lower[lower_lip] = True
        self.lower_side = lower
        beyond = np.maximum(np.abs(xn) - 1.0, 0.0)

        # jaw weights: 1 lower face, 0 upper, 0.5 at the corners, smooth over the cheeks
        sig_v = (0.05 + 0.35 * beyond * a) * s
        b = np.where(np.abs(xn) <= 1.0, _smoothstep((np.abs(xn) - 0.2) / 0.8), 1.0)
        g = np.exp(-np.square(v / sig_v))
        w_jaw = np.where(lower, 1.0 - 0.5 * g * b, 0.5 * g * b)
        # far above the jaw line towards the ears nothing moves
        w_jaw *= np.exp(-np.square(np.maximum(self.pivot[1] - y, 0.0) / (0.1 * s)))
        self.w_jaw = w_jaw
        r = mesh - self.pivot
        self._r = r
        lever = abs(r[14, 2]) + 1e-6
        self.theta_max = float(np.arcsin(min(JAW_GAP_AT_FULL * s / lever, 0.9)))

        # masks around the mouth
        cy = float(self.mouth_center[1])
        rr = np.sqrt(np.square((x - cx) / (1.4 * a)) + np.square((y - cy) / (0.22 * s)))
        m_wide = 1.0 / (1.0 + np.power(rr / 1.1, 6))          # lips + skin around
        rt = np.sqrt(np.square((x - cx) / (1.15 * a)) + np.square((y - cy) / (0.13 * s)))
        m_lip = 1.0 / (1.0 + np.power(rt / 1.0, 8))            # lips only
        dxc = x - cx
        vmid = y - ymid

        B = np.zeros((P_ALL, n, 3))
        # jaw_open (linear part; the rotation is applied in offsets())
        B_jaw = np.zeros((n, 3))
        B_jaw[:, 0] = -0.06 * dxc * m_lip
        lift = -0.012 * s * m_lip * (1 - 0.5 * np.square(np.clip(xn, -1, 1)))
        B_jaw[:, 1] = np.where(~lower, lift, 0.0)          # the upper lip rises a little
        self._B_jaw_lin = B_jaw
        # lip_round
        B[ROUND, :, 0] = -0.28 * dxc * m_wide
        B[ROUND, :, 1] = 0.12 * vmid * m_lip
        B[ROUND, :, 2] = -0.07 * s * (0.4 * m_wide + 0.6 * m_lip)
        # lip_spread
        xc = np.clip(xn, -1.3, 1.3)
        B[SPREAD, :, 0] = 0.14 * dxc * m_wide
        B[SPREAD, :, 1] = -0.12 * vmid * m_lip - 0.015 * s * np.square(xc) * m_wide
        B[SPREAD, :, 2] = 0.05 * s * np.square(xc) * m_wide
        # upper_lip_raise
        prof = np.clip(1.0 - 0.5 * np.square(np.clip(xn, -1.2, 1.2)), 0.0, 1.0)
        B[RAISE, :, 1] = np.where(~lower, -0.045 * s * m_wide * prof, 0.0)
        B[RAISE, :, 2] = np.where(~lower, -0.01 * s * m_wide * prof, 0.0)
        # lower_lip_tuck
        prof_t = np.clip(1.0 - 0.6 * np.square(np.clip(xn, -1.2, 1.2)), 0.0, 1.0)
        B[TUCK, :, 1] = np.where(lower, -0.035 * s * m_lip * prof_t, 0.0)
        B[TUCK, :, 2] = np.where(lower, 0.05 * s * m_lip * prof_t, 0.0)
        # lip_part
        prof_p = np.clip(1.0 - np.square(np.clip(xn, -1, 1)), 0.0, 1.0) * m_lip
        B[PART, :, 1] = np.where(lower, 0.028 * s, -0.022 * s) * prof_p

        # lip-closing interpolation: inner pair k -> every point of the same side
        pair_x = 0.5 * (mesh[INNER_UPPER, 0] + mesh[INNER_LOWER, 0])
        kx = np.exp(-np.square((x[:, None] - pair_x[None, :]) / (0.25 * a)))
        kx /= kx.sum(axis=1, keepdims=True)
        dist_v = np.abs(vmid)
        fall = np.exp(-np.square(dist_v / (0.12 * s))) * np.exp(-np.square(beyond / 0.3))
        K = kx * fall[:, None]
        K_up = np.where(~lower[:, None], K, 0.0)
        K_lo = np.where(lower[:, None], K, 0.0)
        for k, (iu, il) in enumerate(zip(INNER_UPPER, INNER_LOWER)):
            K_up[iu] = 0.0
            K_up[iu, k] = 1.0
            K_lo[il] = 0.0
            K_lo[il, k] = 1.0
        self._K_up, self._K_lo = K_up, K_lo

        # --- eyes ------------------------------------------------------------------------
        for side, pidx in (("right", BLINK_R), ("left", BLINK_L)):
            ui, li = LID_PAIRS[side]
            gap = mesh[li] - mesh[ui]                           # (7, 3), lower - upper
            B[pidx, ui] = 0.8 * gap
            B[pidx, li] = -0.2 * gap
            # skin above the upper lid follows its nearest lid point, fading with distance
            eye_pts = np.concatenate([topo.RIGHT_EYE if side == "right" else topo.LEFT_EYE])
            eye_y = mesh[eye_pts, 1].mean()
            d = np.linalg.norm(mesh[:, None, :2] - mesh[None, ui, :2], axis=-1)   # (n, 7)
            near = d.argmin(axis=1)
            dmin = d.min(axis=1)
            follow = 0.45 * np.exp(-np.square(dmin / (0.05 * s)))
            follow[np.concatenate([ui, li, eye_pts, IRIS[side]])] = 0.0
            follow[y > eye_y] = 0.0
            B[pidx] += follow[:, None] * 0.8 * gap[near]
        # brow_raise: brows and forehead up, fading with distance to the nearest brow point
        brows = np.concatenate([topo.LEFT_BROW, topo.RIGHT_BROW])
        eyes_y = mesh[np.concatenate([topo.LEFT_EYE, topo.RIGHT_EYE]), 1].mean()
        d = np.linalg.norm(mesh[:, None, :2] - mesh[None, brows, :2], axis=-1).min(axis=1)
        m_brow = np.exp(-np.square(d / (0.12 * s)))
        m_brow *= _smoothstep((eyes_y - y) / (0.08 * s) + 0.3)     # above the eyes only
        m_brow[brows] = 1.0
        B[BROW, :, 1] = -0.045 * s * m_brow
        for side in ("right", "left"):
            B[BROW, LID_PAIRS[side][0], 1] = -0.006 * s
        # gaze (per degree): iris points, lids follow vertical gaze a little
        deg = EYEBALL_RADIUS * s * np.pi / 180.0
        for side in ("right", "left"):
            B[GAZE_X, IRIS[side], 0] = deg
            B[GAZE_Y, IRIS[side], 1] = deg
            B[GAZE_Y, LID_PAIRS[side][0], 1] = 0.4 * deg
            B[GAZE_Y, LID_PAIRS[side][1], 1] = 0.2 * deg
        self.B = B.astype(np.float32)

        # base: the subject's mesh with the inner lips together. A wide-open portrait
        # mouth is closed mostly by the jaw (rotating back), the last 0.03 by the lips.
        base = mesh.copy()
        gap_c = float(mesh[14, 1] - mesh[13, 1])
        if gap_c > 0.03 * s:
            th0 = -np.arcsin(min(0.85 * (gap_c - 0.03 * s) / lever, 0.9))
            base += self._rotation(np.array([th0]))[0] * w_jaw[:, None]
        gap0 = (base[INNER_LOWER] - base[INNER_UPPER])[None]     # (1, 9, 3)
        base += self._closing(gap0, np.ones(1))[0]
        self.base = base

    # ---------------------------------------------------------------------------------
    def _closing(self, gap: np.ndarray, amount: np.ndarray) -> np.ndarray:
        """Offsets (T, 478, 3) bringing inner-lip pairs together by ``amount`` (T,) of
        their ``gap`` (T, 9, 3) = lower - upper."""
        g = gap * amount[:, None, None]
        return (np.einsum("nk,tkc->tnc", self._K_up, 0.4 * g)
                - np.einsum("nk,tkc->tnc", self._K_lo, 0.6 * g))

    def _rotation(self, theta: np.ndarray) -> np.ndarray:
        """Full (unweighted) displacement (T, 478, 3) of a jaw rotation by ``theta`` (T,)
        radians about the pivot's left-right axis (+ = opening: chin down and back)."""
        c, s_ = np.cos(theta)[:, None], np.sin(theta)[:, None]
        ry, rz = self._r[None, :, 1], self._r[None, :, 2]
        rot = np.zeros((len(theta), topo.NUM_LANDMARKS, 3))
        rot[..., 1] = ry * (c - 1.0) - rz * s_
        rot[..., 2] = ry * s_ + rz * (c - 1.0)
        return rot

    def offsets(self, params: np.ndarray) -> np.ndarray:
        """Dense offsets (T, 478, 3) float32, canonical units, from ``params`` (T, P).

        params: (T, len(PARAMS)) or (T, 7) (mouth only; eyes then stay open).
        """
        p = np.asarray(params, np.float64)
        if p.ndim == 1:
            p = p[None]
        if p.shape[1] < P_ALL:
            p = np.concatenate([p, np.zeros((p.shape[0], P_ALL - p.shape[1]))], axis=1)
        T = p.shape[0]
        # 1. jaw rotation about the pivot (x axis), weighted per point
        rot = self._rotation(p[:, JAW] * self.theta_max)
        out = self.base[None] + rot * self.w_jaw[None, :, None]
        out += p[:, JAW, None, None] * self._B_jaw_lin[None]
        # 2. linear fields (mouth shapes, eyes, brows, gaze)
        out += np.einsum("tp,pnc->tnc", p, self.B)
        # 3. closure, then keep the inner lips from crossing
        gap = out[:, INNER_LOWER] - out[:, INNER_UPPER]        # (T, 9, 3)
        out += self._closing(gap, np.clip(p[:, PRESS], 0.0, 1.0))
        gap = out[:, INNER_LOWER] - out[:, INNER_UPPER]
        cross = np.zeros_like(gap)
        cross[..., 1] = np.minimum(gap[..., 1], 0.0)
        out += self._closing(cross, np.ones(T))
        return (out - self.mesh[None]).astype(np.float32)

    def meshes(self, params: np.ndarray) -> np.ndarray:
        """Deformed meshes (T, 478, 3) = subject mesh + :meth:`offsets`."""
        return self.mesh[None] + self.offsets(params)

