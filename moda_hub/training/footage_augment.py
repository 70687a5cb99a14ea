"""Augmented copies of prepared real footage for stage 1: the same faces, heard another way.

The real talking faces (GRID, CREMA-D) were recorded in quiet studios by a few voices; the speech
stage 1 meets in use was not. Each copy of a clip

1. plays its audio at a random tape speed ``s`` in ``1 ± speed_jitter`` (tempo and pitch together,
   ``moda_hub.data.augment.resample``: a new voice height and speaking rate),
2. passes it through the recording chain the synthetic corpus uses (``moda_hub.data.augment.augment``:
   room, noise, microphone/channel, level),
3. encodes it again (the pipeline's ``audio_encoder``, whole clip, as at inference), and
4. resamples the clip's motion to the new tempo — frame ``j`` of the copy shows the original at
   frame position ``(j + 0.5) s - 0.5`` (linear interpolation of lips, eyes, head, torso and the
   dense offsets) — so the lips still meet their sounds.

The copies are utterances in :class:`moda_hub.training.corpus.MotionCorpus`'s format (encoder
kinds only: the stored phone stream would be the clean audio's), with the same ``subject`` indices
and ``speaker`` as the clip they come from, ``blink_rate`` scaled by ``s`` and ``speed`` recorded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..data import augment as aug
from ..options import SAMPLE_RATE
from ..speech.speech_states import encoder_features

#: the motion parts a copy resamples in time (``dense`` too where the clip has it)
MOTION_PARTS = ("lip", "eye", "head", "torso")


def retime(rows: np.ndarray, frames: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of per-frame ``rows`` (T, ...) known at video frame numbers ``frames``
    (T,) increasing, at fractional frame ``positions`` (M,) inside ``[frames[0], frames[-1]]``
    -> (M, ...) float32."""
    k = np.clip(np.searchsorted(frames, positions, side="right") - 1, 0, max(len(frames) - 2, 0))
    k1 = np.minimum(k + 1, len(frames) - 1)
    span = np.maximum(frames[k1] - frames[k], 1)
    w = np.clip((positions - frames[k]) / span, 0.0, 1.0).astype(np.float32)
    w = w.reshape((-1,) + (1,) * (rows.ndim - 1))
    a, b = rows[k].astype(np.float32), rows[k1].astype(np.float32)
    return a + (b - a) * w


def augmented_footage(data_dir: str, split: str, copies: int, encoder, seed: int = 0,
                      speed_jitter: float = 0.1, config: Optional[aug.AugmentConfig] = None) -> List[dict]:
    """``copies`` augmented copies of every utterance with audio in ``split`` of a prepared video
    dataset (``moda prepare video``; its shards hold the clip's 16 kHz audio) — see the module doc.

    Args:
        data_dir: the prepared dataset; split: "train" or "val"; copies (int >= 0);
        encoder: the ``audio_encoder`` (``WhisperTinyEncoder``) whose states stage 1 hears;
        seed: the copies' random stream (same seed, same copies); speed_jitter: tape speeds are
        uniform in ``[1 - j, 1 + j]``; config: the recording chain (default ``AugmentConfig()``).
    Returns: list of utterance dicts: "features" (T, d_model) float32 states, "lip" (T, 40, 3),
    "eye" (T, 60, 3), "head" (T, 7), "torso" (T, 2) float32, "dense" (T, 478, 3) float16 where
    every source frame has it, "subject", "id", "speaker", "blink_rate", "speed".
    """
    if copies < 0 or not 0 <= speed_jitter < 0.5:
        raise ValueError(f"copies {copies!r} must be >= 0 and speed_jitter {speed_jitter!r} in [0, 0.5)")
    root = Path(data_dir)
    manifest = json.loads((root / "manifest.json").read_text())
    fps = float(manifest.get("fps", 30))
    by_shard = {}
    for m in manifest["utterances"]:
        if m["split"] == split and m.get("has_audio", True):
            by_shard.setdefault(m["shard"], []).append(m)
    rng = np.random.default_rng([int(seed), 0x5EED])
    out: List[dict] = []
    for shard, metas in sorted(by_shard.items()):
        with np.load(root / f"shard_{shard:04d}.npz") as z:
            d = {k: z[k] for k in z.files}
        wav = d["audio_wav"].astype(np.float32) / 32767.0
        fo, fi = d["frame_offsets"], d["frame_index"].astype(np.float64)
        dense_rows = {int(r): n for n, r in enumerate(d["dense_frames"])} if "dense_frames" in d else {}
        for _ in range(copies):
            speed = aug.speed_for_resample(SAMPLE_RATE, SAMPLE_RATE, float(rng.uniform(1 - speed_jitter, 1 + speed_jitter)))
            heard, _info = aug.augment(aug.resample(wav, SAMPLE_RATE, SAMPLE_RATE, speed), SAMPLE_RATE, rng, config)
            n_frames = int(np.ceil((fi.max() + 1) / speed)) + 1 if len(fi) else 0
            states = encoder_features(heard, fps, encoder, num_frames=n_frames)
            for m in metas:
                i = m["index"]
                a, b = int(fo[i]), int(fo[i + 1])
                frames = fi[a:b]
                # copy frame j shows the original at (j + 0.5) * speed - 0.5
                j0 = int(np.ceil((frames[0] + 0.5) / speed - 0.5))
                j1 = int(np.floor((frames[-1] + 0.5) / speed - 0.5))
                if j1 - j0 + 1 < 2:
                    continue
                j = np.arange(j0, j1 + 1)
                pos = (j + 0.5) * speed - 0.5
                u = {p: retime(d[p][a:b], frames, pos) for p in MOTION_PARTS}
                u["features"] = states[j].astype(np.float32)
                rows = [dense_rows.get(r) for r in range(a, b)]
                if dense_rows and all(r is not None for r in rows):
                    u["dense"] = retime(d["dense"][rows], frames, pos).astype(np.float16)
                u["subject"] = int(d["subject"][i])
                u["id"] = f"{m.get('id', '')}@{speed:.3f}"
                u["speaker"] = str(m.get("speaker") or m.get("video") or "")
                u["blink_rate"] = float(m.get("blink_rate", 0.0)) * speed
                u["speed"] = speed
                out.append(u)
    return out
