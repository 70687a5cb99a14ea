"""The subject: one face of a portrait, ready for animation.

Joins the face front-end steps (decode, detect, pick a face, pose, canonicalise) so that
the pipeline and the app ask for a subject in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..errors import NoFaceFoundError
from .image import image_name, load_image
from .landmarks import detect_faces, face_box, select_face
from .pose import estimate_pose, to_canonical

#: Portraits with a longer side are downscaled to it on load (JPEGs decoded at reduced scale),
#: so memory stays bounded for huge photos; landmarks then refer to the downscaled image.
MAX_IMAGE_SIDE = 4096
#: Smallest face accepted, px (the longer side of the landmark box in the loaded image): a
#: smaller face has too few pixels to animate; the renderer would only magnify blur.
MIN_FACE_PX = 64


@dataclass
class Subject:
    """One face of a portrait.

    image: (H, W, 3) uint8 RGB, EXIF orientation applied.
    landmarks_px: (478, 3) float32, image pixels (z = MediaPipe z x width).
    pose: (7,) float32 [pitch, yaw, roll (degrees), tx, ty, tz (px), scale (px per canonical unit)].
    canonical: (478, 3) float32, canonical units — the subject condition.
    faces: every face found, (478, 3) each, left to right.
    face_index: which of ``faces`` this is.
    """
    image: np.ndarray
    landmarks_px: np.ndarray
    pose: np.ndarray
    canonical: np.ndarray
    faces: List[np.ndarray]
    face_index: int


def prepare_subject(image, face_index: Optional[int] = None) -> Subject:
    """Decode ``image`` (path, PIL image or array), find its faces and pick one.

    face_index: index into the faces ordered left to right; None picks the largest.
    Images longer than :data:`MAX_IMAGE_SIDE` px are downscaled first.
    Raises ImageDecodeError, NoFaceFoundError (also for a face narrower than
    :data:`MIN_FACE_PX` px) or FaceIndexError with a message to act on.
    """
    rgb = load_image(image, max_side=MAX_IMAGE_SIDE)
    faces = detect_faces(rgb)
    landmarks = select_face(faces, face_index, source=image_name(image))
    box = face_box(landmarks)
    size = max(box.x1 - box.x0, box.y1 - box.y0)   # a turned face is narrow but not short
    if size < MIN_FACE_PX:
        where = f"'{image_name(image)}'" if image_name(image) else "the image"
        raise NoFaceFoundError(f"the face in {where} is only {size:.0f} px across — use a photo where "
                               f"the face is at least {MIN_FACE_PX} px across (256 px or more looks best)")
    index = next(i for i, f in enumerate(faces) if np.array_equal(f, landmarks))
    pose = estimate_pose(landmarks)
    return Subject(rgb, landmarks.astype(np.float32), pose.astype(np.float32),
                   to_canonical(landmarks, pose).astype(np.float32), faces, index)
