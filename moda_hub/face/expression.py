"""The portrait's own expression, and how much of it the speaking face keeps (``expression_scale``).

A portrait that smiles broadly, pouts or raises its brows would keep that shape through all of
the speech: stage 1 moves the lips *around the portrait's mouth*. :func:`relax_expression` moves
the subject's canonical mesh (the condition of stages 1 and 2 and the rest shape the motion is
added to) part of the way towards a neutral mouth and neutral brows:

- neutral mouth: the inner lip line of the canonical template (:mod:`moda_hub.face.template`,
  the mean of real faces) with the lips brought together (the mean face parts them by 0.07: many
  of its faces smile), placed at the subject's mouth centre (the mean of the midline lip points
  0, 13, 14, 17), no wider than the subject's own mouth (a small mouth stays small, a wide smile
  narrows); each outer lip point moves with its inner partner, so the person's own lip thickness
  is kept (a smile's thin, stretched lips are not stretched to the template's thickness);
- neutral brows: the template's brows placed over the subject's eyes (each brow keeps its
  offset from its eye's corners in the template), vertical and depth only (the brows' spacing
  along x is the person's).

The change at the lips and brows is spread to nearby points (cheeks, chin, forehead) with a
Gaussian fall-off, so the skin around them follows; points on the skull (forehead top, nose,
eye corners, temples: :data:`moda_hub.face.pose.POSE_POINTS`), the eye openings and the irises
never move.

``expression_scale`` = 1 keeps the portrait's expression (the mesh is returned untouched), 0 is
fully relaxed, values between interpolate, up to 1.5 exaggerates it. All positions are canonical
units ((478, 3) float32, outer-eye-corner distance 1).
"""
from __future__ import annotations

import numpy as np

from moda_hub.face import topology as topo
from moda_hub.face.lip_contact import LIP_PAIRS
from moda_hub.face.pose import POSE_POINTS
from moda_hub.face.template import canonical_template

#: How far the change at the lips / brows reaches into the surrounding skin, canonical units
#: (Gaussian sigma of the fall-off with the distance to the nearest lip / brow point).
LIP_REACH, BROW_REACH = 0.22, 0.12
_MOUTH_CENTRE = np.array([0, 13, 14, 17])
_BROWS = ((topo.RIGHT_BROW, np.array([33, 133])), (topo.LEFT_BROW, np.array([362, 263])))
_FIXED = np.unique(np.concatenate([POSE_POINTS, topo.LEFT_EYE, topo.RIGHT_EYE, np.arange(468, 478)]))


def neutral_offsets(canonical: np.ndarray) -> np.ndarray:
    """(478, 3) float32: how far each point of ``canonical`` (478, 3) moves to reach the neutral
    mouth and brows (lip and brow points exactly, the skin around them by fall-off, skull points,
    eyes and irises 0)."""
    c = np.asarray(canonical, np.float64)
    t = canonical_template().astype(np.float64)
    delta = np.zeros_like(c)
    lips = topo.LIPS
    width = lambda m: abs(m[291, 0] - m[61, 0])           # noqa: E731  outer mouth corners
    k = min(1.0, width(c) / width(t))
    centre_t = t[_MOUTH_CENTRE].mean(0)
    target = (_closed_lips(t) - centre_t) * k + c[_MOUTH_CENTRE].mean(0)        # (40, 3), LIPS order
    pos = {int(v): i for i, v in enumerate(lips)}
    d_inner = target[[pos[int(v)] for v in topo.LIPS_INNER]] - c[topo.LIPS_INNER]
    delta[topo.LIPS_INNER] = d_inner
    delta[topo.LIPS_OUTER] = d_inner      # LIPS_OUTER[i] partners LIPS_INNER[i]: lip thickness kept
    out = _spread(c, lips, delta[lips], LIP_REACH)
    for brow, eye in _BROWS:
        d = np.zeros((len(brow), 3))
        target = t[brow] - t[eye].mean(0) + c[eye].mean(0)
        d[:, 1:] = target[:, 1:] - c[brow, 1:]
        out += _spread(c, brow, d, BROW_REACH)
    out[_FIXED] = 0.0
    return out.astype(np.float32)


def lip_closure(canonical: np.ndarray) -> np.ndarray:
    """(40, 3) float32, ``topology.LIPS`` order: the offsets that bring the lips of ``canonical``
    (478, 3, canonical units, y down) together: each upper inner lip point moves down and its
    lower partner up by half their gap (``face.lip_contact.LIP_PAIRS``), each outer lip point
    with its inner partner (lip thickness kept), the corners not at all; zeros where the lips
    already touch. Upper and lower come from the contour order, not from the corners' height, so
    a broad smile (corners above the lips' middle) closes too."""
    c = np.asarray(canonical, np.float64)
    shift = {}
    for upper, lower in LIP_PAIRS:
        gap = max(c[lower, 1] - c[upper, 1], 0.0)
        shift[int(upper)], shift[int(lower)] = gap / 2, -gap / 2
    pos = {int(v): i for i, v in enumerate(topo.LIPS)}
    out = np.zeros((len(topo.LIPS), 3), np.float32)
    for inner, outer in zip(topo.LIPS_INNER, topo.LIPS_OUTER):   # LIPS_OUTER[i] partners LIPS_INNER[i]
        dy = shift.get(int(inner), 0.0)
        out[pos[int(inner)], 1] = dy
        out[pos[int(outer)], 1] = dy
    return out


def _closed_lips(t: np.ndarray) -> np.ndarray:
    """(40, 3): the lips (topology.LIPS order) of mesh ``t`` brought together: the upper lip moves
    down and the lower lip up by half the inner gap (13-14) each, fully in the middle, not at the
    corners (61, 291)."""
    lips = t[topo.LIPS].astype(np.float64).copy()
    xc, half = (t[61, 0] + t[291, 0]) / 2, abs(t[291, 0] - t[61, 0]) / 2
    y_line = (t[61, 1] + t[291, 1]) / 2
    gap = t[topo.MOUTH_INNER_BOTTOM, 1] - t[topo.MOUTH_INNER_TOP, 1]
    w = np.clip(1.0 - ((lips[:, 0] - xc) / half) ** 2, 0.0, 1.0)
    lips[:, 1] += np.where(lips[:, 1] < y_line, 0.5, -0.5) * gap * w
    return lips


def _spread(c: np.ndarray, ids: np.ndarray, d: np.ndarray, reach: float) -> np.ndarray:
    """(478, 3): offsets ``d`` (K, 3) at points ``ids`` (K,), and at every other point the
    Gaussian-weighted mean of them times a fall-off with the distance to the nearest of them."""
    dist = np.linalg.norm(c[:, None, :2] - c[None, ids, :2], axis=-1)          # (478, K), in the face plane
    k = np.exp(-0.5 * (dist / (0.5 * reach)) ** 2) + 1e-12
    mean = (k[..., None] * d[None]).sum(1) / k.sum(1)[:, None]
    falloff = np.exp(-0.5 * (dist.min(1) / reach) ** 2)[:, None]
    out = mean * falloff
    out[ids] = d
    return out


def relax_expression(canonical: np.ndarray, expression_scale: float) -> np.ndarray:
    """The subject's canonical mesh (478, 3) keeping ``expression_scale`` of its own mouth and brow
    expression: 1 returns ``canonical`` itself (untouched), 0 the neutral mouth and brows, 1.5 the
    expression half as strong again. float32, canonical units."""
    if float(expression_scale) == 1.0:
        return canonical
    c = np.asarray(canonical, np.float32)
    return (c + np.float32(1.0 - float(expression_scale)) * neutral_offsets(c)).astype(np.float32)
