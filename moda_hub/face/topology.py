"""MediaPipe FaceMesh topology: which of the 478 landmarks belong to which part.

Index lists follow MediaPipe's ``face_mesh_connections`` (refine_landmarks=True, so 468
mesh points + 10 iris points). They are written out here so that importing the
topology does not import MediaPipe.

Conventions used across moda_hub:
- ``LIPS`` (40 points) is the order of stage-1 ``lip`` outputs ``(T, 40, 3)``.
- ``EYES`` (60 points: left eye 16, right eye 16, left brow 10, right brow 10,
  left iris 4, right iris 4) is the order of stage-1 ``eye`` outputs ``(T, 60, 3)``.
  "Left" is MediaPipe's naming: the subject's left, the image's right.
"""
from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

LIPS = np.array([0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
                 185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375,
                 402, 405, 409, 415])
LEFT_EYE = np.array([249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466])
RIGHT_EYE = np.array([7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246])
LEFT_BROW = np.array([276, 282, 283, 285, 293, 295, 296, 300, 334, 336])
RIGHT_BROW = np.array([46, 52, 53, 55, 63, 65, 66, 70, 105, 107])
LEFT_IRIS = np.array([474, 475, 476, 477])       # boundary; 473 is the centre
RIGHT_IRIS = np.array([469, 470, 471, 472])      # boundary; 468 is the centre
LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER = 473, 468
EYES = np.concatenate([LEFT_EYE, RIGHT_EYE, LEFT_BROW, RIGHT_BROW, LEFT_IRIS, RIGHT_IRIS])

# Closed loops, in order around the contour.
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379,
                      378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127,
                      162, 21, 54, 103, 67, 109])
LIPS_OUTER = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0,
                       37, 39, 40, 185])
LIPS_INNER = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13,
                       82, 81, 80, 191])
LEFT_EYE_LOOP = np.array([362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385,
                          384, 398])
RIGHT_EYE_LOOP = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160,
                           161, 246])
# Upper and lower lid halves of each eye loop (corner to corner).
LEFT_EYE_UPPER = np.array([362, 398, 384, 385, 386, 387, 388, 466, 263])
LEFT_EYE_LOWER = np.array([362, 382, 381, 380, 374, 373, 390, 249, 263])
RIGHT_EYE_UPPER = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133])
RIGHT_EYE_LOWER = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133])

# Named points used by measures and by the pose.
MOUTH_INNER_TOP, MOUTH_INNER_BOTTOM = 13, 14
MOUTH_LEFT_CORNER, MOUTH_RIGHT_CORNER = 291, 61
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263     # outer eye corners (subject's right, left)
CHIN = 152
NOSE_TIP = 1

# Lip and eye positions inside LIPS / EYES, handy for slicing stage-1 outputs.


def mouth_aperture(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over outer-eye-corner distance, the project's lip-sync measure.

    landmarks: (..., 478, 2 or 3) in any consistent unit. Returns (...,) float.
    """
    lm = np.asarray(landmarks)[..., :2]
    gap = np.linalg.norm(lm[..., MOUTH_INNER_TOP, :] - lm[..., MOUTH_INNER_BOTTOM, :], axis=-1)
    iod = np.linalg.norm(lm[..., EYE_OUTER_RIGHT, :] - lm[..., EYE_OUTER_LEFT, :], axis=-1)
    return gap / np.maximum(iod, 1e-8)


def eye_openness(landmarks: np.ndarray) -> np.ndarray:
    """Mean lid gap of both eyes (159-145 and 386-374) over the outer-eye-corner distance.

    landmarks: (..., 478, 2 or 3). Returns (...,) float; about 0.07-0.1 open, < 0.03 closed.
    """
    lm = np.asarray(landmarks)[..., :2]
    r = np.linalg.norm(lm[..., 159, :] - lm[..., 145, :], axis=-1)
    l = np.linalg.norm(lm[..., 386, :] - lm[..., 374, :], axis=-1)
    iod = np.linalg.norm(lm[..., EYE_OUTER_RIGHT, :] - lm[..., EYE_OUTER_LEFT, :], axis=-1)
    return 0.5 * (r + l) / np.maximum(iod, 1e-8)
