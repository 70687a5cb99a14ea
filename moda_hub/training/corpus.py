"""Training views of a motion corpus: synthetic ("moda-synthetic/1", ``moda_hub.data.synthetic``)
or prepared from real videos ("moda-video/1", ``moda_hub.data.video_dataset``) — same shards.

``MotionCorpus`` holds utterances (per-frame features and motion) for stage 1;
``DenseFrames`` holds (lip, eye, subject, dense) frames for stage 2. Both read the shards
directly and keep everything in memory (about 1.5 kB per frame for stage 1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import torch

from ..data.deform import BLINK_L, BLINK_R
from ..motion import count_blinks


def _shards(data_dir: str, split: str):
    """Yield (shard arrays, [manifest records of ``split`` in it]) for each shard."""
    root = Path(data_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"no corpus at {data_dir!r} — build one with `moda prepare synthetic`")
    manifest = json.loads(manifest_path.read_text())
    by_shard = {}
    for m in manifest["utterances"]:
        if m["split"] == split:
            by_shard.setdefault(m["shard"], []).append(m)
    for k, metas in sorted(by_shard.items()):
        with np.load(root / f"shard_{k:04d}.npz") as z:
            yield {key: z[key] for key in z.files if not key.startswith("audio_")}, metas


def _subjects(data_dir: str) -> np.ndarray:
    with np.load(Path(data_dir) / "subjects.npz") as z:
        return z["meshes"].astype(np.float32)


def blink_rate_of(params: np.ndarray, fps: float) -> float:
    """Blinks per minute in a (T, P) rig-parameter track (mean of the two lid closures)."""
    closure = 0.5 * (params[:, BLINK_L] + params[:, BLINK_R]).astype(np.float32)
    return count_blinks(1.0 - closure, fps) * 60.0 * fps / max(len(params), 1)


class MotionCorpus:
    """Stage-1 utterances of one split.

    features: a ``moda_hub.features.FEATURE_KINDS`` kind: the log-mel rows, then the first
    ``PHONE_COLUMNS[features]`` columns of the stored phone stream (a corpus built before the
    opening column has 13: it serves "logmel" and "logmel+phones" only).
    utterances: list of dicts with "features" (T, F) float32, "lip" (T, 40, 3), "eye" (T, 60, 3),
    "head" (T, 7), "torso" (T, 2) float32 (contract units), "subject" int, "blink_rate" (per minute).
    subjects: (S, 478, 3) canonical meshes.
    """

    def __init__(self, data_dir: str, split: str, features: str = "logmel+phones+opening"):
        from moda_hub.features import PHONE_COLUMNS, feature_dim

        feature_dim(features)
        n_phone = PHONE_COLUMNS[features]
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text()) \
            if (Path(data_dir) / "manifest.json").exists() else {}
        self.feature_kind = features
        self.fps = int(manifest.get("fps", 30))
        self.subjects = _subjects(data_dir) if manifest else None
        self.utterances: List[dict] = []
        for d, metas in _shards(data_dir, split):
            fo = d["frame_offsets"]
            if n_phone and d["phones"].shape[1] < n_phone:      # the speaker-robust phone stream
                raise ValueError(
                    f"corpus {data_dir!r} stores {d['phones'].shape[1]} phone columns, features="
                    f"{features!r} needs {n_phone} — rebuild it (moda prepare synthetic) or train "
                    "with the features it has")
            for m in metas:
                if not m.get("has_audio", True):     # a prepared video without sound: renderer only
                    continue
                i = m["index"]
                a, b = int(fo[i]), int(fo[i + 1])
                u = {k: d[k][a:b].astype(np.float32) for k in ("features", "lip", "eye", "head", "torso")}
                if n_phone:
                    u["features"] = np.concatenate([u["features"], d["phones"][a:b, :n_phone].astype(np.float32)], 1)
                u["subject"] = int(d["subject"][i])
                # real videos (moda prepare video) record the measured rate; synthetic ones the rig's
                u["blink_rate"] = float(m["blink_rate"]) if "blink_rate" in m else blink_rate_of(d["params"][a:b], self.fps)
                self.utterances.append(u)
        if not self.utterances:
            raise ValueError(f"corpus {data_dir!r} has no {split!r} utterances")
        self.feature_dim = self.utterances[0]["features"].shape[1]


class DenseFrames:
    """Stage-2 frames of one split: lip (N, 40, 3), eye (N, 60, 3), subject (N,), dense (N, 478, 3)."""

    def __init__(self, data_dir: str, split: str):
        self.subjects = _subjects(data_dir)
        lips, eyes, dense, subj = [], [], [], []
        for d, metas in _shards(data_dir, split):
            fo = d["frame_offsets"]
            keep = np.zeros(len(d["dense_frames"]), bool)
            for m in metas:
                i = m["index"]
                sel = (d["dense_frames"] >= fo[i]) & (d["dense_frames"] < fo[i + 1])
                keep |= sel
            rows = d["dense_frames"][keep]
            owner = np.searchsorted(fo, rows, side="right") - 1
            lips.append(d["lip"][rows]); eyes.append(d["eye"][rows])
            dense.append(d["dense"][keep]); subj.append(d["subject"][owner])
        self.lip = np.concatenate(lips).astype(np.float32)
        self.eye = np.concatenate(eyes).astype(np.float32)
        self.dense = np.concatenate(dense).astype(np.float32)
        self.subject = np.concatenate(subj).astype(np.int64)

    def __len__(self):
        return len(self.lip)

    def batch(self, rng: np.random.Generator, size: int):
        """A random batch of tensors (lip, eye, cond (B, 1434), dense)."""
        idx = rng.integers(0, len(self), size)
        return self._tensors(idx)

    def all(self, limit: int = 4096):
        return self._tensors(np.arange(min(limit, len(self))))

    def _tensors(self, idx):
        t = torch.from_numpy
        cond = self.subjects[self.subject[idx]].reshape(len(idx), -1)
        return t(self.lip[idx]), t(self.eye[idx]), t(cond), t(self.dense[idx])
