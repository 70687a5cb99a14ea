"""Head pose: the similarity transform that puts the canonical template onto a face.

Frames (both right-handed):

- image frame: x right, y down (pixels), z away from the camera (MediaPipe z x image
  width, pixels) - the frame of ``landmarks_px``;
- canonical frame: the template's (see :mod:`moda_hub.face.template`): centred, x right,
  y down, z like MediaPipe, outer-eye-corner distance 1.

A pose ``(7,)`` float32 is ``[pitch, yaw, roll, tx, ty, tz, scale]`` meaning::

    landmarks_px = scale * R(pitch, yaw, roll) @ canon + [tx, ty, tz]

with angles in degrees, ``t`` in pixels (where the canonical origin lands) and ``scale``
in pixels per canonical unit.

Euler convention: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (pitch applied first, about the
x axis, then yaw about y, then roll about z; all axes fixed in the image frame, i.e.
extrinsic x-y-z, scipy's ``Rotation.from_euler("xyz", ...)``). Signs, seen in the image:

- pitch > 0: the head nods down (the nose tip moves down, the chin moves away);
- yaw > 0: the face turns towards the image's left (the subject's right);
- roll > 0: the head tilts clockwise on screen (the image-right eye goes down).

Angles are returned in ``[-180, 180]`` with yaw in ``[-90, 90]``; at yaw = +-90 (gimbal
lock) roll is set to 0.

The pose is fitted (Umeyama) on :data:`POSE_POINTS` only: forehead, nose bridge and tip,
eye corners and temples - points that move with the skull, not with lips, jaw or lids.
"""
from __future__ import annotations

import numpy as np
from moda_hub.face.template import canonical_template

# Landmarks that follow the skull: forehead, nose bridge/tip, eye corners, temples and
# the face oval at ear level. Not lips, jaw, cheeks, eyelids or brows.
FOREHEAD = [10, 151, 9, 108, 337, 67, 297, 109, 338, 69, 299]
NOSE_BRIDGE = [8, 168, 6, 197, 195, 5, 4, 1]
EYE_CORNERS = [33, 133, 362, 263]
TEMPLES = [127, 356, 162, 389, 21, 251, 234, 454]
POSE_POINTS = np.array(FOREHEAD + NOSE_BRIDGE + EYE_CORNERS + TEMPLES)


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama 1991), no reflection.

    Args:
        src: ``(..., N, D)`` points (D = 2 or 3), any unit.
        dst: ``(..., N, D)`` corresponding points; leading dims broadcast with ``src``.
        with_scale: fit ``s``; False keeps ``s = 1`` (rigid fit).

    Returns:
        ``s`` ``(...)`` (dst units per src unit), ``R`` ``(..., D, D)`` rotation
        (det +1), ``t`` ``(..., D)`` in dst units.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(-2), dst.mean(-2)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    n = src.shape[-2]
    cov = np.swapaxes(xd, -1, -2) @ xs / n                        # (..., D, D)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(sv.shape)
    d[..., -1] = np.sign(np.linalg.det(u) * np.linalg.det(vt))   # avoid reflections
    d[..., -1][d[..., -1] == 0] = 1.0
    rot = (u * d[..., None, :]) @ vt
    if with_scale:
        var_s = (xs ** 2).sum((-1, -2)) / n
        s = (sv * d).sum(-1) / np.maximum(var_s, 1e-300)
    else:
        s = np.ones(sv.shape[:-1])
    t = mu_d - s[..., None] * (rot @ mu_s[..., None])[..., 0]
    return s, rot, t


def euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """``(..., 3)`` [pitch, yaw, roll] in degrees -> ``(..., 3, 3)`` rotation
    ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (see module docstring for axes and signs)."""
    a = np.deg2rad(np.asarray(angles_deg, np.float64))
    cp, sp = np.cos(a[..., 0]), np.sin(a[..., 0])
    cy, sy = np.cos(a[..., 1]), np.sin(a[..., 1])
    cr, sr = np.cos(a[..., 2]), np.sin(a[..., 2])
    r = np.empty(a.shape[:-1] + (3, 3))
    r[..., 0, 0] = cr * cy
    r[..., 0, 1] = cr * sy * sp - sr * cp
    r[..., 0, 2] = cr * sy * cp + sr * sp
    r[..., 1, 0] = sr * cy
    r[..., 1, 1] = sr * sy * sp + cr * cp
    r[..., 1, 2] = sr * sy * cp - cr * sp
    r[..., 2, 0] = -sy
    r[..., 2, 1] = cy * sp
    r[..., 2, 2] = cy * cp
    return r


def matrix_to_euler(rot: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` rotation -> ``(..., 3)`` [pitch, yaw, roll] degrees; inverse of
    :func:`euler_to_matrix` (yaw in [-90, 90]; roll = 0 at gimbal lock)."""
    r = np.asarray(rot, np.float64)
    cy = np.hypot(r[..., 0, 0], r[..., 1, 0])
    yaw = np.arctan2(-r[..., 2, 0], cy)
    regular = cy > 1e-9
    pitch = np.where(regular, np.arctan2(r[..., 2, 1], r[..., 2, 2]),
                     np.arctan2(-r[..., 1, 2], r[..., 1, 1]))
    roll = np.where(regular, np.arctan2(r[..., 1, 0], r[..., 0, 0]), 0.0)
    return np.rad2deg(np.stack([pitch, yaw, roll], axis=-1))


def estimate_pose(landmarks_px: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """Head pose of one face or a sequence.

    Args:
        landmarks_px: ``(478, 3)`` or ``(T, 478, 3)`` image-frame landmarks (pixels).
        template: ``(478, 3)`` canonical mesh to fit; default the canonical template.

    Returns:
        ``(7,)`` or ``(T, 7)`` float32 pose ``[pitch, yaw, roll (deg), tx, ty, tz (px),
        scale (px per canonical unit)]``, so that ``landmarks_px[POSE_POINTS] ~
        scale * R @ template[POSE_POINTS] + t``.

    Example:
        >>> from moda_hub.face.template import canonical_template
        >>> pose = estimate_pose(100.0 * canonical_template() + [256, 256, 0])
        >>> np.round(pose, 3).tolist()
        [0.0, 0.0, 0.0, 256.0, 256.0, 0.0, 100.0]
    """
    if template is None:
        template = canonical_template()
    lm = np.asarray(landmarks_px, np.float64)
    s, rot, t = umeyama(np.asarray(template, np.float64)[POSE_POINTS], lm[..., POSE_POINTS, :])
    pose = np.concatenate([matrix_to_euler(rot), t, np.asarray(s)[..., None]], axis=-1)
    return pose.astype(np.float32)


def _similarity(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(..., 7)`` pose -> ``s (...), R (..., 3, 3), t (..., 3)`` in float64."""
    p = np.asarray(pose, np.float64)
    if p.shape[-1] != 7:
        raise ValueError(f"a pose has 7 numbers [pitch, yaw, roll, tx, ty, tz, scale], "
                         f"got shape {p.shape}")
    return p[..., 6], euler_to_matrix(p[..., :3]), p[..., 3:6]


def to_canonical(landmarks_px: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Image-frame landmarks -> canonical frame: ``R^T (x - t) / s``.

    Args:
        landmarks_px: ``(..., 478, 3)`` pixels, e.g. ``(478, 3)`` or ``(T, 478, 3)``.
        pose: ``(..., 7)`` matching the leading dims (``(7,)`` or ``(T, 7)``; one pose
            broadcasts over T).

    Returns:
        ``(..., 478, 3)`` float32, canonical units.
    """
    s, rot, t = _similarity(pose)
    x = np.asarray(landmarks_px, np.float64) - t[..., None, :]
    canon = np.matmul(x, rot) / s[..., None, None]                      # R^T x for each point (row)
    return canon.astype(np.float32)


def from_canonical(canon: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Canonical-frame points -> image frame: ``s R x + t``; inverse of :func:`to_canonical`.

    Args:
        canon: ``(..., 478, 3)`` canonical units, e.g. ``(T, 478, 3)``.
        pose: ``(..., 7)``, e.g. ``(T, 7)`` (or ``(7,)`` for all frames).

    Returns:
        ``(..., 478, 3)`` float32 landmarks_px.
    """
    s, rot, t = _similarity(pose)
    x = np.matmul(np.asarray(canon, np.float64), np.swapaxes(rot, -1, -2))   # R x per point; 10x einsum
    return (s[..., None, None] * x + t[..., None, :]).astype(np.float32)


def torso_to_px(torso: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
    """Stage-1 torso motion ``(T, 2)`` x, y shifts in canonical units -> ``(T, 2)`` float32 image
    pixels, at the portrait's scale ``ref_pose[6]`` (px per canonical unit)."""
    return (torso * ref_pose[6]).astype(np.float32)


def apply_head_offset(ref_pose: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Stage-1 head motion relative to the portrait -> absolute per-frame poses.

    Args:
        ref_pose: ``(7,)`` pose of the portrait face.
        head: ``(T, 7)`` ``[d_pitch, d_yaw, d_roll (deg), d_tx, d_ty, d_tz (canonical
            units), d_log_scale]``.

    Returns:
        ``(T, 7)`` float32 poses: angles ``ref + d`` (degrees, added per axis), translation
        ``ref_t + ref_scale * d_t`` (pixels, image axes), scale ``ref_scale * exp(d_log_scale)``.
        :func:`head_offset` is the inverse.
    """
    ref = np.asarray(ref_pose, np.float64)
    d = np.asarray(head, np.float64)
    out = np.empty(np.broadcast_shapes(ref.shape, d.shape))
    out[..., :3] = ref[..., :3] + d[..., :3]
    out[..., 3:6] = ref[..., 3:6] + ref[..., 6:7] * d[..., 3:6]
    out[..., 6] = ref[..., 6] * np.exp(d[..., 6])
    return out.astype(np.float32)


def head_offset(ref_pose: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Absolute poses ``(T, 7)`` -> stage-1 head motion ``(T, 7)`` relative to ``ref_pose``
    ``(7,)``; the inverse of :func:`apply_head_offset` (use it to make training targets)."""
    ref = np.asarray(ref_pose, np.float64)
    p = np.asarray(poses, np.float64)
    out = np.empty(np.broadcast_shapes(ref.shape, p.shape))
    out[..., :3] = p[..., :3] - ref[..., :3]
    out[..., 3:6] = (p[..., 3:6] - ref[..., 3:6]) / ref[..., 6:7]
    out[..., 6] = np.log(p[..., 6] / ref[..., 6])
    return out.astype(np.float32)
