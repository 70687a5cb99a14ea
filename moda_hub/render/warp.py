"""WarpRenderer: one-shot rendering of a portrait driven by face meshes, no weights.

Each frame is a dense piecewise-affine backward warp of the portrait: MediaPipe's face
tessellation, fills of the eye openings (with the iris points) and of the mouth opening, and a
band of rings around the face oval that carries the head's motion out into a still
background (the torso region below the chin follows ``torso_offset_px``). Overlapping
triangles (head turns) are drawn far to near by depth and the silhouettes where the surface
folds are softened. Where the lips part more than in the portrait an inner mouth (cavity,
teeth, tongue) is synthesised. The eye-opening fill keeps the portrait's eye in place under a
closing lid, and the upper-lid skin (drawn nearer) unfolds over it.

Everything that depends only on the portrait is computed once by :meth:`WarpRenderer.prepare`;
:meth:`WarpRenderer.render` then does per frame: vertex positions, per-triangle affine maps
(destination -> source), one compiled rasterisation pass that writes each pixel's source
position (:mod:`moda_hub.render.raster`) and one ``cv2.remap``, then the inner mouth.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Optional

import cv2
import numpy as np
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from moda_hub.errors import InvalidParameterError
from moda_hub.face import topology as topo
from moda_hub.render import mesh as mesh_lib
from moda_hub.render import mouth as mouth_lib
from moda_hub.render.jit import compiled, warm_up_in_background
from moda_hub.render.raster import affine_maps, triangle_affines
from moda_hub.render.crop import CropBox, Feather, crop_texture, face_crop_box, feather_mask, paste_back, \
    paste_region

@dataclass
class PreparedPortrait:
    """Everything :meth:`WarpRenderer.render` needs about one portrait (from :meth:`WarpRenderer.prepare`).

    Canvas = the face crop the renderer draws (see :class:`~moda_hub.render.crop.CropBox`);
    all positions below are canvas pixels unless said otherwise.

    box: where the canvas sits in the full portrait.
    texture: (h + 2 pad, w + 2 pad, 3) uint8, the portrait as the canvas sees it, padded.
    pad: texture margin in pixels (canvas (x, y) is texture (x + pad, y + pad)).
    full_image: (H, W, 3) uint8 portrait when frames are pasted back (output_size 0), else None.
    paste_mask: paste-back weights (None for crops).
    ref_landmarks: (478, 3) float32 reference mesh on the canvas.
    vertices_src: (N, 2) float32 every vertex's source position, texture pixels (integer centres).
    source_corners: (F, 3, 2) float32 ``vertices_src[triangles]``.
    triangles: (F, 3) int32 over [478 landmarks, 28 eyeball vertices, band points]; rows
        [0, n_ordered) are drawn first, in order (band, mouth fill, eye fills), rows
        [n_ordered, F) are the face, sorted by depth per frame.
    n_band: number of band triangles (the first rows).
    band: band points and their motion weights.
    iris_vertices: (K,) landmark ids of iris points inside the eye fills; iris_by_eye: (2, M)
        the same per eye, -1 padded.
    mouth: inner-mouth model.
    edge_triangles: (E, 2) int32 rows of ``triangles`` on either side of each inner edge of the
        band and face meshes; edge_vertices: (E, 2) int32 the edge's vertex ids; ref_orientation:
        (F,) sign of each triangle's area in the reference. An edge between a triangle that keeps
        its orientation and one that flips is a silhouette (the surface folds under a head turn).
    map_stride: 1 or 2, the warp maps are computed on every (1) or every other (2) pixel and
        upsampled bilinearly (piecewise-affine maps are nearly linear, occlusion edges get soft).
    grid_x, grid_y: (gh, gw) float32 full-canvas pixel positions (integer centres) where the maps
        are computed; with stride 2, one extra sample on every side.
    """

    box: CropBox
    texture: np.ndarray
    pad: int
    full_image: Optional[np.ndarray]
    paste_mask: Optional[Feather]
    ref_landmarks: np.ndarray
    vertices_src: np.ndarray
    source_corners: np.ndarray
    triangles: np.ndarray
    n_ordered: int
    n_band: int
    band: mesh_lib.Band
    iris_vertices: np.ndarray
    iris_by_eye: np.ndarray
    mouth: mouth_lib.MouthModel
    edge_triangles: np.ndarray
    edge_vertices: np.ndarray
    ref_orientation: np.ndarray
    map_stride: int
    grid_x: np.ndarray
    grid_y: np.ndarray

    @property
    def image(self) -> np.ndarray:
        """(h, w, 3) uint8: the portrait on the canvas (what rendering the reference mesh gives)."""
        p = self.pad
        return self.texture[p:p + self.box.height, p:p + self.box.width]

    @property
    def output_hw(self) -> tuple[int, int]:
        """(height, width) of rendered frames."""
        if self.full_image is not None:
            return self.full_image.shape[:2]
        return self.box.height, self.box.width

    @property
    def paste_region(self) -> Optional[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1) even full-image pixels: the only part of a pasted-back frame that
        differs from the portrait (see :func:`~moda_hub.render.crop.paste_region`); None for
        crops and odd-sized portraits."""
        return paste_region(self.box) if self.full_image is not None else None

    def to_output_px(self, landmarks_px: np.ndarray) -> np.ndarray:
        """Full-portrait pixels (..., 2 or 3) -> pixels of the rendered frames."""
        if self.full_image is not None:
            return np.asarray(landmarks_px, np.float32)
        return self.box.to_canvas(landmarks_px)


class WarpRenderer(SchedulerMixin, ConfigMixin):
    r"""One-shot portrait renderer: dense mesh warp + inner-mouth synthesis, no weights.

    Saved as a config only (``renderer_config.json``), the way diffusers saves a scheduler, so
    ``WarpRenderer.from_pretrained(folder, subfolder="renderer")`` works offline and a
    weighted renderer with the same ``prepare`` / ``render`` methods can take its place.

    Args:
        output_size (int, default 512): side of the square face crop that is rendered, in
            pixels (e.g. 256 or 512); 0 renders at the portrait's resolution and pastes the face
            region back into the full image.
        crop_scale (float, default 2.2): crop side over the face's larger side.
        crop_shift_y (float, default 0.05): crop centre moved down by this fraction of the side
            (more neck and shoulders, less sky).
        feather (float, default 0.04): paste-back seam width, fraction of the face region's side.
        band_scales (list of float, default [1.2, 1.5, 1.9]): rings of band points around the
            face oval, in oval radii from the face centre (kept inside the crop).
        band_head_weights (list of float, default [1.0, 0.5, 0.0]): how much of the head's
            motion each ring follows; the background beyond a 0 ring stays still.
        torso_start, torso_end (float, default 0.15, 0.6): below the chin by this many face
            heights the band starts / fully follows ``torso_offset_px`` instead of the head.
        teeth_height (float, default 0.15): visible upper-teeth height, in mouth widths
            (corner to corner), below the upper inner lip.
        lower_teeth_height (float, default 0.0): visible lower-teeth height in the middle of the
            mouth, mouth widths (0: hidden by the lower lip).
        teeth_brightness (float, default 0.95): teeth colour = the portrait's own teeth, sclera
            or brightest whites (see :func:`~moda_hub.render.mouth.mouth_colours`) times this.
        cavity_darkness (float, default 0.25): mouth cavity colour = lip colour times this.
        mouth_open_threshold (float, default 0.01): inner-lip gap beyond the portrait's, in mouth
            widths, where the synthetic inner mouth starts to show ...
        mouth_blend_range (float, default 0.04): ... and how much more until it is fully shown.
        eyelid_fold (list of float, default [0.7, 0.25]): when an upper lid moves down (blink),
            the two rings of points above it move down by these fractions of its travel, so the
            lid skin unfolds over the eye instead of the lash line stretching.
        texture_pad (float, default 0.08): margin of portrait kept around the canvas for pixels
            that move in from outside, fraction of the canvas side.
        map_stride (int, default 2): 1 computes the warp map at every pixel; 2 on every other
            pixel, upsampled bilinearly (eyes and mouth still per pixel, PSNR >= 40 dB against
            stride 1) -- about 10 % less CPU on a 512 x 512 crop and 20 % on a 1024 full image.

    Example:
        >>> import numpy as np, skimage.data
        >>> from moda_hub.face.landmarks import detect_faces
        >>> from moda_hub.render import WarpRenderer
        >>> image = skimage.data.astronaut()
        >>> ref = detect_faces(image)[0]                        # (478, 3) image pixels
        >>> renderer = WarpRenderer(output_size=256)
        >>> prepared = renderer.prepare(image, ref)
        >>> frames = renderer.render(prepared, np.stack([ref, ref]))
        >>> frames.shape
        (2, 256, 256, 3)
    """

    config_name = "renderer_config.json"
    _compatibles: list = []
    has_compatibles = False

    @register_to_config
    def __init__(self, output_size: int = 512, crop_scale: float = 2.2, crop_shift_y: float = 0.05,
                 feather: float = 0.04, band_scales: tuple = (1.2, 1.5, 1.9),
                 band_head_weights: tuple = (1.0, 0.5, 0.0), torso_start: float = 0.15,
                 torso_end: float = 0.6, teeth_height: float = 0.15, lower_teeth_height: float = 0.0,
                 teeth_brightness: float = 0.95, cavity_darkness: float = 0.25,
                 mouth_open_threshold: float = 0.01, mouth_blend_range: float = 0.04,
                 eyelid_fold: tuple = (0.7, 0.25), texture_pad: float = 0.08, map_stride: int = 2):
        if output_size < 0:
            raise InvalidParameterError(
                f"output_size must be 0 (full image) or a size in pixels like 256 or 512, got {output_size}")
        if crop_scale < 1.2:
            raise InvalidParameterError(
                f"crop_scale must be at least 1.2 (the crop holds the face and a band around it), got {crop_scale}")
        # config.json stores lists; keep the in-memory config the same as a reloaded one
        self.register_to_config(band_scales=[float(v) for v in band_scales],
                                band_head_weights=[float(v) for v in band_head_weights],
                                eyelid_fold=[float(v) for v in eyelid_fold])
        if map_stride not in (1, 2):
            raise InvalidParameterError(f"map_stride must be 1 or 2, got {map_stride}")
        if len(eyelid_fold) != 2:
            raise InvalidParameterError("eyelid_fold must be two fractions, e.g. [0.7, 0.25]")
        if len(band_scales) != len(band_head_weights) or list(band_scales) != sorted(band_scales) \
                or min(band_scales) <= 1.0:
            raise InvalidParameterError(
                "band_scales must be increasing values > 1, one per band_head_weights entry")
        warm_up_in_background()

    # ------------------------------------------------------------------ prepare
    def prepare(self, image_rgb: np.ndarray, ref_landmarks_px: np.ndarray,
                output_size: Optional[int] = None) -> PreparedPortrait:
        """Precompute everything that depends only on the portrait.

        Args:
            image_rgb ((H, W, 3) uint8): the portrait, RGB.
            ref_landmarks_px ((478, 3) float): its MediaPipe mesh, full-image pixels (z = MediaPipe
                z times the image width).
            output_size (int, optional): overrides ``config.output_size`` (0 = full image).

        Returns:
            [`PreparedPortrait`] to pass to :meth:`render` for any number of frames.
        """
        cfg = self.config
        image = np.ascontiguousarray(np.asarray(image_rgb))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidParameterError(
                f"image_rgb must be an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}; "
                "load it with moda_hub.face.image.load_image")
        ref = np.asarray(ref_landmarks_px, np.float32)
        if ref.shape != (topo.NUM_LANDMARKS, 3):
            raise InvalidParameterError(f"ref_landmarks_px must be (478, 3) image pixels, got {ref.shape}")
        size = cfg.output_size if output_size is None else int(output_size)
        box = face_crop_box(ref, image.shape[:2], size, cfg.crop_scale, cfg.crop_shift_y)
        pad = int(round(cfg.texture_pad * max(box.width, box.height))) + 2
        texture = crop_texture(image, box, pad)
        full = size == 0
        ref_c = box.to_canvas(ref)
        xy = ref_c[:, :2]

        # triangles: band, mouth fill, eye fills (drawn first, in order), then the face
        n_eyeball = len(mesh_lib.EYEBALL_SOURCES)
        band = mesh_lib.build_band(xy, (box.width, box.height), tuple(cfg.band_scales),
                                   tuple(cfg.band_head_weights), cfg.torso_start, cfg.torso_end,
                                   pinned_edges=_pinned_edges(box, full),
                                   first_id=topo.NUM_LANDMARKS + n_eyeball)
        eye_tris, iris = mesh_lib.eye_fill_triangles(xy)
        tris = np.concatenate([band.triangles, mesh_lib.mouth_fill_triangles(), eye_tris,
                               mesh_lib.face_triangles()]).astype(np.int32)
        n_ordered = len(tris) - len(mesh_lib.face_triangles())
        vertices = np.concatenate([xy, xy[mesh_lib.EYEBALL_SOURCES], band.points]).astype(np.float32)
        # source positions: texture pixels with integer centres
        vertices_src = vertices + np.float32(pad - 0.5)
        edge_tris, edge_verts = _inner_edges(tris, skip=range(len(band.triangles), n_ordered))
        q = vertices[tris]
        orientation = np.sign((q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1])
                              - (q[:, 1, 1] - q[:, 0, 1]) * (q[:, 2, 0] - q[:, 0, 0])).astype(np.float32)

        mouth = mouth_lib.MouthModel.from_portrait(
            texture[pad:pad + box.height, pad:pad + box.width], xy,
            teeth_brightness=cfg.teeth_brightness, cavity_darkness=cfg.cavity_darkness,
            teeth_height=cfg.teeth_height, lower_teeth_height=cfg.lower_teeth_height,
            open_threshold=cfg.mouth_open_threshold, blend_range=cfg.mouth_blend_range)
        stride = int(cfg.map_stride)
        if stride == 1:
            gy, gx = np.mgrid[0:box.height, 0:box.width].astype(np.float32)
        else:
            # every other pixel, one extra sample on each side: position 2 (k - 1) + 0.5
            half = np.mgrid[-1:(box.height + 1) // 2 + 1, -1:(box.width + 1) // 2 + 1]
            gy, gx = (2.0 * half + 0.5).astype(np.float32)
        return PreparedPortrait(
            box=box, texture=texture, pad=pad, full_image=image if full else None,
            paste_mask=feather_mask(box, int(round(cfg.feather * max(box.width, box.height)))) if full else None,
            ref_landmarks=ref_c, vertices_src=vertices_src, source_corners=np.ascontiguousarray(vertices_src[tris]),
            triangles=tris, n_ordered=n_ordered,
            n_band=len(band.triangles), band=band, iris_vertices=iris, iris_by_eye=iris_by_eye(iris), mouth=mouth,
            edge_triangles=edge_tris, edge_vertices=edge_verts, ref_orientation=orientation,
            map_stride=stride, grid_x=gx, grid_y=gy)

    # ------------------------------------------------------------------ render
    def render(self, prepared: PreparedPortrait, landmarks_px: np.ndarray,
               torso_offset_px: Optional[np.ndarray] = None, region_only: bool = False) -> np.ndarray:
        """Render frames of the prepared portrait driven by face meshes.

        Args:
            prepared ([`PreparedPortrait`]): from :meth:`prepare`.
            landmarks_px ((T, 478, 3) or (478, 3) float): meshes in full-portrait pixels.
            torso_offset_px ((T, 2) float, optional): x, y shift of the upper body, full-portrait
                pixels; None keeps the torso still.
            region_only (bool, default False): for full-image output, return only
                ``prepared.paste_region`` of each frame (the rest of every frame is the portrait
                itself): what an encoder needs to build the full frames one at a time, without
                photo-sized frames in flight. Needs a ``paste_region`` (not None).

        Returns:
            (T, h, w, 3) uint8: square crops (output_size > 0), full portraits (output_size 0),
            or with ``region_only`` the frames' ``[y0:y1, x0:x1]`` for the paste region.
        """
        lm, torso = frame_meshes(landmarks_px, torso_offset_px)
        T = len(lm)
        if torso is None:
            torso = np.zeros((T, 2), np.float32)
        h, w = prepared.output_hw
        image, box = prepared.full_image, prepared.box
        if region_only:
            region = prepared.paste_region
            if region is None:
                raise InvalidParameterError("region_only needs a full-image portrait (output_size=0) of even "
                                            "width and height — render whole frames instead")
            x0, y0, x1, y1 = region
            h, w = y1 - y0, x1 - x0                # the same paste-back, in region coordinates
            image = image[y0:y1, x0:x1]
            box = replace(box, x0=box.x0 - x0, y0=box.y0 - y0, image_hw=(h, w))
        frames = np.empty((T, h, w, 3), np.uint8)

        def one(t: int) -> None:
            if image is not None:
                canvas = self._render_canvas(prepared, lm[t], torso[t])
                paste_back(image, canvas, box, prepared.paste_mask, out=frames[t])
            else:       # a crop is the canvas itself: draw straight into the output frame
                self._render_canvas(prepared, lm[t], torso[t], out=frames[t])

        pool = _render_pool() if T > 1 else None
        if pool is None:
            for t in range(T):
                one(t)
        else:   # frames are independent: the same pixels in any order, on any thread
            with _opencv_single_threaded():
                for _ in pool.map(one, range(T)):
                    pass
        return frames

    def _vertices(self, p: PreparedPortrait, lm_full: np.ndarray, torso_full: np.ndarray):
        """Frame vertex positions (N, 2) and landmark depths (478,), canvas pixels."""
        lm = p.box.to_canvas(lm_full)
        xy = lm[:, :2].copy()
        eyeball = _eyelids(xy, p.ref_landmarks[:, :2], p.iris_by_eye, self.config.eyelid_fold)
        disp = xy[topo.FACE_OVAL] - p.ref_landmarks[topo.FACE_OVAL, :2]
        b = p.band
        band = b.points + b.head_weight[:, None] * disp[b.oval_index] \
            + b.torso_weight[:, None] * (torso_full * np.float32(p.box.scale))[None]
        return np.concatenate([xy, eyeball, band]), lm[:, 2]

    def _render_canvas(self, p: PreparedPortrait, lm_full: np.ndarray, torso_full: np.ndarray,
                       out: Optional[np.ndarray] = None) -> np.ndarray:
        """One frame's canvas, (h, w, 3) uint8 canvas pixels; drawn into ``out`` when given."""
        verts, z = self._vertices(p, lm_full, torso_full)
        tri = p.triangles
        # 1. affine map per triangle, destination (canvas px) -> source (texture px)
        d = verts[tri]                                            # (F, 3, 2)
        tab, det = triangle_affines(d, p.source_corners)         # (6, F), (F,)
        ok = np.abs(det) > 0.05
        # 2. draw order: band, fills, then the face far to near (larger z = farther)
        n_ord, n_band = p.n_ordered, p.n_band
        ref_band = p.source_corners[:n_band] - np.float32(p.pad - 0.5)      # band triangles at rest
        moved = np.abs(d[:n_band] - ref_band).max(axis=(1, 2)) > 1e-3
        zf = z[tri[n_ord:]].mean(axis=1)
        order = np.concatenate([np.flatnonzero(moved), np.arange(n_band, n_ord),
                                n_ord + np.argsort(-zf, kind="stable")])
        order = order[ok[order]]
        pad = np.float32(p.pad)
        # identity (uncovered pixels show the portrait where they are), then every triangle's map
        h, w = p.box.height, p.box.width
        lo_all = np.minimum(np.minimum(d[:, 0], d[:, 1]), d[:, 2])  # (F, 2) triangle bounds (faster than
        hi_all = np.maximum(np.maximum(d[:, 0], d[:, 1]), d[:, 2])  # a reduction over an axis of 3)
        map_x, map_y = p.grid_x + pad, p.grid_y + pad
        step = float(p.map_stride)
        affine_maps(d, order, tab, map_x, map_y, p.grid_x[0, 0], p.grid_y[0, 0], step)
        if p.map_stride == 2:
            size = (2 * map_x.shape[1], 2 * map_x.shape[0])
            map_x = cv2.resize(map_x, size, interpolation=cv2.INTER_LINEAR)[2:2 + h, 2:2 + w]
            map_y = cv2.resize(map_y, size, interpolation=cv2.INTER_LINEAR)[2:2 + h, 2:2 + w]
            # where the map jumps (lids or lips meeting over the eye or the mouth), interpolating
            # it would show what lies between in the portrait: recompute eyes and mouth per pixel
            lo, hi = lo_all[order], hi_all[order]                  # bounds of the drawn triangles
            for x0, y0, x1, y1 in _detail_boxes(verts, w, h):
                hit = order[(hi[:, 0] >= x0) & (lo[:, 0] <= x1) & (hi[:, 1] >= y0) & (lo[:, 1] <= y1)]
                sub_x, sub_y = map_x[y0:y1, x0:x1], map_y[y0:y1, x0:x1]
                sub_x[...] = np.arange(x0, x1, dtype=np.float32)[None, :] + pad
                sub_y[...] = np.arange(y0, y1, dtype=np.float32)[:, None] + pad
                affine_maps(d, hit, tab, sub_x, sub_y, x0, y0, 1.0)
        # 4. the warp itself, only where some triangle moved (the rest is the portrait as it is)
        canvas = np.empty((h, w, 3), np.uint8) if out is None else out
        canvas[...] = p.texture[p.pad:p.pad + h, p.pad:p.pad + w]
        if len(order):
            x0, y0 = np.maximum(np.floor(lo_all[order].min(axis=0)).astype(int) - 2, 0)
            x1, y1 = np.ceil(hi_all[order].max(axis=0)).astype(int) + 2
            x1, y1 = min(x1, w), min(y1, h)
            if x1 > x0 and y1 > y0:
                region = canvas[y0:y1, x0:x1]
                # fixed-point maps (1/32 px): OpenCV's remap converts float maps block by block
                # anyway; converting once up front is cheaper (512^2 crop: 1.0 -> 0.7 ms + 0.13 ms)
                fixed_xy, fixed_frac = cv2.convertMaps(map_x[y0:y1, x0:x1], map_y[y0:y1, x0:x1], cv2.CV_16SC2)
                warped = cv2.remap(p.texture, fixed_xy, fixed_frac, cv2.INTER_LINEAR,
                                   dst=region, borderMode=cv2.BORDER_REPLICATE)
                if warped is not region:                 # OpenCV wrote a new array, not the view
                    region[...] = warped
        # 5. soften silhouettes where the surface folds (head turns): natural edges are not sharp
        flipped = (det * p.ref_orientation < 0) & ok
        e0, e1 = p.edge_triangles[:, 0], p.edge_triangles[:, 1]
        silhouette = (flipped[e0] != flipped[e1]) & ok[e0] & ok[e1]
        if silhouette.any():
            _soften_lines(canvas, verts[p.edge_vertices[silhouette]])
        # 6. inner mouth where the lips part more than in the portrait
        xy = verts[:topo.NUM_LANDMARKS]
        alpha = mouth_lib.activity(xy, p.mouth)
        if alpha > 0:
            mouth_lib.synthesize(canvas, xy, p.mouth, alpha)
        return canvas


def _pinned_edges(box: CropBox, full: bool) -> tuple[bool, bool, bool, bool]:
    """Canvas edges the band must keep still (left, top, right, bottom): edges on the portrait's
    border (past them lies only the background fill, which must never move into view) and, when
    the canvas is pasted back, edges inside the portrait (the seam)."""
    inner = box.inner_edges if full else (False,) * 4
    return tuple(a or b for a, b in zip(box.border_edges, inner))


def frame_meshes(landmarks_px, torso_offset_px=None):
    """A renderer's per-frame inputs, checked: landmarks (T, 478, 3) float32 full-portrait pixels
    (one (478, 3) mesh becomes T = 1) and torso offsets (T, 2) float32 pixels, or None."""
    lm = np.asarray(landmarks_px, np.float32)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1:] != (topo.NUM_LANDMARKS, 3):
        raise InvalidParameterError(f"landmarks_px must be (T, 478, 3) image pixels, got {lm.shape}")
    if torso_offset_px is None:
        return lm, None
    torso = np.asarray(torso_offset_px, np.float32)
    if torso.shape != (len(lm), 2):
        raise InvalidParameterError(f"torso_offset_px must be (T, 2) = ({len(lm)}, 2) image pixels, "
                                    f"one row per mesh, got {torso.shape}")
    return lm, torso


#: Threads that render frames at once (the rasteriser, ``cv2.remap`` and most numpy work release
#: the GIL). ``MODA_RENDER_THREADS`` overrides; 1 renders on the calling thread.
RENDER_THREADS_ENV = "MODA_RENDER_THREADS"
_pools: dict = {}
_pools_lock = threading.Lock()


def render_threads() -> int:
    """Frame-rendering threads: ``$MODA_RENDER_THREADS``, else min(2, CPU cores)."""
    value = os.environ.get(RENDER_THREADS_ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise InvalidParameterError(f"{RENDER_THREADS_ENV}={value!r} — use a whole number of threads, e.g. 2")
    return max(1, min(2, os.cpu_count() or 1))


def _render_pool() -> Optional[ThreadPoolExecutor]:
    """One shared pool per thread count (concurrent calls share it, so the total stays bounded)."""
    n = render_threads()
    if n == 1:
        return None
    with _pools_lock:
        if n not in _pools:
            _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="moda-render")
        return _pools[n]


_opencv_lock = threading.Lock()
_opencv_users = [0, 1]          # renders in flight on the pool, OpenCV's thread count before the first


@contextmanager
def _opencv_single_threaded():
    """OpenCV's own worker threads off while the render pool runs: the pool already keeps the
    cores busy, and OpenCV threads inside each of its threads oversubscribe them (on 2 cores
    ~20 % more CPU a frame, most of it spent waking and parking threads). Restored when the last
    concurrent render finishes."""
    with _opencv_lock:
        if _opencv_users[0] == 0:
            _opencv_users[1] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv_users[0] += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_users[0] -= 1
            if _opencv_users[0] == 0:
                cv2.setNumThreads(_opencv_users[1])


def _inner_edges(triangles: np.ndarray, skip) -> tuple[np.ndarray, np.ndarray]:
    """Edges shared by two triangles (rows in ``skip`` left out): (E, 2) triangle rows, (E, 2) vertex ids."""
    skip = set(skip)
    owner: dict[tuple[int, int], int] = {}
    tri_pairs, vert_pairs = [], []
    for k, t in enumerate(triangles.tolist()):
        if k in skip:
            continue
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            key = (a, b) if a < b else (b, a)
            if key in owner:
                tri_pairs.append((owner.pop(key), k))
                vert_pairs.append(key)
            else:
                owner[key] = k
    return np.asarray(tri_pairs, np.int32).reshape(-1, 2), np.asarray(vert_pairs, np.int32).reshape(-1, 2)


def _soften_lines(canvas: np.ndarray, segments: np.ndarray, width: int = 3) -> None:
    """Blur ``canvas`` (h, w, 3) uint8 in place along line segments (S, 2, 2) px, feathered."""
    h, w = canvas.shape[:2]
    x0, y0 = np.floor(segments.reshape(-1, 2).min(axis=0)).astype(int) - 4
    x1, y1 = np.ceil(segments.reshape(-1, 2).max(axis=0)).astype(int) + 5
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    roi = canvas[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    lines = np.round((segments - 0.5 - np.float32([x0, y0])) * 16).astype(np.int32)
    cv2.polylines(mask, list(lines), False, 255, width, cv2.LINE_AA, 4)
    m = mask.astype(np.float32) * np.float32(1.0 / 255.0)
    blurred = cv2.GaussianBlur(roi, (5, 5), 1.0)
    roi[...] = cv2.blendLinear(roi, blurred, 1.0 - m, m)


# Regions drawn per pixel even with map_stride 2: each eye with its lids and the mouth.
_DETAIL_REGIONS = (
    np.concatenate([topo.RIGHT_EYE_LOOP, mesh_lib.EYES[0].upper_ring1, mesh_lib.EYES[0].upper_ring2]),
    np.concatenate([topo.LEFT_EYE_LOOP, mesh_lib.EYES[1].upper_ring1, mesh_lib.EYES[1].upper_ring2]),
    topo.LIPS_OUTER,
)


def _detail_boxes(verts: np.ndarray, w: int, h: int, margin: int = 3):
    """Pixel boxes (x0, y0, x1, y1) around the eyes and the mouth, inside the canvas."""
    boxes = []
    for ids in _DETAIL_REGIONS:
        q = verts[ids]
        x0, y0 = np.floor(q.min(axis=0)).astype(int) - margin
        x1, y1 = np.ceil(q.max(axis=0)).astype(int) + margin
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            boxes.append((int(x0), int(y0), int(x1), int(y1)))
    return boxes


# Both eyes at once: (2, ...) index arrays.
_EYE_A = np.array([e.upper[0] for e in mesh_lib.EYES])
_EYE_B = np.array([e.upper[-1] for e in mesh_lib.EYES])
_EYE_UP = np.stack([e.upper[1:-1] for e in mesh_lib.EYES])
_EYE_LO = np.stack([e.lower[1:-1] for e in mesh_lib.EYES])
_EYE_RINGS = np.stack([np.stack([e.upper_ring1, e.upper_ring2]) for e in mesh_lib.EYES])   # (2, 2, 7)


def iris_by_eye(iris_vertices: np.ndarray) -> np.ndarray:
    """(2, M) int64: the iris landmarks of ``iris_vertices`` that belong to each eye, -1 padded."""
    rows = [[int(v) for v in iris_vertices if v == eye.iris_centre or v in eye.iris_ring] for eye in mesh_lib.EYES]
    out = np.full((2, max(1, max(len(r) for r in rows))), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _eyelids(xy: np.ndarray, ref_xy: np.ndarray, iris: np.ndarray, fold) -> np.ndarray:
    """Eyelid handling for one frame; returns the eyeball vertices (28, 2), edits ``xy`` in place.

    xy, ref_xy: (478, 2) frame / reference landmarks, canvas px. Per eye, the reference lids are
    carried rigidly by the eye corners (a similarity); where a lid has moved towards the other
    (a blink) the eyeball vertex stays at the carried reference lid, so the eye-opening fill keeps
    its shape and the lid (drawn nearer) covers it; where a lid has opened further, the eyeball
    vertex follows the lid. When an upper lid comes down, the two rings above it are
    brought down to at least ``fold`` fractions of the lid's travel (the lid skin unfolds; rings
    the mesh already moved that far are left alone). Iris points are kept inside the eyeball
    opening. With the reference mesh nothing moves.

    iris: (2, M) from :func:`iris_by_eye`. One compiled pass (:func:`_eyelid_kernel`).
    """
    ball = np.empty((2, 2, _EYE_UP.shape[1], 2), np.float32)
    _eyelid_kernel(xy, np.ascontiguousarray(ref_xy, np.float32), _EYE_A, _EYE_B, _EYE_UP, _EYE_LO,
                   _EYE_RINGS, iris, np.asarray(fold, np.float64), ball)
    return ball.reshape(-1, 2)


@compiled
def _eyelid_kernel():
    """The work of :func:`_eyelids`, per eye: ``ball`` (eye, upper/lower, K, 2) is written and
    ``xy`` (478, 2) float32 edited in place; float64 arithmetic."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def kernel(xy, ref, eye_a, eye_b, eye_up, eye_lo, rings, iris, fold, ball):  # pragma: no cover
        K = eye_up.shape[1]
        geo = np.empty((2, 9))          # per eye: ax, ay, a0x, a0y, cos, sin, length, ex, ey
        closing = np.zeros((2, K))
        for i in range(2):
            ax = np.float64(xy[eye_a[i], 0]); ay = np.float64(xy[eye_a[i], 1])
            dx = np.float64(xy[eye_b[i], 0]) - ax; dy = np.float64(xy[eye_b[i], 1]) - ay
            a0x = np.float64(ref[eye_a[i], 0]); a0y = np.float64(ref[eye_a[i], 1])
            d0x = np.float64(ref[eye_b[i], 0]) - a0x; d0y = np.float64(ref[eye_b[i], 1]) - a0y
            den = max(d0x * d0x + d0y * d0y, 1e-12)
            cos = (dx * d0x + dy * d0y) / den
            sin = (d0x * dy - d0y * dx) / den
            length = max(np.hypot(dx, dy), 1e-6)
            geo[i, 0] = ax; geo[i, 1] = ay; geo[i, 2] = a0x; geo[i, 3] = a0y; geo[i, 4] = cos
            geo[i, 5] = sin; geo[i, 6] = length; geo[i, 7] = dx / length; geo[i, 8] = dy / length
            nx = -geo[i, 8]; ny = geo[i, 7]                                     # down
            for side in range(2):
                for k in range(K):
                    v = eye_up[i, k] if side == 0 else eye_lo[i, k]
                    qx = np.float64(ref[v, 0]) - a0x; qy = np.float64(ref[v, 1]) - a0y
                    rx = ax + (cos * qx - sin * qy); ry = ay + (sin * qx + cos * qy)
                    cx = np.float64(xy[v, 0]); cy = np.float64(xy[v, 1])
                    t = (cx - rx) * nx + (cy - ry) * ny
                    rigid = t > 0 if side == 0 else t < 0
                    ball[i, side, k, 0] = rx if rigid else cx
                    ball[i, side, k, 1] = ry if rigid else cy
                    if side == 0:
                        closing[i, k] = max(t, 0.0)
        if closing.max() > 0:
            for i in range(2):
                ax = geo[i, 0]; ay = geo[i, 1]; a0x = geo[i, 2]; a0y = geo[i, 3]
                cos = geo[i, 4]; sin = geo[i, 5]; nx = -geo[i, 8]; ny = geo[i, 7]
                for r in range(rings.shape[1]):
                    for k in range(rings.shape[2]):
                        v = rings[i, r, k]
                        qx = np.float64(ref[v, 0]) - a0x; qy = np.float64(ref[v, 1]) - a0y
                        rx = ax + (cos * qx - sin * qy); ry = ay + (sin * qx + cos * qy)
                        moved = (np.float64(xy[v, 0]) - rx) * nx + (np.float64(xy[v, 1]) - ry) * ny
                        push = max(fold[r] * closing[i, k] - moved, 0.0)
                        xy[v, 0] += np.float32(push * nx)
                        xy[v, 1] += np.float32(push * ny)
        for i in range(2):
            m = 0
            while m < iris.shape[1] and iris[i, m] >= 0:
                m += 1
            if m == 0:
                continue
            ax = geo[i, 0]; ay = geo[i, 1]; length = geo[i, 6]
            ex = geo[i, 7]; ey = geo[i, 8]; nx = -ey; ny = ex
            bx = np.float64(xy[eye_b[i], 0]); by = np.float64(xy[eye_b[i], 1])
            up_u = np.empty(K + 2); up_v = np.empty(K + 2); lo_u = np.empty(K + 2); lo_v = np.empty(K + 2)
            for side in range(2):
                uu = up_u if side == 0 else lo_u
                vv = up_v if side == 0 else lo_v
                uu[0] = 0.0; vv[0] = 0.0
                for k in range(K):
                    px = np.float64(ball[i, side, k, 0]) - ax; py = np.float64(ball[i, side, k, 1]) - ay
                    uu[k + 1] = px * ex + py * ey; vv[k + 1] = px * nx + py * ny
                px = bx - ax; py = by - ay
                uu[K + 1] = px * ex + py * ey; vv[K + 1] = px * nx + py * ny
                for k in range(1, K + 2):                        # non-decreasing u
                    uu[k] = max(uu[k], uu[k - 1])
            changed = False
            us = np.empty(m); vs = np.empty(m)
            for j in range(m):
                v = iris[i, j]
                qx = np.float64(xy[v, 0]) - ax; qy = np.float64(xy[v, 1]) - ay
                u0 = qx * ex + qy * ey; v0 = qx * nx + qy * ny
                u = min(max(u0, 0.0), length)
                v_up = np.interp(u, up_u, up_v); v_lo = np.interp(u, lo_u, lo_v)
                vc = min(max(v0, min(v_up, v_lo)), max(v_up, v_lo))
                us[j] = u; vs[j] = vc
                if u != u0 or vc != v0:
                    changed = True
            if changed:
                for j in range(m):
                    v = iris[i, j]
                    xy[v, 0] = np.float32(ax + us[j] * ex + vs[j] * nx)
                    xy[v, 1] = np.float32(ay + us[j] * ey + vs[j] * ny)

    return kernel
