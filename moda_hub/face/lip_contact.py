"""Lips that touch but never pass through each other.

Stage 1 predicts lip motion as offsets from the portrait's own mouth. On a portrait photographed
with the mouth open, a strong closing offset can carry the upper inner lip *below* the lower one
(on the dev clip vox_620900105, 82 of 109 frames with a 1.77x lip amplitude): the mesh then shows
crossed lips and the aperture measure, a distance, reads them as an open mouth.

:func:`keep_lips_apart` works in canonical space (y down, outer-eye-corner distance 1; see
``face/template.py``). For each column of the inner lip contour — an upper inner point above its
lower partner, e.g. 13 over 14 — a negative gap (upper below lower) is split evenly: the upper
point moves up and the lower point down by half of it each, so the two meet on the line between
them (the lips press together). Outer lip points and the rest of the mesh are left where they are;
frames whose lips do not cross are returned unchanged (bit for bit).
"""
from __future__ import annotations

import numpy as np

#: (upper, lower) inner-lip pairs, one per column of the inner contour (corners 78 and 308 excluded).
LIP_PAIRS = np.array([(13, 14), (82, 87), (81, 178), (80, 88), (191, 95),
                      (312, 317), (311, 402), (310, 318), (415, 324)])


def keep_lips_apart(mesh: np.ndarray) -> np.ndarray:
    """Meshes with no crossed inner lips.

    mesh: (T, 478, 3) or (478, 3) float, canonical space (y down). Returns an array of the same
    shape and dtype; a new array only when some pair crossed, else ``mesh`` itself.
    """
    upper, lower = LIP_PAIRS[:, 0], LIP_PAIRS[:, 1]
    gap = mesh[..., lower, 1] - mesh[..., upper, 1]          # (..., 9): >= 0 when the lips do not cross
    if not (gap < 0).any():
        return mesh
    half = np.minimum(gap, 0).astype(mesh.dtype) / 2          # <= 0
    out = mesh.copy()
    out[..., upper, 1] += half                                # upper point up (y down: subtract)
    out[..., lower, 1] -= half                                # lower point down
    return out
