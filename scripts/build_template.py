"""Rebuild moda_hub/face/data/canonical_template.npy, the canonical face template.

The template is the generalised Procrustes mean of real faces meshed with MediaPipe
FaceMesh (478 points):

- the 100 face images of ``skimage.data.lfw_subset()`` (25x25 grayscale crops; the other
  100 images of that set are non-faces), upscaled to 256 px - MediaPipe meshes most of them;
- ``skimage.data.astronaut()`` and matplotlib's ``grace_hopper.jpg``;
- every image also mirrored left-right, so that the mean face is symmetric.

Steps: mesh each image (landmarks_px, z = MediaPipe z x width); centre and scale each
mesh to unit outer-eye-corner distance; iterate similarity alignment to the mean
(generalised Procrustes) and drop outliers; orient the mean frontally (average camera
view for pitch, midline in the plane x = 0 for yaw and roll); store ``(478, 3)`` float32
in canonical units (see moda_hub/face/template.py).

Usage:
    python scripts/build_template.py [--out PATH] [--lfw-size 256]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

if importlib.util.find_spec("moda_hub") is None:       # run from a checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moda_hub.face.image import load_image  # noqa: E402
from moda_hub.face.landmarks import detect_faces, select_face  # noqa: E402
from moda_hub.face.pose import matrix_to_euler, umeyama  # noqa: E402
from moda_hub.face.template import MIDLINE, TEMPLATE_PATH, normalize_shape  # noqa: E402
from moda_hub.face.topology import EYE_OUTER_LEFT, EYE_OUTER_RIGHT  # noqa: E402


def source_images(lfw_size: int) -> list[tuple[str, np.ndarray]]:
    """``(name, (H, W, 3) uint8 RGB)`` of every face image used, before mirroring."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    images = [("astronaut", skimage.data.astronaut()),
              ("grace_hopper", load_image(matplotlib.cbook.get_sample_data(
                  "grace_hopper.jpg", asfileobj=False)))]
    lfw = skimage.data.lfw_subset()[:100]          # the first 100 are faces
    for i, face in enumerate(lfw):
        gray = Image.fromarray(np.clip(np.rint(face * 255), 0, 255).astype(np.uint8))
        big = gray.resize((lfw_size, lfw_size), Image.BICUBIC).convert("RGB")
        images.append((f"lfw_{i:03d}", np.asarray(big)))
    return images


def mesh_all(images: list[tuple[str, np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """Mesh each image and its mirror; returns names and ``(K, 478, 3)`` landmarks_px."""
    names, shapes = [], []
    for name, rgb in images:
        for tag, img in (("", rgb), ("_mirror", np.ascontiguousarray(rgb[:, ::-1]))):
            faces = detect_faces(img)
            if faces:
                names.append(name + tag)
                shapes.append(select_face(faces))
    return names, np.stack(shapes).astype(np.float64)


def generalized_procrustes(shapes: np.ndarray, iters: int = 50, tol: float = 1e-10
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes analysis.

    Args:
        shapes: ``(K, N, 3)`` meshes, any similarity each.

    Returns:
        ``mean`` ``(N, 3)`` (centred, unit eye distance, in the frame of ``shapes[0]``) and
        ``aligned`` ``(K, N, 3)``, each shape similarity-aligned to it.
    """
    x = normalize_shape(shapes)
    mean = x[0]
    for _ in range(iters):
        s, rot, t = umeyama(x, mean)
        aligned = s[:, None, None] * np.einsum("kij,knj->kni", rot, x) + t[:, None]
        new = normalize_shape(aligned.mean(0))
        _, r0, _ = umeyama(new, mean, with_scale=False)     # keep the frame from drifting
        new = new @ r0.T
        done = np.abs(new - mean).max() < tol
        mean = new
        if done:
            break
    return mean, aligned


def average_camera_rotation(mean: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Rotation ``(3, 3)`` taking ``mean`` to how the average image shows it (the chordal
    mean of each face's rotation ``shape ~ s R mean + t``, projected back onto SO(3))."""
    _, rot, _ = umeyama(mean, normalize_shape(shapes))
    u, _, vt = np.linalg.svd(rot.mean(0))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def midline_rotation(mesh: np.ndarray) -> np.ndarray:
    """Smallest rotation ``(3, 3)`` that turns the normal of the midline plane to +x
    (oriented from point 33 to point 263), i.e. removes yaw and roll."""
    mid = mesh[MIDLINE] - mesh[MIDLINE].mean(0)
    n = np.linalg.svd(mid)[2][-1]
    if np.dot(n, mesh[EYE_OUTER_LEFT] - mesh[EYE_OUTER_RIGHT]) < 0:
        n = -n
    ex = np.array([1.0, 0.0, 0.0])
    axis = np.cross(n, ex)
    sin, cos = np.linalg.norm(axis), float(np.dot(n, ex))
    if sin < 1e-12:
        return np.eye(3)
    k = axis / sin
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sin * kx + (1 - cos) * kx @ kx


def build(lfw_size: int = 256, verbose: bool = True) -> np.ndarray:
    """Mesh the sources, run GPA with outlier rejection, orient; ``(478, 3)`` float32."""
    names, shapes = mesh_all(source_images(lfw_size))
    mean, aligned = generalized_procrustes(shapes)
    rms = np.sqrt(((aligned - mean) ** 2).sum(-1).mean(-1))
    med = np.median(rms)
    mad = np.median(np.abs(rms - med))
    keep = rms <= med + 4.0 * 1.4826 * mad
    if verbose:
        print(f"meshed {len(names)} faces ({sum('lfw' in n for n in names)} LFW incl. mirrors); "
              f"RMS to mean: median {med:.4f}, max {rms.max():.4f} eye-distance units; "
              f"dropping {int((~keep).sum())} outliers: "
              f"{[n for n, k in zip(names, keep) if not k]}")
    shapes = shapes[keep]
    mean, aligned = generalized_procrustes(shapes)

    mean = mean @ average_camera_rotation(mean, shapes).T   # pitch of the average photo
    mean = mean @ midline_rotation(mean).T                  # midline plane -> x = 0
    template = normalize_shape(mean).astype(np.float32)

    if verbose:
        _, rot, _ = umeyama(template, normalize_shape(shapes))
        angles = matrix_to_euler(rot)
        print(f"kept {len(shapes)} faces; their poses vs the template (deg): mean "
              f"{np.round(angles.mean(0), 2).tolist()}, std {np.round(angles.std(0), 2).tolist()}")
        print(f"midline |x| max {np.abs(template[MIDLINE, 0]).max():.4f}; "
              f"x/y/z extent {np.round(np.ptp(template, axis=0), 3).tolist()}; "
              f"nose tip z {template[1, 2]:.3f}")
    return template


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TEMPLATE_PATH,
                        help="where to write the .npy (default: the package's template)")
    parser.add_argument("--lfw-size", type=int, default=256,
                        help="side in px the 25x25 LFW faces are upscaled to before meshing")
    args = parser.parse_args(argv)
    template = build(args.lfw_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, template)
    print(f"wrote {args.out} {template.shape} {template.dtype}")


if __name__ == "__main__":
    main()
