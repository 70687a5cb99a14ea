"""The subject: one face of a portrait, ready for animation.

Joins the face front-end steps (decode, detect, pick a face, pose, canonicalise) so that
the pipeline and the app ask for a subject in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .image import image_name, load_image
from .landmarks import detect_faces, select_face
from .pose import estimate_pose, to_canonical


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
    Raises ImageDecodeError, NoFaceFoundError or FaceIndexError with a message to act on.
    """
    rgb = load_image(image)
    faces = detect_faces(rgb)
    landmarks = select_face(faces, face_index, source=image_name(image))
    index = next(i for i, f in enumerate(faces) if np.array_equal(f, landmarks))
    pose = estimate_pose(landmarks)
    return Subject(rgb, landmarks.astype(np.float32), pose.astype(np.float32),
                   to_canonical(landmarks, pose).astype(np.float32), faces, index)
