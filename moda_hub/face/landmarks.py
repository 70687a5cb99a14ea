"""MediaPipe FaceMesh landmarks: 478 points per face (468 mesh + 10 iris, refine_landmarks).

This is the only module of moda_hub that imports MediaPipe (lazily, on first use).

Output frame of every function here, ``landmarks_px`` ``(478, 3)`` float32:
x, y in pixels of the full-resolution input image (x right, y down, origin at the
top-left corner of the top-left pixel); z = MediaPipe's z times the image width, so it is
in pixels too (smaller = nearer the camera, about 0 at the face centre).

Finding faces in a still image (:func:`detect_faces`) runs two passes:

1. FaceMesh (``static_image_mode=True``, up to 10 faces) on the image, downscaled so its
   longest side is at most :data:`DETECT_MAX_SIDE` px; landmarks are scaled back.
2. MediaPipe's full-range face detector on the same copy. Its short-range sibling, which
   FaceMesh uses inside, misses faces that are small in the frame (a group photo, two
   portraits side by side). Every detected face not already meshed is cropped from the
   *full-resolution* image and meshed alone.
3. Only if no face was found yet: the detector on overlapping tiles of the full image,
   finer and finer (a small face in a 10000 px photo), each hit meshed as in pass 2.

The MediaPipe graphs are created once per process and shared; a lock makes them safe to
call from several threads (calls are serialised).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from moda_hub.errors import FaceIndexError, NoFaceFoundError
from moda_hub.face.image import ImageLike, image_name, load_image
from moda_hub.face.topology import NUM_LANDMARKS

DETECT_MAX_SIDE = 1280      # px; longer images are detected on a downscaled copy
MAX_FACES = 10
CROP_CONTEXT = 2.2          # crop side / detector box side for the second pass
CROP_SIDE = 384             # px; the crop is resized to this before meshing
MIN_DETECTION_CONFIDENCE = 0.5
TILE_SIDE = 384             # px; tiles of the no-face fallback are seen at this size
MIN_TILE = 448              # px (full-res); the fallback's finest tiles

_LOCK = threading.RLock()
_GRAPHS: dict[str, object] = {}


def detect_faces(image_rgb: ImageLike, max_faces: int = MAX_FACES) -> list[np.ndarray]:
    """All faces in a still image, ordered left to right.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB array (as :func:`~moda_hub.face.image.load_image`
            returns), or anything ``load_image`` accepts.
        max_faces: at most this many faces are returned.

    Returns:
        list of ``(478, 3)`` float32 ``landmarks_px`` (full-resolution pixels, see module
        docstring), sorted by the x of the face centre; empty when there is no face.

    Example:
        >>> import skimage.data
        >>> faces = detect_faces(skimage.data.astronaut())
        >>> len(faces), faces[0].shape
        (1, (478, 3))
    """
    image = _as_rgb(image_rgb)
    h, w = image.shape[:2]
    work = _downscale(image, DETECT_MAX_SIDE)

    # Pass 1: FaceMesh on the whole (downscaled) image. Normalised coords -> full-res px.
    faces = [_to_px(lm, x0=0.0, y0=0.0, width=w, height=h)
             for lm in _run_mesh(work, max_faces)]

    # Pass 2: faces the full-range detector sees that pass 1 missed, meshed on a crop.
    _add_crop_faces(faces, image, _run_detector(work, sx=w / work.shape[1],
                                                sy=h / work.shape[0]), max_faces)

    # Pass 3, only when nothing was found: the detector on overlapping tiles, finer and
    # finer, for a face that is small in a large image.
    if not faces:
        for boxes in _tiled_detections(image):
            _add_crop_faces(faces, image, boxes, max_faces)
            if faces:
                break

    return sorted(faces, key=lambda f: float(_centre(_box_of(f))[0]))


def select_face(faces: list[np.ndarray], face_index: int | None = None,
                source: str | None = None) -> np.ndarray:
    """Pick one face from :func:`detect_faces`' list.

    Args:
        faces: list of ``(478, 3)`` landmarks_px, ordered left to right.
        face_index: 0-based index into ``faces`` (left to right); None = the largest face
            (area of its landmark bounding box).
        source: file name for messages (e.g. ``"photo.jpg"``); None = "the image".

    Returns:
        ``(478, 3)`` float32 landmarks_px of the chosen face.

    Raises:
        NoFaceFoundError: ``faces`` is empty.
        FaceIndexError: ``face_index`` is not in ``[0, len(faces))``; the message lists
            every face found with its box and size.
    """
    where = f"'{source}'" if source else "the image"
    if not faces:
        raise NoFaceFoundError(f"no face found in {where} — use a frontal portrait where the "
                               "face covers at least 10% of the image")
    if face_index is None:
        return max(faces, key=lambda f: _area(_box_of(f)))
    if isinstance(face_index, (bool, np.bool_)) or not isinstance(face_index, (int, np.integer)) \
            or not 0 <= face_index < len(faces):
        listing = "; ".join(_describe(i, f) for i, f in enumerate(faces))
        n = len(faces)
        raise FaceIndexError(
            f"face_index={face_index!r} but {n} face{'s' if n != 1 else ''} found in {where}: "
            f"{listing} — pass face_index from 0 to {n - 1} (faces are numbered left to "
            "right) or None for the largest")
    return faces[int(face_index)]


def face_landmarks(image: ImageLike, face_index: int | None = None) -> np.ndarray:
    """Load ``image``, find its faces and return one: ``(478, 3)`` float32 landmarks_px.

    Errors name the file when ``image`` is a path (see :func:`select_face`).

    Example:
        >>> import skimage.data
        >>> face_landmarks(skimage.data.astronaut()).shape
        (478, 3)
    """
    return select_face(detect_faces(load_image(image)), face_index, source=image_name(image))


@dataclass(frozen=True)
class FaceBox:
    """Axis-aligned box in image pixels: ``x0, y0`` top-left, ``x1, y1`` bottom-right."""

    x0: float
    y0: float
    x1: float
    y1: float


def face_box(landmarks_px: np.ndarray) -> FaceBox:
    """Bounding box of the x, y of one face's ``(478, 3)`` landmarks, in pixels."""
    return _box_of(landmarks_px)


class FaceTracker:
    """Landmarks of one face through a video (MediaPipe in tracking mode).

    Unlike :func:`detect_faces`, the tracker keeps state between frames (it re-detects
    only when tracking is lost), so feed frames in order, one tracker per video.
    Frames longer than :data:`DETECT_MAX_SIDE` are processed on a downscaled copy.

    Example:
        >>> with FaceTracker() as tracker:                       # doctest: +SKIP
        ...     for frame in frames:                              # (H, W, 3) uint8 RGB
        ...         lm = tracker.process(frame)                   # (478, 3) px or None
    """

    def __init__(self, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence)
        self._lock = threading.Lock()

    def process(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """``frame_rgb`` ``(H, W, 3)`` uint8 RGB -> ``(478, 3)`` float32 landmarks_px,
        or None when no face is found in this frame."""
        frame = _as_rgb(frame_rgb)
        h, w = frame.shape[:2]
        work = _downscale(frame, DETECT_MAX_SIDE)
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("FaceTracker is closed — create a new one")
            result = self._mesh.process(work)
        if not result.multi_face_landmarks:
            return None
        return _to_px(_landmarks_array(result.multi_face_landmarks[0]), 0.0, 0.0, w, h)

    def close(self) -> None:
        """Free the MediaPipe graph; the tracker cannot be used afterwards."""
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- MediaPipe

def _graph(kind: str):
    """The shared MediaPipe graph ``kind`` ("mesh" or "detector"); call under ``_LOCK``."""
    if kind not in _GRAPHS:
        import mediapipe as mp

        if kind == "mesh":
            _GRAPHS[kind] = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=True,
                min_detection_confidence=MIN_DETECTION_CONFIDENCE)
        else:  # full-range model: faces up to ~5 m, i.e. small in the frame
            _GRAPHS[kind] = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=MIN_DETECTION_CONFIDENCE)
    return _GRAPHS[kind]


def _run_mesh(image: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """FaceMesh on ``image`` -> list of ``(478, 3)`` normalised MediaPipe landmarks."""
    with _LOCK:
        result = _graph("mesh").process(image)
    return [_landmarks_array(f) for f in (result.multi_face_landmarks or [])][:max_faces]


def _run_detector(image: np.ndarray, sx: float, sy: float) -> list[FaceBox]:
    """Full-range face boxes in ``image``, scaled by ``sx, sy`` to full-res pixels,
    most confident first."""
    with _LOCK:
        result = _graph("detector").process(image)
    h, w = image.shape[:2]
    boxes = []
    for det in sorted(result.detections or [], key=lambda d: -d.score[0]):
        b = det.location_data.relative_bounding_box
        boxes.append(FaceBox(b.xmin * w * sx, b.ymin * h * sy,
                             (b.xmin + b.width) * w * sx, (b.ymin + b.height) * h * sy))
    return boxes


def _add_crop_faces(faces: list[np.ndarray], image: np.ndarray, boxes: list[FaceBox],
                    max_faces: int) -> None:
    """Mesh each box (full-res px) not already covered by a face in ``faces``; append."""
    for box in boxes:
        if len(faces) >= max_faces:
            return
        if any(_contains(_box_of(f), _centre(box)) for f in faces):
            continue
        face = _mesh_on_crop(image, box)
        if face is not None and not any(_contains(_box_of(f), _centre(_box_of(face)))
                                        for f in faces):
            faces.append(face)


def _tiled_detections(image: np.ndarray):
    """Yield, level by level, detector boxes (full-res px) found on overlapping tiles.

    Level k cuts the image into tiles of side ``longest / 2**k`` (half-tile overlap), each
    seen by the detector at :data:`TILE_SIDE` px, so faces down to about 7% of a tile
    are found. Levels stop at tiles of ``max(MIN_TILE, longest / 8)`` px: at most about
    300 detector calls, a few seconds on a 10000 px image (this only runs when nothing
    else found a face).
    """
    h, w = image.shape[:2]
    longest = max(h, w)
    tile = longest / 2
    while tile >= max(MIN_TILE, longest / 8):
        k = min(1.0, TILE_SIDE / tile)                   # level image px per full-res px
        level = image if k == 1.0 else np.asarray(Image.fromarray(image).resize(
            (max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR, reducing_gap=2.0))
        lh, lw = level.shape[:2]
        t, step = int(round(tile * k)), max(1, int(round(tile * k / 2)))
        boxes = []
        for y0 in range(0, max(lh - t, 0) + step, step):
            for x0 in range(0, max(lw - t, 0) + step, step):
                part = np.ascontiguousarray(level[y0:y0 + t, x0:x0 + t])
                for b in _run_detector(part, sx=1.0, sy=1.0):
                    boxes.append(FaceBox((x0 + b.x0) / k, (y0 + b.y0) / k,
                                         (x0 + b.x1) / k, (y0 + b.y1) / k))
        yield boxes
        tile /= 2


def _mesh_on_crop(image: np.ndarray, box: FaceBox) -> np.ndarray | None:
    """Mesh the face in ``box`` on a square full-resolution crop around it.

    Returns ``(478, 3)`` landmarks_px in the full image, or None if FaceMesh finds no face
    near the crop centre.
    """
    cx, cy = _centre(box)
    side = CROP_CONTEXT * max(box.x1 - box.x0, box.y1 - box.y0)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = max(int(round(side)), 8)
    crop = _crop_padded(image, x0, y0, n)
    if n > CROP_SIDE * 1.5 or n < CROP_SIDE:  # bring small faces up and large ones down
        crop = np.asarray(Image.fromarray(crop).resize((CROP_SIDE, CROP_SIDE), Image.BICUBIC))
    candidates = _run_mesh(np.ascontiguousarray(crop), MAX_FACES)
    if not candidates:
        return None
    # The face the detector pointed at is the one nearest the crop centre.
    best = min(candidates, key=lambda lm: float(np.sum((lm[:, :2].mean(0) - 0.5) ** 2)))
    face = _to_px(best, float(x0), float(y0), n, n)
    return face if _contains(_box_of(face), (cx, cy)) else None


def _landmarks_array(face_landmarks) -> np.ndarray:
    """MediaPipe NormalizedLandmarkList -> ``(478, 3)`` float64 (x, y in [0, 1], z)."""
    lm = np.array([(p.x, p.y, p.z) for p in face_landmarks.landmark], dtype=np.float64)
    if lm.shape != (NUM_LANDMARKS, 3):  # refine_landmarks=True always gives 478
        raise RuntimeError(f"MediaPipe returned {lm.shape[0]} landmarks, expected "
                           f"{NUM_LANDMARKS} — check the mediapipe version")
    return lm


def _to_px(lm: np.ndarray, x0: float, y0: float, width: float, height: float) -> np.ndarray:
    """Normalised landmarks of a ``width x height`` px region at ``(x0, y0)`` -> px."""
    out = np.empty_like(lm, dtype=np.float32)
    out[:, 0] = x0 + lm[:, 0] * width
    out[:, 1] = y0 + lm[:, 1] * height
    out[:, 2] = lm[:, 2] * width
    return out


# ----------------------------------------------------------------------------- geometry

def _as_rgb(image) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 \
            and image.shape[-1] == 3:
        return np.ascontiguousarray(image)
    return load_image(image)


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Copy of ``image`` with longest side <= ``max_side`` (unchanged if it already is)."""
    h, w = image.shape[:2]
    k = max_side / max(h, w)
    if k >= 1.0:
        return image
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0))


def _crop_padded(image: np.ndarray, x0: int, y0: int, n: int) -> np.ndarray:
    """``n x n`` crop at ``(x0, y0)``; parts outside the image are black."""
    h, w = image.shape[:2]
    out = np.zeros((n, n, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def _box_of(landmarks_px: np.ndarray) -> FaceBox:
    xy = np.asarray(landmarks_px)[:, :2]
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    return FaceBox(float(x0), float(y0), float(x1), float(y1))


def _centre(box: FaceBox) -> tuple[float, float]:
    return 0.5 * (box.x0 + box.x1), 0.5 * (box.y0 + box.y1)


def _contains(box: FaceBox, point: tuple[float, float]) -> bool:
    return box.x0 <= point[0] <= box.x1 and box.y0 <= point[1] <= box.y1


def _area(box: FaceBox) -> float:
    return (box.x1 - box.x0) * (box.y1 - box.y0)


def _describe(i: int, face: np.ndarray) -> str:
    b = _box_of(face)
    return (f"#{i} box ({b.x0:.0f}, {b.y0:.0f})-({b.x1:.0f}, {b.y1:.0f}) "
            f"{b.x1 - b.x0:.0f}x{b.y1 - b.y0:.0f} px")
