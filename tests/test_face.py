"""Face front-end: decoding portraits, MediaPipe landmarks, template and head pose.

Real MediaPipe on small real faces (skimage's astronaut, matplotlib's Grace Hopper).
"""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from moda_hub.errors import FaceIndexError, ImageDecodeError, NoFaceFoundError
from moda_hub.face import (FaceTracker, apply_head_offset, canonical_template, detect_faces,
                           estimate_pose, euler_to_matrix, face_landmarks, from_canonical,
                           head_offset, load_image, matrix_to_euler, select_face, to_canonical)
from moda_hub.face.template import MIDLINE


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    import skimage.data
    return skimage.data.astronaut()                                     # (512, 512, 3)


@pytest.fixture(scope="module")
def grace() -> np.ndarray:
    import matplotlib.cbook
    return load_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut) -> np.ndarray:
    return face_landmarks(astronaut)


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    return np.concatenate([pad(left), pad(right)], axis=1)


# ----------------------------------------------------------------------------- landmarks

def test_astronaut_gives_478_landmarks_in_pixels(astronaut_landmarks):
    lm = astronaut_landmarks
    assert lm.shape == (478, 3) and lm.dtype == np.float32
    # Eileen Collins' face sits at about x 180-270, y 70-180 of the 512 px image.
    assert 150 < lm[:, 0].min() and lm[:, 0].max() < 300
    assert 50 < lm[:, 1].min() and lm[:, 1].max() < 200
    assert lm[33, 0] < lm[263, 0]                    # subject's right eye is on image left
    assert lm[33, 1] < lm[1, 1] < lm[152, 1]         # eyes above nose tip above chin
    # z is in pixels too: depth spread comparable to the face width, nose tip nearest.
    width = lm[:, 0].max() - lm[:, 0].min()
    assert 0.3 * width < np.ptp(lm[:, 2]) < 1.5 * width
    assert lm[1, 2] < lm[33, 2]


def test_large_image_landmarks_scale_back_to_full_resolution(astronaut, astronaut_landmarks):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.BICUBIC))
    lm = face_landmarks(big)
    np.testing.assert_allclose(lm[:, :2] / 4.0, astronaut_landmarks[:, :2], atol=3.0)


def test_faces_are_ordered_left_to_right_and_largest_is_default(astronaut, grace):
    faces = detect_faces(_side_by_side(astronaut, grace))
    assert len(faces) == 2
    assert faces[0][:, 0].max() < 512 <= faces[1][:, 0].min()
    assert select_face(faces) is faces[1]            # Grace Hopper's face is the larger one
    assert select_face(faces, face_index=0) is faces[0]


def test_face_index_out_of_range_lists_faces(astronaut, grace):
    faces = detect_faces(_side_by_side(astronaut, grace))
    with pytest.raises(FaceIndexError) as err:
        select_face(faces, face_index=2, source="two.png")
    msg = str(err.value)
    assert "face_index=2" in msg and "2 faces" in msg and "'two.png'" in msg
    assert "#0 box" in msg and "#1 box" in msg and " px" in msg
    assert "0 to 1" in msg


def test_no_face_error_names_file(tmp_path):
    path = tmp_path / "photo.jpg"
    sky = np.linspace(60, 200, 96 * 128).reshape(96, 128).astype(np.uint8)
    Image.fromarray(sky).convert("RGB").save(path)
    with pytest.raises(NoFaceFoundError, match=r"no face found in '.*photo\.jpg' — use a "
                                               r"frontal portrait"):
        face_landmarks(str(path))


def test_detect_faces_is_thread_safe(astronaut, astronaut_landmarks):
    results = [None] * 4

    def work(i):
        results[i] = face_landmarks(astronaut)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_allclose(r, astronaut_landmarks, atol=1e-3)


def test_face_tracker_follows_a_moving_face(astronaut):
    frames = [np.roll(astronaut, shift=4 * i, axis=1) for i in range(3)]
    with FaceTracker() as tracker:
        tracks = [tracker.process(f) for f in frames]
        assert tracker.process(np.zeros((64, 64, 3), np.uint8)) is None
    assert all(t is not None and t.shape == (478, 3) for t in tracks)
    shift = tracks[2][:, 0].mean() - tracks[0][:, 0].mean()
    assert 4 < shift < 12                            # moved 8 px to the right


# ----------------------------------------------------------------------------- decoding

def test_grayscale_and_rgba_accepted(astronaut):
    gray = Image.fromarray(astronaut).convert("L")
    rgb = load_image(gray)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert detect_faces(rgb), "MediaPipe finds the face in the grayscale portrait"

    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0                            # transparent corner -> white
    out = load_image(Image.fromarray(rgba))
    assert (out[:10, :10] == 255).all()
    np.testing.assert_array_equal(out[20:], astronaut[20:])
    np.testing.assert_array_equal(load_image(rgba), out)


def test_sixteen_bit_palette_and_cmyk_decoded(tmp_path, astronaut):
    gray16 = (np.asarray(Image.fromarray(astronaut).convert("L"), np.uint16) * 257)
    Image.fromarray(gray16).save(tmp_path / "deep.png")           # mode I;16
    out = load_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(out[..., 0], gray16 // 257)

    Image.fromarray(astronaut).quantize(64).save(tmp_path / "pal.png")   # mode P
    assert np.abs(load_image(tmp_path / "pal.png").astype(int) - astronaut).mean() < 12

    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(load_image(tmp_path / "cmyk.jpg").astype(int) - astronaut).mean() < 8


def test_exif_rotation_applied(tmp_path, astronaut):
    # Stored sideways (rotated 90 deg counter-clockwise) with EXIF Orientation 6, which
    # tells viewers to rotate 90 deg clockwise: the decoded image must be upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(astronaut)).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.shape == astronaut.shape
    assert np.abs(upright.astype(int) - astronaut).mean() < 5


@pytest.mark.parametrize("name, content, what", [
    ("empty.jpg", b"", "empty"),
    ("notes.jpg", b"these are not the pixels you are looking for" * 10, "not an image"),
    ("cut.jpg", "truncated", "truncated"),
    ("missing.jpg", None, "does not exist"),
])
def test_unreadable_files_raise_image_decode_error_naming_the_file(tmp_path, astronaut, name,
                                                                    content, what):
    path = tmp_path / name
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(astronaut).save(buf, "JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as err:
        load_image(str(path))
    assert name in str(err.value) and what in str(err.value)
    assert " — " in str(err.value)                   # ... and says what to do


# ----------------------------------------------------------------------------- template, pose

def test_template_is_in_canonical_units():
    t = canonical_template()
    assert t.shape == (478, 3) and t.dtype == np.float32
    np.testing.assert_allclose(t.mean(0), 0.0, atol=1e-5)
    assert np.linalg.norm(t[33] - t[263]) == pytest.approx(1.0, abs=1e-5)
    assert t[33, 0] < 0 < t[263, 0] and t[10, 1] < 0 < t[152, 1]   # x right, y down
    assert t[1, 2] == t[:, 2].min() or t[1, 2] < t[33, 2]            # nose nearest
    assert np.abs(t[MIDLINE, 0]).max() < 0.02                        # frontal: no yaw/roll


def test_pose_of_template_is_identity():
    t = canonical_template()
    pose = estimate_pose(120.0 * t + np.array([300.0, 200.0, 5.0]))
    np.testing.assert_allclose(pose, [0, 0, 0, 300, 200, 5, 120], atol=1e-3)


@pytest.mark.parametrize("angles", [(10, 0, 0), (0, -25, 0), (0, 0, 15), (-12, 30, -8)])
def test_head_pose_recovers_synthetic_rotation(angles):
    rng = np.random.default_rng(0)
    t = canonical_template().astype(np.float64)
    # Pose the template in 3D, keep x, y, z as MediaPipe would report them (orthographic
    # projection with z in pixels), add 0.5 px landmark noise and move the lips (the pose
    # ignores them).
    face = 150.0 * t @ euler_to_matrix(np.array(angles, float)).T + [400.0, 300.0, 0.0]
    face += rng.normal(0.0, 0.5, face.shape)
    face[[13, 14, 17, 0]] += [0.0, 20.0, 0.0]
    pose = estimate_pose(face)
    np.testing.assert_allclose(pose[:3], angles, atol=1.0)
    np.testing.assert_allclose(pose[3:6], [400, 300, 0], atol=2.0)
    assert pose[6] == pytest.approx(150.0, rel=0.01)


def test_real_portrait_pose_is_near_frontal(astronaut_landmarks):
    pose = estimate_pose(astronaut_landmarks)
    assert np.abs(pose[:3]).max() < 30
    eye_px = np.linalg.norm(astronaut_landmarks[33, :2] - astronaut_landmarks[263, :2])
    assert pose[6] == pytest.approx(eye_px, rel=0.15)                # px per eye distance


def test_euler_matrix_round_trip_and_sign_convention():
    rng = np.random.default_rng(1)
    angles = rng.uniform([-180, -89, -180], [180, 89, 180], size=(200, 3))
    rot = euler_to_matrix(angles)
    identity = np.broadcast_to(np.eye(3), rot.shape)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), identity, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(rot), angles, atol=1e-9)
    # R = Rz(roll) Ry(yaw) Rx(pitch), i.e. scipy's extrinsic "xyz".
    from scipy.spatial.transform import Rotation
    np.testing.assert_allclose(rot, Rotation.from_euler("xyz", angles, degrees=True).as_matrix(),
                               atol=1e-12)
    nose = np.array([0.0, 0.0, -1.0])                # in front of the head, towards the camera
    assert (euler_to_matrix([20.0, 0, 0]) @ nose)[1] > 0    # pitch > 0: nose moves down
    assert (euler_to_matrix([0, 20.0, 0]) @ nose)[0] < 0    # yaw > 0: nose turns to image left
    right = np.array([1.0, 0.0, 0.0])
    assert (euler_to_matrix([0, 0, 20.0]) @ right)[1] > 0   # roll > 0: clockwise on screen


def test_canonical_round_trip():
    rng = np.random.default_rng(2)
    T = 5
    canon = canonical_template()[None] + rng.normal(0, 0.01, (T, 478, 3)).astype(np.float32)
    poses = np.concatenate([rng.uniform(-30, 30, (T, 3)), rng.uniform(100, 500, (T, 3)),
                            rng.uniform(50, 200, (T, 1))], axis=1).astype(np.float32)
    px = from_canonical(canon, poses)
    assert px.shape == (T, 478, 3) and px.dtype == np.float32
    np.testing.assert_allclose(from_canonical(to_canonical(px, poses), poses), px, atol=1e-3)
    np.testing.assert_allclose(to_canonical(px, poses), canon, atol=1e-5)
    # One (7,) pose broadcasts over frames and matches the per-frame result.
    np.testing.assert_allclose(from_canonical(canon, poses[0]),
                               from_canonical(canon, np.repeat(poses[:1], T, 0)), atol=1e-3)


def test_head_offset_round_trip():
    ref = np.array([3.0, -5.0, 1.0, 250.0, 240.0, 2.0, 110.0], np.float32)
    head = np.array([[0, 0, 0, 0, 0, 0, 0], [5, -3, 2, 0.1, -0.05, 0.0, np.log(1.1)]],
                    np.float32)
    poses = apply_head_offset(ref, head)
    np.testing.assert_allclose(poses[0], ref, atol=1e-4)
    np.testing.assert_allclose(poses[1], [8, -8, 3, 261, 234.5, 2, 121], atol=1e-3)
    np.testing.assert_allclose(head_offset(ref, poses), head, atol=1e-5)
