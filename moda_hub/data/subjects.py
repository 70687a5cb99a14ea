"""Subject meshes for the synthetic corpus: real faces plus random shape variation.

A subject is a ``(478, 3)`` float32 mesh in canonical space (see
:mod:`moda_hub.face.template`), exactly what the pipeline uses as the subject condition:
``to_canonical(landmarks_px, estimate_pose(landmarks_px))`` of a portrait.

Real faces (:func:`real_subjects`): ``skimage.data.astronaut()``, matplotlib's
``grace_hopper.jpg`` and the 100 face crops of ``skimage.data.lfw_subset()`` (25x25,
upscaled to 256 px), each also mirrored, meshed with MediaPipe (about 190 meshes). They
are cached in ``moda_hub/data/subject_bank.npz`` (built on first use when missing,
``python -m moda_hub.data.subjects --rebuild`` rebuilds it); reading the cache does not
need MediaPipe.

Synthetic faces (:func:`subject_bank`): a real face + a random combination of the real
faces' principal shape components + a smooth random warp (a few Gaussian bumps) + a
random anisotropic scaling; re-fitted to canonical space. A share of them also gets a
resting expression (mouth a little open, a smile), so the corpus has subject conditions
whose mouth is not closed, as real portraits have.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

import numpy as np

from moda_hub.face import topology as topo
from moda_hub.face.image import load_image
from moda_hub.face.landmarks import detect_faces, select_face
from moda_hub.face.pose import POSE_POINTS, estimate_pose, to_canonical, umeyama
from moda_hub.face.rig import JAW, P_ALL, PRESS, SPREAD, FaceRig
from moda_hub.face.template import canonical_template

BANK_PATH = Path(__file__).parent / "subject_bank.npz"
LFW_SIZE = 256


def _source_images() -> List[Tuple[str, np.ndarray]]:
    import matplotlib.cbook
    import skimage.data
    from PIL import Image


    images = [("astronaut", skimage.data.astronaut()),
              ("grace_hopper", load_image(matplotlib.cbook.get_sample_data(
                  "grace_hopper.jpg", asfileobj=False)))]
    for i, face in enumerate(skimage.data.lfw_subset()[:100]):     # the first 100 are faces
        gray = Image.fromarray(np.clip(np.rint(face * 255), 0, 255).astype(np.uint8))
        big = gray.resize((LFW_SIZE, LFW_SIZE), Image.BICUBIC).convert("RGB")
        images.append((f"lfw_{i:03d}", np.asarray(big)))
    return images


def build_real_bank(path: Path = BANK_PATH) -> Tuple[np.ndarray, List[str]]:
    """Mesh the bundled real faces (and mirrors) with MediaPipe, canonicalise, save to
    ``path`` (npz: ``mean`` (478, 3) float32, ``deltas`` (S, 478, 3) float16, ``names``
    (S,) str; mesh = mean + delta). Returns ``meshes`` (S, 478, 3) float32 and names."""

    names, meshes = [], []
    for name, rgb in _source_images():
        for tag, img in (("", rgb), ("_mirror", np.ascontiguousarray(rgb[:, ::-1]))):
            faces = detect_faces(img)
            if not faces:
                continue
            lm = select_face(faces)
            meshes.append(to_canonical(lm, estimate_pose(lm)))
            names.append(name + tag)
    meshes = np.stack(meshes).astype(np.float32)
    mean = meshes.mean(0)
    try:          # mean + float16 deltas: ~0.3 MB, error < 1e-4 canonical units
        np.savez_compressed(path, mean=mean, deltas=(meshes - mean).astype(np.float16),
                            names=np.array(names))
    except OSError:
        pass                                            # read-only install: build each time
    return meshes, names


def real_subjects(rebuild: bool = False) -> Tuple[np.ndarray, List[str]]:
    """The real faces: ``(S, 478, 3)`` float32 canonical meshes and their names
    (``"astronaut"``, ``"lfw_012_mirror"`` ...), from the cache when present."""
    if not rebuild and BANK_PATH.exists():
        with np.load(BANK_PATH) as z:
            meshes = z["mean"][None].astype(np.float32) + z["deltas"].astype(np.float32)
            return meshes, [str(n) for n in z["names"]]
    return build_real_bank()


def _refit(mesh: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Similarity-fit ``mesh`` to canonical space the way a portrait is (pose points onto
    the template), so synthetic subjects sit where real ones do."""

    s, R, t = umeyama(mesh[POSE_POINTS], template[POSE_POINTS])
    return (s * mesh @ R.T + t).astype(np.float32)


def _smooth_warp(mesh: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Sum of 4-8 Gaussian bumps (radius 0.2-0.5 canonical units) of random 3-D
    displacement (std ``amplitude``), centred on random mesh points."""
    out = mesh.astype(np.float64).copy()
    for _ in range(int(rng.integers(4, 9))):
        c = mesh[int(rng.integers(0, len(mesh)))]
        rho = rng.uniform(0.2, 0.5)
        w = np.exp(-np.sum(np.square(mesh - c), axis=1) / (2 * rho * rho))
        out += w[:, None] * rng.normal(0.0, amplitude, 3)[None] * np.array([1.0, 1.0, 0.7])
    return out


def subject_bank(num_subjects: int = 400, seed: int = 0, val_fraction: float = 0.1
                 ) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """Real and synthetic subjects in canonical space.

    Args:
        num_subjects: total count (the real faces come first; if fewer than them are
            asked for, a random subset of real faces).
        seed: the bank is a deterministic function of ``(num_subjects, seed)``.
        val_fraction: share of *real source faces* held out for validation; a synthetic
            subject inherits its source face's split (no identity leaks across splits).

    Returns:
        meshes (S, 478, 3) float32, names (S,) str, split (S,) str "train" | "val".
    """

    rng = np.random.default_rng([seed, 7])
    real, names = real_subjects()
    template = canonical_template().astype(np.float64)
    base_ids = sorted({n.replace("_mirror", "") for n in names})
    n_val = max(1, int(round(val_fraction * len(base_ids))))
    val_ids = set(rng.choice([b for b in base_ids if b.startswith("lfw")], n_val,
                             replace=False).tolist())
    split_real = np.array(["val" if n.replace("_mirror", "") in val_ids else "train"
                           for n in names])
    if num_subjects <= len(real):
        keep = np.sort(rng.choice(len(real), num_subjects, replace=False))
        return real[keep], [names[i] for i in keep], split_real[keep]

    # principal components of the real faces (after alignment): identity variation
    X = real.reshape(len(real), -1).astype(np.float64)
    Xc = X - X.mean(0)
    evals, evecs = np.linalg.eigh(Xc @ Xc.T)                 # Gram matrix: (S, S), cheap
    order = np.argsort(evals)[::-1]
    K = min(20, len(real) - 1)
    evals, evecs = np.maximum(evals[order[:K]], 1e-12), evecs[:, order[:K]]
    Vt = (evecs.T @ Xc) / np.sqrt(evals)[:, None]            # (K, D) unit components
    comp_std = np.sqrt(evals / (len(real) - 1))
    meshes, out_names, split = list(real), list(names), list(split_real)
    for i in range(num_subjects - len(real)):
        j = int(rng.integers(0, len(real)))
        z = rng.normal(0.0, 1.0, K) * comp_std
        m = real[j].astype(np.float64) + 0.6 * (z @ Vt[:K]).reshape(-1, 3)
        m = _smooth_warp(m, rng, float(rng.uniform(0.01, 0.03)))
        m = m * rng.uniform([0.92, 0.93, 0.85], [1.08, 1.07, 1.15])
        m = _refit(m, template)
        if rng.random() < 0.25:                          # resting expression
            p = np.zeros((1, P_ALL), np.float32)
            p[0, JAW] = rng.uniform(0.0, 0.45)
            p[0, SPREAD] = rng.uniform(0.0, 0.8)
            p[0, PRESS] = rng.uniform(0.0, 0.3)
            m = FaceRig(m).meshes(p)[0]
        meshes.append(m.astype(np.float32))
        out_names.append(f"synthetic_{i:04d}_from_{names[j]}")
        split.append(split_real[j])
    return np.stack(meshes).astype(np.float32), out_names, np.array(split)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Rebuild the cached real-face subject bank.")
    ap.add_argument("--rebuild", action="store_true", help="re-mesh the real faces")
    args = ap.parse_args(argv)
    meshes, names = real_subjects(rebuild=args.rebuild)
    ap_ = topo.mouth_aperture(meshes)
    print(f"{len(names)} real subjects in {BANK_PATH} (mouth aperture median "
          f"{np.median(ap_):.3f}, max {ap_.max():.3f})")


if __name__ == "__main__":
    main()
