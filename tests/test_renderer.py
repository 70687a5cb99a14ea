"""WarpRenderer: the portrait comes back unchanged, target meshes come out where MediaPipe sees
them, the background stays, the inner mouth is a steady texture, paste-back and config I/O."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import skimage.data

from moda_hub.errors import InvalidParameterError
from moda_hub.face import topology as topo
from moda_hub.face.landmarks import detect_faces
from moda_hub.render import WarpRenderer


# ----------------------------------------------------------------------------- target meshes
def open_jaw(lm: np.ndarray, degrees: float = 8.0) -> np.ndarray:
    """Rotate the lower lip, chin and jaw about a hinge between the ears (x axis), in 3D.

    Weights: lower lip 1 in the middle, falling to 0.5 at the mouth corners; upper lip 0;
    other points ramp from 0 above the mouth corners to 1 towards the chin.
    """
    lm = lm.astype(np.float64).copy()
    pivot = (lm[234] + lm[454]) / 2
    y_corners = (lm[61, 1] + lm[291, 1]) / 2
    ramp = np.clip((lm[:, 1] - y_corners) / (0.35 * (lm[152, 1] - y_corners)) + 0.15, 0, 1)
    w = ramp * ramp * (3 - 2 * ramp)
    upper = [191, 80, 81, 82, 13, 312, 311, 310, 415, 185, 40, 39, 37, 0, 267, 269, 270, 409]
    lower = [95, 88, 178, 87, 14, 317, 402, 318, 324, 146, 91, 181, 84, 17, 314, 405, 321, 375]
    x_mid, half = (lm[61, 0] + lm[291, 0]) / 2, abs(lm[291, 0] - lm[61, 0]) / 2
    w[upper] = 0.0
    w[lower] = 1 - 0.5 * np.clip(np.abs(lm[lower, 0] - x_mid) / half, 0, 1) ** 2
    w[[61, 291, 78, 308]] = 0.5
    w[468:] = 0.0
    th = np.radians(degrees) * w
    dy, dz = lm[:, 1] - pivot[1], lm[:, 2] - pivot[2]
    lm[:, 1] = pivot[1] + dy * np.cos(th) - dz * np.sin(th)
    lm[:, 2] = pivot[2] + dy * np.sin(th) + dz * np.cos(th)
    return lm.astype(np.float32)


def turn_head(lm: np.ndarray, yaw_degrees: float = 10.0) -> np.ndarray:
    """Rotate the whole mesh about its centroid around the vertical axis; orthographic, z kept."""
    lm = lm.astype(np.float64).copy()
    c = lm[:468].mean(axis=0)
    a = np.radians(yaw_degrees)
    dx, dz = lm[:, 0] - c[0], lm[:, 2] - c[2]
    lm[:, 0] = c[0] + dx * np.cos(a) + dz * np.sin(a)
    lm[:, 2] = c[2] - dx * np.sin(a) + dz * np.cos(a)
    return lm.astype(np.float32)


def close_eyes(lm: np.ndarray) -> np.ndarray:
    """Upper-lid margin points onto their lower-lid partners; irises onto the closed lid line."""
    lm = lm.copy()
    eyes = [(topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER, topo.RIGHT_IRIS_CENTER, topo.RIGHT_IRIS),
            (topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER, topo.LEFT_IRIS_CENTER, topo.LEFT_IRIS)]
    for upper, lower, centre, ring in eyes:
        lm[upper[1:-1]] = lm[lower[1:-1]]
        order = np.argsort(lm[lower, 0])
        for i in (centre, *ring):
            lm[i, 1] = np.interp(lm[i, 0], lm[lower, 0][order], lm[lower, 1][order])
    return lm


# jaw 8 degrees: the astronaut's inner-lip gap goes from 0.11 to 0.21 of the eye-corner distance
TARGETS = {"jaw_open_8deg": open_jaw, "yaw_10deg": turn_head,
           "yaw_minus_10deg": lambda lm: turn_head(lm, -10.0), "eyes_closed": close_eyes}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def astronaut():
    image = skimage.data.astronaut()
    return image, detect_faces(image)[0]


@pytest.fixture(scope="module")
def grace_hopper():
    import matplotlib.cbook
    from PIL import Image
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        image = np.asarray(im.convert("RGB"))
    return image, detect_faces(image)[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[topo.EYE_OUTER_RIGHT, :2] - lm[topo.EYE_OUTER_LEFT, :2]))


def mean_error(seen: np.ndarray, target: np.ndarray) -> float:
    """Mean 2-D distance over all 478 points, as a fraction of the target's inter-ocular distance."""
    return float(np.linalg.norm(seen[:, :2] - target[:, :2], axis=1).mean() / iod(target))


def mouth_pixels(lm_out: np.ndarray, hw: tuple[int, int], erode: int = 2) -> np.ndarray:
    """Boolean mask of pixels well inside the inner lips (landmarks in output pixels)."""
    mask = np.zeros(hw, np.uint8)
    cv2.fillPoly(mask, [np.round((lm_out[topo.LIPS_INNER, :2] - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return cv2.erode(mask, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)) > 0


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("output_size,map_stride", [(512, 1), (256, 1), (0, 1), (512, 2)])
def test_reference_mesh_reproduces_portrait(astronaut, output_size, map_stride):
    image, ref = astronaut
    renderer = WarpRenderer(output_size=output_size, map_stride=map_stride)
    prepared = renderer.prepare(image, ref)
    frames = renderer.render(prepared, np.stack([ref, ref]))
    portrait = image if output_size == 0 else prepared.image
    assert frames.shape == (2, *portrait.shape) and frames.dtype == np.uint8
    assert psnr(frames[0], portrait) >= 40.0
    np.testing.assert_array_equal(frames[0], frames[1])


def test_rendered_targets_match_landmarks_within_2pct_iod(astronaut):
    """MediaPipe on the rendered frames finds the target meshes: mean error <= 2% of the
    inter-ocular distance. Full-image output, so MediaPipe sees the portrait framed as when the
    reference mesh was found (rendering the reference gives the identical image, error 0)."""
    image, ref = astronaut
    renderer = WarpRenderer(output_size=0)
    prepared = renderer.prepare(image, ref)
    targets = {name: make(ref) for name, make in TARGETS.items()}
    frames = renderer.render(prepared, np.stack(list(targets.values())))
    errors, seen = {}, {}
    for (name, target), frame in zip(targets.items(), frames):
        seen[name] = detect_faces(frame)[0]
        errors[name] = mean_error(seen[name], target)
    assert all(e <= 0.02 for e in errors.values()), errors
    # what each target is about is what MediaPipe sees
    assert topo.mouth_aperture(seen["jaw_open_8deg"]) > topo.mouth_aperture(ref) + 0.06
    assert topo.eye_openness(seen["eyes_closed"]) < 0.5 * topo.eye_openness(ref)
    for name in ("yaw_10deg", "yaw_minus_10deg"):
        shift = seen[name][topo.NOSE_TIP, 0] - ref[topo.NOSE_TIP, 0]
        assert np.sign(shift) == np.sign(targets[name][topo.NOSE_TIP, 0] - ref[topo.NOSE_TIP, 0])


def test_rendered_crop_moves_landmarks_as_the_targets_do(astronaut):
    """On a 512 face crop MediaPipe reads even the unchanged portrait ~1.3% IOD off the mesh found
    on the full image (its result depends on the framing). Measured from its reading of the
    rendered reference, the landmarks move as the targets ask, within 2% IOD."""
    image, ref = astronaut
    renderer = WarpRenderer(output_size=512)
    prepared = renderer.prepare(image, ref)
    targets = [make(ref) for make in TARGETS.values()]
    frames = renderer.render(prepared, np.stack([ref, *targets]))
    base = detect_faces(frames[0])[0]
    ref_out = prepared.to_output_px(ref)
    for target, frame in zip(targets, frames[1:]):
        moved = detect_faces(frame)[0][:, :2] - base[:, :2]
        asked = prepared.to_output_px(target)[:, :2] - ref_out[:, :2]
        assert np.linalg.norm(moved - asked, axis=1).mean() / iod(ref_out) <= 0.02


@pytest.mark.parametrize("output_size", [512, 0])
def test_background_still_far_from_face(astronaut, output_size):
    image, ref = astronaut
    renderer = WarpRenderer(output_size=output_size)
    prepared = renderer.prepare(image, ref)
    moved = turn_head(open_jaw(ref, 12.0), 10.0)
    moved[:, :2] += (6.0, -4.0)                                      # and the head shifts
    frame = renderer.render(prepared, moved[None])[0]
    portrait = image if output_size == 0 else prepared.image
    out = prepared.to_output_px(ref)
    oval = out[topo.FACE_OVAL, :2]
    centre = oval.mean(axis=0)
    radius = np.linalg.norm(oval - centre, axis=1).max()
    h, w = frame.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    far = np.hypot(xx - centre[0], yy - centre[1]) > 2.0 * radius
    assert far.sum() > 0.05 * h * w
    np.testing.assert_array_equal(frame[far], portrait[far])
    near = np.hypot(xx - centre[0], yy - centre[1]) < radius
    assert np.abs(frame[near].astype(int) - portrait[near]).mean() > 5     # the face did move


def test_torso_follows_offset(astronaut):
    image, ref = astronaut
    renderer = WarpRenderer(output_size=512)
    prepared = renderer.prepare(image, ref)
    dx = 10.0                                                        # full-image pixels
    frame = renderer.render(prepared, ref[None], np.array([[dx, 0.0]]))[0]
    portrait = prepared.image
    s = int(round(dx * prepared.box.scale))
    rows = slice(480, 500)                                           # shoulders, bottom of the crop
    cols = slice(100, 412)
    shifted = np.roll(portrait, s, axis=1)
    err_follow = np.abs(frame[rows, cols].astype(int) - shifted[rows, cols]).mean()
    err_still = np.abs(frame[rows, cols].astype(int) - portrait[rows, cols]).mean()
    assert err_follow < 0.5 * err_still
    face = prepared.to_output_px(ref)[:468, :2]
    x0, y0 = face.min(axis=0).astype(int)
    x1, y1 = face.max(axis=0).astype(int)
    assert psnr(frame[y0:y1, x0:x1], portrait[y0:y1, x0:x1]) >= 40.0    # the face stays


def test_mouth_interior_identical_across_frames(astronaut):
    image, ref = astronaut
    renderer = WarpRenderer(output_size=0)
    prepared = renderer.prepare(image, ref)
    a = open_jaw(ref, 12.0)
    b = a.copy()
    b[:, :2] += (7.0, -4.0)                                          # same mouth, elsewhere
    frames = renderer.render(prepared, np.stack([a, b, a]))
    np.testing.assert_array_equal(frames[0], frames[2])
    inside = mouth_pixels(a, frames.shape[1:3])
    ys, xs = np.nonzero(inside)
    first, second = frames[0][ys, xs].astype(int), frames[1][ys - 4, xs + 7].astype(int)
    assert np.abs(first - second).max() <= 1
    # a dark cavity and teeth, the teeth coloured from the portrait (its own teeth here)
    lum = first.mean(axis=1)
    assert lum.min() < 60 and lum.max() > 150
    teeth = first[lum > np.percentile(lum, 90)]
    chroma = teeth.max(axis=1) - teeth.min(axis=1)
    assert np.median(chroma) < 60


def test_closed_eyes_are_covered_by_lid_skin(astronaut):
    """Where the iris was, a blink shows skin coloured like the upper lid below the brow."""
    image, ref = astronaut
    renderer = WarpRenderer(output_size=512)
    prepared = renderer.prepare(image, ref)
    frames = renderer.render(prepared, np.stack([ref, close_eyes(ref)])).astype(float)
    out = prepared.to_output_px(ref)
    h, w = frames.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    lid_skin_points = {topo.RIGHT_IRIS_CENTER: [113, 225, 224, 223, 222, 221, 189],
                       topo.LEFT_IRIS_CENTER: [413, 441, 442, 443, 444, 445, 342]}
    for centre, ring in ((topo.RIGHT_IRIS_CENTER, topo.RIGHT_IRIS), (topo.LEFT_IRIS_CENTER, topo.LEFT_IRIS)):
        radius = np.linalg.norm(out[ring, :2] - out[centre, :2], axis=1).mean()
        iris = np.hypot(xx - out[centre, 0], yy - out[centre, 1]) < 0.7 * radius
        skin = np.median([frames[0][int(y), int(x)] for x, y in out[lid_skin_points[centre], :2]], axis=0)
        before = np.linalg.norm(frames[0][iris].mean(axis=0) - skin)
        after = np.linalg.norm(frames[1][iris].mean(axis=0) - skin)
        assert after < 0.4 * before, (before, after)


def test_closed_mouth_portrait_gets_teeth_coloured_from_the_portrait(grace_hopper):
    image, ref = grace_hopper                                        # mouth closed, no teeth
    renderer = WarpRenderer(output_size=512)
    target = open_jaw(ref, 12.0)[None]
    prepared = renderer.prepare(image, ref)
    frame = renderer.render(prepared, target)[0]
    inside = mouth_pixels(prepared.to_output_px(target[0]), frame.shape[:2])
    px = frame[inside].astype(float)
    lum = px.mean(axis=1)
    assert lum.min() < 50 and lum.max() > 140                      # dark cavity, bright teeth
    # the same portrait with a blue cast gets bluer teeth: the colour comes from the picture
    bluish = np.clip(image * np.float32([0.8, 0.9, 1.15]), 0, 255).astype(np.uint8)
    teeth = prepared.mouth.teeth_rgb
    teeth_b = renderer.prepare(bluish, ref).mouth.teeth_rgb
    assert teeth_b[2] / teeth_b[0] > 1.15 * teeth[2] / teeth[0]


def test_full_image_paste_back_keeps_size(grace_hopper):
    image, ref = grace_hopper
    renderer = WarpRenderer(output_size=512)
    prepared = renderer.prepare(image, ref, output_size=0)          # per-call override
    moved = turn_head(open_jaw(ref), 8.0)
    frames = renderer.render(prepared, np.stack([ref, moved]), np.array([[0.0, 0.0], [4.0, 2.0]]))
    assert frames.shape == (2, *image.shape)
    assert psnr(frames[0], image) >= 40.0
    box = prepared.box
    outside = np.ones(image.shape[:2], bool)
    outside[int(box.y0):int(box.y0) + box.height, int(box.x0):int(box.x0) + box.width] = False
    assert outside.any()
    np.testing.assert_array_equal(frames[1][outside], image[outside])
    # the seam: next to the face region the picture continues without a step
    x0 = int(box.x0)
    if x0 > 0:
        step = np.abs(frames[1][:, x0].astype(int) - frames[1][:, x0 - 1]).mean()
        natural = np.abs(image[:, x0].astype(int) - image[:, x0 - 1]).mean()
        assert step <= natural + 2.0


def test_half_resolution_maps_render_like_full_resolution_maps(astronaut):
    image, ref = astronaut
    target = np.stack([close_eyes(turn_head(open_jaw(ref), 8.0))])
    frames = []
    for stride in (1, 2):
        renderer = WarpRenderer(output_size=512, map_stride=stride)
        frames.append(renderer.render(renderer.prepare(image, ref), target)[0])
    assert psnr(frames[0], frames[1]) >= 40.0


def test_save_load_config_roundtrip(tmp_path, astronaut):
    renderer = WarpRenderer(output_size=256, crop_scale=2.4, teeth_height=0.12, band_scales=(1.2, 1.6, 2.0))
    renderer.save_pretrained(tmp_path / "renderer")
    assert os.listdir(tmp_path / "renderer") == ["renderer_config.json"]
    loaded = WarpRenderer.from_pretrained(tmp_path, subfolder="renderer")
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(renderer.config)
    assert loaded.config.band_scales == [1.2, 1.6, 2.0] and loaded.config.output_size == 256
    image, ref = astronaut
    target = open_jaw(ref)[None]
    np.testing.assert_array_equal(renderer.render(renderer.prepare(image, ref), target),
                                  loaded.render(loaded.prepare(image, ref), target))


def test_bad_inputs_raise_errors_that_say_what_to_do(astronaut):
    image, ref = astronaut
    renderer = WarpRenderer(output_size=256)
    with pytest.raises(InvalidParameterError, match="478"):
        renderer.prepare(image, ref[:468])
    with pytest.raises(InvalidParameterError, match="uint8"):
        renderer.prepare(image.astype(np.float32), ref)
    prepared = renderer.prepare(image, ref)
    with pytest.raises(InvalidParameterError, match=r"\(T, 478, 3\)"):
        renderer.render(prepared, ref[None, :, :2])
    with pytest.raises(InvalidParameterError, match="output_size"):
        WarpRenderer(output_size=-1)


def test_rasteriser_writes_each_covered_pixel_its_triangles_affine_map():
    from moda_hub.render.raster import affine_maps
    # two triangles tiling the square [2, 10) x [2, 10); the second one drawn on top
    corners = np.array([[[2, 2], [10, 2], [2, 10]], [[10, 2], [10, 10], [2, 10]]], np.float32)
    coeffs = np.zeros((6, 2), np.float32)
    coeffs[:, 0] = (1, 0, 100, 0, 1, 200)       # triangle 0: shift by (100, 200)
    coeffs[:, 1] = (2, 0, 0, 0, 2, 0)           # triangle 1: scale by 2
    gy, gx = np.mgrid[0:12, 0:12].astype(np.float32)
    map_x, map_y = gx.copy(), gy.copy()
    affine_maps(corners, np.array([0, 1]), coeffs, map_x, map_y, tol=0.0)
    centre_x, centre_y = gx + 0.5, gy + 0.5
    inside = (centre_x > 2) & (centre_x < 10) & (centre_y > 2) & (centre_y < 10)
    upper_left = inside & (centre_x + centre_y < 12)
    lower_right = inside & (centre_x + centre_y > 12)
    assert np.array_equal(map_x[upper_left], gx[upper_left] + 100)
    assert np.array_equal(map_y[upper_left], gy[upper_left] + 200)
    assert np.array_equal(map_x[lower_right], 2 * gx[lower_right])
    on_diagonal = inside & (centre_x + centre_y == 12)             # shared edge: the later triangle
    assert np.array_equal(map_x[on_diagonal], 2 * gx[on_diagonal])
    assert np.array_equal(map_x[~inside], gx[~inside]) and np.array_equal(map_y[~inside], gy[~inside])
    # a reversed (mirrored) triangle is drawn the same way
    flipped = corners[:, ::-1].copy()
    map_x2, map_y2 = gx.copy(), gy.copy()
    affine_maps(flipped, np.array([0, 1]), coeffs, map_x2, map_y2, tol=0.0)
    assert np.array_equal(map_x2, map_x) and np.array_equal(map_y2, map_y)


def test_rasteriser_covers_exactly_the_samples_the_per_sample_edge_test_covers():
    """The kernel covers exactly the samples whose centre lies in the triangle's box and within
    tol of its three edges, for any triangles: slivers, either orientation, partly off the grid,
    on a stride-2 grid (the definition written out in numpy, one triangle at a time)."""
    from moda_hub.render.raster import affine_maps
    rng = np.random.default_rng(0)
    n = 400
    corners = rng.uniform(-6, 46, (n, 3, 2)).astype(np.float32)
    corners[::4, 2] = corners[::4, 0] + rng.uniform(-0.3, 0.3, (len(corners[::4]), 2))   # slivers
    corners[1::7, 1, 1] = corners[1::7, 0, 1]                                              # flat edges
    coeffs = np.zeros((6, n), np.float32)
    coeffs[2] = np.arange(n)                           # map_x = the id of the triangle drawn last
    for step, x0, y0, tol in ((1.0, 0.0, 0.0, 0.5), (2.0, -1.0, -1.0, 0.5), (1.0, 3.0, 2.0, 0.0)):
        rows = cols = int(44 / step)
        for k in range(n):
            map_x = np.full((rows, cols), -1, np.float32)
            affine_maps(corners, np.array([k]), coeffs, map_x, np.zeros_like(map_x), x0, y0, step, tol)
            (ax, ay), (bx, by), (cx, cy) = corners[k].astype(np.float64)
            area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            r, c = np.mgrid[0:rows, 0:cols]
            px, py = x0 + c * step + 0.5, y0 + r * step + 0.5
            sgn = 1.0 if area > 0 else -1.0
            lo, hi = corners[k].astype(np.float64).min(axis=0) - tol, corners[k].astype(np.float64).max(axis=0) + tol
            inside = (area != 0) & (px >= lo[0]) & (px <= hi[0]) & (py >= lo[1]) & (py <= hi[1])   # and its box
            for (ux, uy), (vx, vy) in (((ax, ay), (bx, by)), ((bx, by), (cx, cy)), ((cx, cy), (ax, ay))):
                edge = sgn * ((vx - ux) * (py - uy) - (vy - uy) * (px - ux))
                inside = inside & (edge >= -np.hypot(vx - ux, vy - uy) * tol)
            assert np.array_equal(map_x == k, inside), (step, tol, k)


def test_threaded_rendering_gives_the_frames_of_serial_rendering(astronaut, monkeypatch):
    image, ref = astronaut
    targets = np.stack([ref, open_jaw(ref), turn_head(ref, 6.0), close_eyes(ref), open_jaw(ref, 4.0)])
    renderer = WarpRenderer(output_size=256)
    prepared = renderer.prepare(image, ref)
    out = {}
    import cv2
    before = cv2.getNumThreads()
    for threads in ("1", "2"):
        monkeypatch.setenv("MODA_RENDER_THREADS", threads)
        out[threads] = renderer.render(prepared, targets)
    assert np.array_equal(out["1"], out["2"])
    assert cv2.getNumThreads() == before       # OpenCV's threads are off only while the pool renders
    monkeypatch.setenv("MODA_RENDER_THREADS", "two")
    with pytest.raises(InvalidParameterError, match="MODA_RENDER_THREADS"):
        renderer.render(prepared, targets)


_KERNEL_CACHE_SCRIPT = r"""
import json, sys
import numpy as np
from moda_hub.render import WarpRenderer, jit
ref = np.load(sys.argv[1])
renderer = WarpRenderer(output_size=128)
prepared = renderer.prepare(np.full((256, 256, 3), 128, np.uint8), ref)
moved = ref.copy()
moved[14, 1] += 6                                     # open the lips: the inner-mouth kernel runs too
renderer.render(prepared, np.stack([ref, moved]))
stats = {}
for kernel in jit._all:
    if kernel._fn is not None and kernel._fn.signatures:
        s = kernel._fn.stats
        stats[kernel.__doc__ or repr(kernel._builder)] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
print(json.dumps(stats))
"""


def test_compiled_kernels_load_from_numbas_disk_cache_in_a_new_process(astronaut, tmp_path):
    """A kernel that numba cannot key in its cache compiles again in every process: seconds of
    CPU at the first frame and tens of MB of peak memory. Two fresh processes render: the second
    must find every kernel it used on disk."""
    import json
    import subprocess
    import sys
    image, ref = astronaut
    scale = 256 / max(image.shape[:2])
    mesh = tmp_path / "mesh.npy"
    np.save(mesh, (ref * scale).astype(np.float32))
    script = tmp_path / "render_once.py"
    script.write_text(_KERNEL_CACHE_SCRIPT)
    runs = [json.loads(subprocess.run([sys.executable, str(script), str(mesh)], capture_output=True, text=True,
                                      check=True, timeout=300).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert len(runs[1]) >= 3                       # rasteriser, affines, eyelids (and the mouth when open)
    recompiled = {name: hm for name, hm in runs[1].items() if hm[1] > 0}
    assert not recompiled, f"compiled again instead of loaded from the cache: {recompiled}"
