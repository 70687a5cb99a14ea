"""Face front-end: portrait decoding, MediaPipe landmarks, canonical template, head pose.

Frames and units are documented in each module; in short: ``landmarks_px`` ``(478, 3)``
float32 are full-image pixels (x right, y down, z = MediaPipe z x width), canonical space
is the template's (centred, outer-eye-corner distance 1), and a pose ``(7,)`` is
``[pitch, yaw, roll (deg), tx, ty, tz (px), scale (px per canonical unit)]``.
MediaPipe is imported only when landmarks are first detected.
"""
from moda_hub.face.image import image_name, load_image
from moda_hub.face.landmarks import (FaceBox, FaceTracker, detect_faces, face_box,
                                     face_landmarks, select_face)
from moda_hub.face.pose import (POSE_POINTS, apply_head_offset, estimate_pose,
                                euler_to_matrix, from_canonical, head_offset,
                                matrix_to_euler, to_canonical, umeyama)
from moda_hub.face.template import canonical_template

__all__ = [
    "load_image", "image_name",
    "detect_faces", "select_face", "face_landmarks", "face_box", "FaceBox", "FaceTracker",
    "canonical_template",
    "umeyama", "estimate_pose", "euler_to_matrix", "matrix_to_euler", "to_canonical",
    "from_canonical", "apply_head_offset", "head_offset", "POSE_POINTS",
]
