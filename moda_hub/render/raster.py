"""Piecewise-affine warp maps by triangle rasterisation: one compiled pass per frame.

The WarpRenderer's backward warp gives every canvas pixel the source position of the triangle
that covers it (drawn in order, later triangles on top). :func:`affine_maps` rasterises all
triangles of a frame and evaluates their destination -> source affine maps in the same loop,
straight into ``map_x`` / ``map_y`` for ``cv2.remap`` -- no triangle-id image, no per-pixel
gather, one call instead of one ``cv2.fillConvexPoly`` per triangle (~1,600 a frame).

Coordinates: a sample at grid (row r, column c) is canvas pixel
``(gx, gy) = (x0 + c * step, y0 + r * step)`` (pixel indices), whose centre is the continuous
canvas position ``(gx + 0.5, gy + 0.5)`` -- the frame in which triangle corners are given.
A sample is covered by a triangle when its centre lies inside it or within ``tol`` pixels of
its edges (a little conservative, like a polygon fill that includes its outline, so shared
edges leave no cracks). Uncovered samples keep what the maps held (the caller fills identity).

The kernels are compiled by numba on first use (:mod:`moda_hub.render.jit`); they release the GIL.
"""
from __future__ import annotations

import numpy as np

from moda_hub.render.jit import compiled


@compiled
def _affines():
    import numba

    @numba.njit(cache=True, nogil=True)
    def affines(corners, sources, coeffs, det, min_det):  # pragma: no cover - compiled
        one = np.float32(1.0)
        half = np.float32(0.5)
        for k in range(corners.shape[0]):
            d0x = corners[k, 0, 0]; d0y = corners[k, 0, 1]
            d1x = corners[k, 1, 0] - d0x; d1y = corners[k, 1, 1] - d0y
            d2x = corners[k, 2, 0] - d0x; d2y = corners[k, 2, 1] - d0y
            dt = d1x * d2y - d1y * d2x
            det[k] = dt
            inv = one / dt if abs(dt) > min_det else np.float32(0.0)
            for axis in range(2):
                s0 = sources[k, 0, axis]
                s1 = sources[k, 1, axis] - s0
                s2 = sources[k, 2, axis] - s0
                ax = (s1 * d2y - s2 * d1y) * inv          # d src / d x
                ay = (s2 * d1x - s1 * d2x) * inv          # d src / d y
                coeffs[3 * axis, k] = ax
                coeffs[3 * axis + 1, k] = ay
                coeffs[3 * axis + 2, k] = s0 - ax * d0x - ay * d0y + half * (ax + ay)

    return affines


def triangle_affines(corners: np.ndarray, sources: np.ndarray, min_det: float = 0.05):
    """Per-triangle affine maps destination -> source, for :func:`affine_maps`.

    Args:
        corners ((F, 3, 2) float32): destination corners, continuous canvas pixels.
        sources ((F, 3, 2) float32): the same corners in the source image, pixels with integer
            centres (what ``cv2.remap`` reads).
        min_det (float): triangles with ``|det| <= min_det`` (twice the area, px^2) are
            degenerate: their maps are left zero and they should not be drawn.

    Returns:
        coeffs ((6, F) float32): column ``k`` maps pixel index (gx, gy) of triangle k to
            the source: ``x = c0 gx + c1 gy + c2``, ``y = c3 gx + c4 gy + c5``
            (no offset). det ((F,) float32): twice each triangle's signed area, px^2.
    """
    n = len(corners)
    coeffs = np.empty((6, n), np.float32)
    det = np.empty(n, np.float32)
    _affines(np.ascontiguousarray(corners, np.float32), np.ascontiguousarray(sources, np.float32),
             coeffs, det, np.float32(min_det))
    return coeffs, det


@compiled
def _kernel():
    import numba

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def kernel(corners, order, coeffs, map_x, map_y, x0, y0, step, tol):  # pragma: no cover - compiled
        rows, cols = map_x.shape
        inv = 1.0 / step
        for n in range(order.shape[0]):
            k = order[n]
            ax = np.float64(corners[k, 0, 0]); ay = np.float64(corners[k, 0, 1])
            bx = np.float64(corners[k, 1, 0]); by = np.float64(corners[k, 1, 1])
            cx = np.float64(corners[k, 2, 0]); cy = np.float64(corners[k, 2, 1])
            area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if area == 0.0:
                continue
            sgn = 1.0 if area > 0.0 else -1.0
            # edge functions e_i(p) >= -tol * |edge| keeps samples within tol px of the edge
            lab = np.sqrt((bx - ax) ** 2 + (by - ay) ** 2) * tol
            lbc = np.sqrt((cx - bx) ** 2 + (cy - by) ** 2) * tol
            lca = np.sqrt((ax - cx) ** 2 + (ay - cy) ** 2) * tol
            xmin = min(ax, bx, cx) - tol; xmax = max(ax, bx, cx) + tol
            ymin = min(ay, by, cy) - tol; ymax = max(ay, by, cy) + tol
            # sample centre x = x0 + c * step + 0.5
            c_lo = int(np.ceil((xmin - 0.5 - x0) * inv)); c_hi = int(np.floor((xmax - 0.5 - x0) * inv))
            r_lo = int(np.ceil((ymin - 0.5 - y0) * inv)); r_hi = int(np.floor((ymax - 0.5 - y0) * inv))
            if c_lo < 0:
                c_lo = 0
            if r_lo < 0:
                r_lo = 0
            if c_hi > cols - 1:
                c_hi = cols - 1
            if r_hi > rows - 1:
                r_hi = rows - 1
            if c_lo > c_hi or r_lo > r_hi:
                continue
            m0 = coeffs[0, k]; m1 = coeffs[1, k]; m2 = coeffs[2, k]
            m3 = coeffs[3, k]; m4 = coeffs[4, k]; m5 = coeffs[5, k]
            for r in range(r_lo, r_hi + 1):
                gy = y0 + r * step
                py = gy + 0.5
                for c in range(c_lo, c_hi + 1):
                    gx = x0 + c * step
                    px = gx + 0.5
                    e_ab = sgn * ((bx - ax) * (py - ay) - (by - ay) * (px - ax))
                    if e_ab < -lab:
                        continue
                    e_bc = sgn * ((cx - bx) * (py - by) - (cy - by) * (px - bx))
                    if e_bc < -lbc:
                        continue
                    e_ca = sgn * ((ax - cx) * (py - cy) - (ay - cy) * (px - cx))
                    if e_ca < -lca:
                        continue
                    map_x[r, c] = m0 * gx + m1 * gy + m2
                    map_y[r, c] = m3 * gx + m4 * gy + m5

    return kernel


def affine_maps(corners: np.ndarray, order: np.ndarray, coeffs: np.ndarray, map_x: np.ndarray,
                map_y: np.ndarray, x0: float = 0.0, y0: float = 0.0, step: float = 1.0, tol: float = 0.5) -> None:
    """Rasterise triangles into warp maps, in place.

    Args:
        corners ((F, 3, 2) float32): triangle corners, continuous canvas pixels (pixel i spans
            [i, i + 1), centre i + 0.5).
        order ((K,) int): triangle rows to draw, in draw order (later on top).
        coeffs ((6, F) float32): per triangle ``k`` in column ``k`` the affine map from
            pixel indices to source pixels: ``src_x = c0 gx + c1 gy + c2``,
            ``src_y = c3 gx + c4 gy + c5``.
        map_x, map_y ((rows, cols) float32): written where a triangle covers a sample.
        x0, y0 (float): pixel index of sample (0, 0); step (float): pixels between samples.
        tol (float): coverage margin beyond the edges, pixels.
    """
    _kernel(np.ascontiguousarray(corners, np.float32), np.ascontiguousarray(order, np.int64),
           np.ascontiguousarray(coeffs, np.float32), map_x, map_y, float(x0), float(y0), float(step), float(tol))
