"""Framing: the output never shows replicated edge pixels -- crops stay inside the photo (shifted,
then shrunk), and what must lie outside it is the documented background fill (blurred mirror).
Photos cropped tight to the face and with the face touching each border go through the pipeline
and the Space's request code at 256, 512 and the full image. Also the frame checks themselves on
small generated inputs."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from moda_hub.speech.audio import load_audio
from moda_hub.face.landmarks import detect_faces, face_box
from moda_hub.render.crop import CropBox, crop_texture, face_crop_box
from moda_hub.render.frame_checks import (MIN_STREAK_RUN, edge_streaks, face_region, flicker_outside_face,
                                          mouth_depth, seam_jump)

from conftest import ROOT

SIZES = (256, 512, 0)


# ----------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def border_photos():
    """Crops of the astronaut: tight around the face, and the face touching each border."""
    image = skimage.data.astronaut()
    b = face_box(detect_faces(image)[0])
    x0, y0, x1, y1 = int(b.x0), int(b.y0), int(np.ceil(b.x1)), int(np.ceil(b.y1))
    return {"tight": image[y0 - 8:y1 + 8, x0 - 8:x1 + 8],
            "left": image[y0 - 40:y1 + 80, x0:x1 + 100], "right": image[y0 - 40:y1 + 80, x0 - 100:x1],
            "top": image[y0:y1 + 100, x0 - 60:x1 + 60], "bottom": image[y0 - 60:y1, x0 - 60:x1 + 60]}


@pytest.fixture(scope="module")
def speech():
    """0.6 s of the bundled speech, 16 kHz."""
    return load_audio(str(ROOT / "examples" / "speech.wav"), 16000)[4000:13600]


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like (h, w, 3) uint8 image: smoothed noise with texture in every row and column."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)


def resampled(photo: np.ndarray, box: CropBox) -> np.ndarray:
    """The photo seen through a crop box, sampled independently of the renderer (bilinear)."""
    m = np.float32([[box.scale, 0, box.scale * (0.5 - box.x0) - 0.5], [0, box.scale, box.scale * (0.5 - box.y0) - 0.5]])
    return cv2.warpAffine(photo, m, (box.width, box.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def check_framing(name: str, size: int, photo: np.ndarray, frames: np.ndarray, renderer, landmarks: np.ndarray,
                  exact_outside: bool) -> None:
    """No streaks outside the face; away from the face the frames are the photo (still head)."""
    if size == 0:                 # H.264 frames have even sides: the MP4 writer adds a row / column
        frames = frames[:, :photo.shape[0], :photo.shape[1]]
    ref = detect_faces(photo)[0]
    prepared = renderer.prepare(photo, ref, output_size=size)
    box = prepared.box
    hw = frames.shape[1:3]
    lm = prepared.to_output_px(landmarks)
    streaks = edge_streaks(frames, ~face_region(lm, hw))
    assert not streaks.found, f"{name} at {size}: {streaks}"
    H, W = photo.shape[:2]
    side = box.width / box.scale
    assert box.x0 >= -1e-6 and box.y0 >= -1e-6, (name, size, box)
    if size:
        assert box.x0 + side <= W + 1e-3 and box.y0 + side <= H + 1e-3, (name, size, box)
    far = ~face_region(lm, hw, grow=2.2)
    if not far.any():             # a tight photo is all face: the box check above is what holds
        return
    if size == 0:
        expect = photo
    else:
        expect = resampled(photo, box)
    diff = np.abs(frames[:, far].astype(np.int16) - expect[far].astype(np.int16))
    if exact_outside and size == 0:
        assert diff.max() == 0, f"{name} full image: pixels away from the face differ from the photo"
        seam = seam_jump(frames[::4], photo, (box.x0, box.y0, box.x0 + box.width, box.y0 + box.height))
        assert seam < 3.0, f"{name} full image: paste-back seam {seam:.1f}"
    else:            # bicubic resampling vs this test's bilinear; H.264
        assert diff.mean() < 4.0, f"{name} at {size}: {diff.mean():.2f} from the photo away from the face"


# ----------------------------------------------------------------------------- framing rule
def test_crop_box_stays_inside_the_photo_and_holds_the_visible_face():
    rng = np.random.default_rng(0)
    template = detect_faces(skimage.data.astronaut())[0]
    lo, hi = template[:468, :2].min(0), template[:468, :2].max(0)
    for _ in range(200):
        H, W = rng.integers(120, 900, 2)
        scale = rng.uniform(0.4, 1.6)
        lm = (template[:, :2] - lo) * scale
        fw, fh = (hi - lo) * scale
        lm = lm + [rng.uniform(-0.2 * fw, W - 0.8 * fw), rng.uniform(-0.2 * fh, H - 0.8 * fh)]
        for size in (256, 512):
            box = face_crop_box(lm, (H, W), size)
            side = size / box.scale
            face = np.clip(lm[:468].max(0), 0, [W, H]) - np.clip(lm[:468].min(0), 0, [W, H])
            if side <= min(H, W) + 1e-6:
                assert -1e-6 <= box.x0 and box.x0 + side <= W + 1e-6 and -1e-6 <= box.y0 and box.y0 + side <= H + 1e-6
            else:
                assert side <= face.max() + 1e-6         # only a face longer than the photo's short side reaches out
            vis_lo, vis_hi = np.clip(lm[:468].min(0), 0, [W, H]), np.clip(lm[:468].max(0), 0, [W, H])
            assert box.x0 <= vis_lo[0] + 1e-4 and box.x0 + side >= vis_hi[0] - 1e-4
            assert box.y0 <= vis_lo[1] + 1e-4 and box.y0 + side >= vis_hi[1] - 1e-4
            wanted = 2.2 * (lm[:468].max(0) - lm[:468].min(0)).max()
            assert side == pytest.approx(max(min(wanted, H, W), face.max()), rel=1e-6)


def test_background_fill_outside_the_photo_is_a_blurred_mirror_without_streaks():
    photo = textured(100, 160)
    box = CropBox(x0=-40.0, y0=-30.0, width=200, height=200, scale=1.0, image_hw=(100, 160))   # reaches out on 3 sides
    tex = crop_texture(photo, box, pad=0)
    assert np.array_equal(tex[30:130, 40:200], photo[:, :160])            # inside: the photo itself
    assert not edge_streaks(tex).found
    # far outside: the mirror, blurred (much smoother than the photo, same colours on average)
    out = tex[170:, :].astype(np.float32)
    mirror = cv2.copyMakeBorder(photo, 30, 70, 40, 0, cv2.BORDER_REFLECT)[170:].astype(np.float32)
    assert np.abs(np.diff(out, axis=1)).mean() < 0.25 * np.abs(np.diff(mirror, axis=1)).mean()
    assert abs(out.mean() - mirror.mean()) < 6
    # the replicated border that the fill replaces would have been found
    assert edge_streaks(cv2.copyMakeBorder(photo, 30, 70, 40, 0, cv2.BORDER_REPLICATE)).found


@pytest.mark.parametrize("size", SIZES)
def test_tight_and_border_touching_photos_render_without_streaks_through_the_pipeline(
        shipped_pipe, border_photos, speech, size):
    for name, photo in border_photos.items():
        out = shipped_pipe(image=photo, audio=(16000, speech), fps=25, output_size=size, output_type="np",
                           still=True, generator=torch.Generator().manual_seed(0))
        check_framing(name, size, photo, out.frames, shipped_pipe.renderer, out.landmarks, exact_outside=True)


@pytest.mark.parametrize("size", SIZES)
def test_tight_and_border_touching_photos_render_without_streaks_through_the_space(
        shipped_pipe, border_photos, speech, size, tmp_path):
    from moda_hub.space.animate import AnimateOptions, animate
    from moda_hub.video import read_video_frames

    for name, photo in border_photos.items():
        folder = tmp_path / f"{name}_{size}"
        folder.mkdir()
        result = animate(shipped_pipe, photo, speech, AnimateOptions(fps=25, output_size=size, still=True),
                         str(folder), mesh_preview=False, save_npz=False)[0]
        frames = np.stack(list(read_video_frames(result.video_path)))
        check_framing(name, size, photo, frames, shipped_pipe.renderer, result.landmarks, exact_outside=False)


# ----------------------------------------------------------------------------- the checks themselves
def test_edge_streaks_finds_replicated_rows_and_columns_only():
    photo = textured(120, 150)
    assert not edge_streaks(photo).found
    rows = cv2.copyMakeBorder(photo[:100], 0, 20, 0, 0, cv2.BORDER_REPLICATE)
    s = edge_streaks(rows)
    assert s.found and s.rows == 21 and s.row_at == 99 and s.cols == 0
    cols = cv2.copyMakeBorder(photo[:, 10:], 0, 0, 10, 0, cv2.BORDER_REPLICATE)
    s = edge_streaks(cols)
    assert s.found and s.cols == 11 and s.col_at == 0
    flat = np.full((120, 150, 3), 200, np.uint8)                       # a plain wall is not a streak
    assert not edge_streaks(flat).found
    mask = np.ones((120, 150), bool)
    mask[100:] = False                                                 # streaks hidden by the mask
    assert not edge_streaks(rows, mask).found
    assert MIN_STREAK_RUN <= 8


def test_seam_jump_sees_a_pasted_region_that_does_not_match():
    photo = textured(120, 160, seed=1)
    box = (40, 30, 120, 120)
    assert seam_jump(photo[None], photo, box) == pytest.approx(0.0)
    shifted = photo.copy()
    shifted[30:120, 40:120] = np.clip(photo[30:120, 40:120].astype(np.int16) + 12, 0, 255).astype(np.uint8)
    assert seam_jump(shifted[None], photo, box) > 8
    feathered = photo.astype(np.float32)
    def ramp(n):
        i = np.arange(n) + 0.5
        return np.clip(np.minimum(i, n - i) / 12, 0, 1)
    feathered[30:120, 40:120] += 12 * (ramp(90)[:, None] * ramp(80)[None, :])[..., None]   # feathered in
    assert seam_jump(np.clip(feathered, 0, 255).astype(np.uint8)[None], photo, box) < 3


def test_flicker_and_mouth_depth():
    photo = textured(60, 80)
    still = np.stack([photo] * 5)
    mask = np.ones((60, 80), bool)
    assert flicker_outside_face(still, mask) == 0.0
    noisy = still.astype(np.int16)
    noisy[1::2] += 4
    assert flicker_outside_face(np.clip(noisy, 0, 255).astype(np.uint8), mask) == pytest.approx(4.0, abs=0.1)
    lm = np.zeros((20, 478, 2), np.float32)
    lm[:, 33] = (0, 0)
    lm[:, 263] = (100, 0)
    lm[:, 14, 1] = np.linspace(0, 30, 20)                              # the lips part up to 0.3 IOD
    assert mouth_depth(lm) == pytest.approx(0.9 * 0.3, abs=0.01)


def test_default_output_is_the_full_image_up_to_1_megapixel_else_the_512_crop(shipped_pipe, border_photos, speech):
    small = border_photos["left"]
    out = shipped_pipe(image=small, audio=(16000, speech), fps=25, output_type="np", still=True,
                       generator=torch.Generator().manual_seed(0))
    assert out.frames.shape[1:] == small.shape
    large = cv2.resize(skimage.data.astronaut(), (1100, 1000), interpolation=cv2.INTER_CUBIC)   # 1.1 MP
    out = shipped_pipe(image=large, audio=(16000, speech[:4800]), fps=25, output_type="np",
                       generator=torch.Generator().manual_seed(0))
    assert out.frames.shape[1:] == (512, 512, 3)
