"""Training views of a motion corpus: synthetic ("moda-synthetic/1", ``moda_hub.data.synthetic``)
or prepared from real videos ("moda-video/1", ``moda_hub.data.video_dataset``) — same shards.

``MotionCorpus`` holds utterances (per-frame features and motion) for stage 1;
``DenseFrames`` holds (lip, eye, subject, dense) frames for stage 2. Both read the shards
directly and keep everything in memory (about 1.5 kB per frame for stage 1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..face.rig import BLINK_L, BLINK_R
from ..motion.blinks import count_blinks


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

    features: a ``moda_hub.speech.kinds.FEATURE_KINDS`` kind: the log-mel rows, then the first
    ``PHONE_COLUMNS[features]`` columns of the stored phone stream (a corpus built before the
    opening column has 13: it serves "logmel" and "logmel+phones" only); for the encoder kinds
    ("whisper-tiny") the stored ``states`` instead (a corpus built before them has none: rebuild
    it, or for a prepared video dataset ``moda_hub.data.video_dataset.add_encoder_states``).
    utterances: list of dicts with "features" (T, F) float32, "lip" (T, 40, 3), "eye" (T, 60, 3),
    "head" (T, 7), "torso" (T, 2) float32 (contract units), "subject" int, "blink_rate" (per minute),
    and, where the shard holds every frame's dense offsets (prepared real footage), "dense" (T, 478, 3)
    float16: the canonical mesh of frame t minus the subject's (its first frame's; ``lip`` and ``eye``
    are its LIPS and EYES rows) — what re-references an utterance to another portrait frame
    (``moda_hub.training.train_moda.WindowBatches``).
    subjects: (S, 478, 3) canonical meshes.
    states_layer: for the encoder kinds, the encoder layer the stored states come from (as the
    corpus recorded it: ``manifest["features"]["states_layer"]`` of a synthetic corpus, each shard's
    ``states_layer`` of a prepared video dataset); None when not recorded (built before: the last).
    """

    def __init__(self, data_dir: str, split: str, features: str = "logmel+phones+opening"):
        from moda_hub.speech.features import ENCODER_KINDS, PHONE_COLUMNS, feature_dim

        feature_dim(features)
        encoded = features in ENCODER_KINDS
        n_phone = PHONE_COLUMNS[features]
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text()) \
            if (Path(data_dir) / "manifest.json").exists() else {}
        self.feature_kind = features
        self.fps = int(manifest.get("fps", 30))
        self.subjects = _subjects(data_dir) if manifest else None
        self.utterances: List[dict] = []
        layers = {manifest.get("features", {}).get("states_layer")} if isinstance(manifest.get("features"), dict) else set()
        for d, metas in _shards(data_dir, split):
            fo = d["frame_offsets"]
            if encoded and "states_layer" in d:
                layers.add(int(d["states_layer"]))
            if encoded and "states" not in d:
                raise ValueError(f"corpus {data_dir!r} has no audio-encoder states, features={features!r} "
                                 "needs them — rebuild it (moda prepare synthetic), add them to a prepared "
                                 "video dataset (video_dataset.add_encoder_states) or train with the "
                                 "features it has")
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
                if encoded:
                    u["features"] = d["states"][a:b].astype(np.float32)
                if n_phone:
                    u["features"] = np.concatenate([u["features"], d["phones"][a:b, :n_phone].astype(np.float32)], 1)
                u["subject"] = int(d["subject"][i])
                if "dense_frames" in d:
                    rows = np.flatnonzero((d["dense_frames"] >= a) & (d["dense_frames"] < b))
                    if len(rows) == b - a:                       # every frame's mesh is known
                        u["dense"] = d["dense"][rows].astype(np.float16)
                u["id"] = m.get("id", "")
                u["speaker"] = str(m.get("speaker") or m.get("video") or m.get("voice") or "")
                # real videos (moda prepare video) record the measured rate; synthetic ones the rig's
                u["blink_rate"] = float(m["blink_rate"]) if "blink_rate" in m else blink_rate_of(d["params"][a:b], self.fps)
                self.utterances.append(u)
        if not self.utterances:
            raise ValueError(f"corpus {data_dir!r} has no {split!r} utterances")
        layers.discard(None)
        if len(layers) > 1:
            raise ValueError(f"corpus {data_dir!r} mixes states of encoder layers {sorted(layers)} — recompute "
                             "them with one encoder (video_dataset.add_encoder_states)")
        self.states_layer = layers.pop() if encoded and layers else None
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


def mix_corpora(corpora: List[MotionCorpus], shares: Optional[List[float]] = None) -> MotionCorpus:
    """One stage-1 corpus from several (e.g. the synthetic corpus and prepared real footage).

    Subjects are stacked (each utterance's ``subject`` re-indexed); every utterance gets
    ``source`` (its corpus's position) and ``weight``: the sampling weight per frame that gives
    corpus ``k`` the share ``shares[k]`` of training windows (default: in proportion to frames).
    All corpora must have the same feature kind and frame rate."""
    kinds = {(c.feature_kind, c.fps, c.feature_dim) for c in corpora}
    if len(kinds) != 1:
        raise ValueError(f"corpora to mix must share features and fps, got {sorted(kinds)}")
    layers = {c.states_layer for c in corpora} - {None}
    if len(layers) > 1:
        raise ValueError(f"corpora to mix hold states of different encoder layers {sorted(layers)}")
    out = MotionCorpus.__new__(MotionCorpus)
    out.feature_kind, out.fps, out.feature_dim = corpora[0].feature_kind, corpora[0].fps, corpora[0].feature_dim
    out.states_layer = layers.pop() if layers else None
    out.subjects = np.concatenate([c.subjects for c in corpora])
    out.utterances = []
    frames = [sum(len(u["features"]) for u in c.utterances) for c in corpora]
    shares = list(shares) if shares is not None else [f / sum(frames) for f in frames]
    offset = 0
    for k, c in enumerate(corpora):
        for u in c.utterances:
            out.utterances.append(dict(u, subject=u["subject"] + offset, source=k,
                                       weight=shares[k] / max(frames[k], 1)))
        offset += len(c.subjects)
    return out


def speaker_lip_scale(corpus: MotionCorpus, speaker_of=None) -> Dict[str, float]:
    """Per speaker: the RMS of the lip offsets' frame-to-frame spread (the std over frames of
    each lip coordinate, averaged over the coordinates, pooled over the speaker's utterances) —
    how far that face's lips move in the corpus's units. ``speaker_of(u)`` names an utterance's
    speaker (default ``u["speaker"]``)."""
    speaker_of = speaker_of or (lambda u: u["speaker"])
    groups: Dict[str, list] = {}
    for u in corpus.utterances:
        lip = u["lip"].reshape(len(u["lip"]), -1)
        groups.setdefault(speaker_of(u), []).append(lip - lip.mean(0))
    return {s: float(np.sqrt((np.concatenate(v) ** 2).mean(0)).mean()) for s, v in groups.items()}


def normalise_speakers(corpus: MotionCorpus, target: float, speaker_of=None) -> Dict[str, float]:
    """Scale each speaker's lip offsets so that its :func:`speaker_lip_scale` is ``target``
    (targets from different faces and trackers move by different amounts: a speaker with a
    small mouth, far from the camera, or a timid articulator would otherwise teach a damped
    mouth). Returns the factor applied per speaker."""
    speaker_of = speaker_of or (lambda u: u["speaker"])
    scales = speaker_lip_scale(corpus, speaker_of)
    factors = {s: target / max(v, 1e-6) for s, v in scales.items()}
    for u in corpus.utterances:
        u["lip"] = (u["lip"] * factors[speaker_of(u)]).astype(np.float32)
    return factors


def lip_target(choice: str, real_scales: Dict[str, float], synthetic_scale: float) -> float:
    """The lip amplitude (:func:`speaker_lip_scale` units: canonical units) that
    :func:`normalise_speakers` scales every training speaker to.

    choice: ``"synthetic"`` — the synthetic rig's (``synthetic_scale``); ``"real-median"`` — the
    median of ``real_scales`` ({speaker: scale} of the real training speakers); or a number as
    text — that many times the median real speaker's. Raises ValueError for anything else."""
    if not real_scales:
        raise ValueError("no real training speakers to take a lip amplitude from")
    median = float(np.median(list(real_scales.values())))
    if choice == "synthetic":
        return float(synthetic_scale)
    if choice == "real-median":
        return median
    try:
        factor = float(choice)
    except (TypeError, ValueError):
        factor = float("nan")
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"lip target {choice!r} — use synthetic, real-median or a positive number")
    return factor * median
