"""Training data from real talking videos (``moda prepare video --in VIDEOS --out DATA``).

One folder of videos (HDTF-like: one speaking person per video, any container ffmpeg reads) in;
one dataset folder out that serves both

- stage 3, a person's :class:`~moda_hub.models.neural_renderer.NeuralRenderer` (face crops and
  the landmarks that drive them), and
- stages 1-2 (``moda train --stage moda|composer --data DATA``): the same shard format as the
  synthetic corpus (:mod:`moda_hub.data.synthetic`), so :class:`~moda_hub.training.corpus.MotionCorpus`
  and ``DenseFrames`` read it unchanged.

Per video, in order:

1. frames resampled to 30 fps (ffmpeg's ``fps`` filter) and the audio decoded to 16 kHz mono;
2. MediaPipe FaceMesh (478 points) on every frame in tracking mode (``FaceTracker``);
3. spans without a face are skipped and reported in the manifest (``skipped``), never fatal;
   face spans shorter than ``min_span_s`` are skipped too; what is left, cut into clips of at
   most ``max_clip_s`` seconds, are the *utterances*;
4. head pose per frame (Umeyama on skull points) and canonicalisation;
5. the temporal smoothing of DESIGN.md, per part and per utterance (never across a gap):
   Gaussian, sigma in frames at 30 fps, :data:`SMOOTHING` — head pose, lips, eyes, the rest of
   the face and the torso each with their own sigma; the smoothed landmarks are what is stored
   and trained on (``landmarks``), the raw tracker output is kept beside them (``landmarks_raw``);
6. torso anchors: the shift of the upper body below the chin relative to the utterance's first
   frame (phase correlation of that image region), canonical units;
7. speech features (``moda_hub.speech.features``, "logmel+phones+opening") of the 16 kHz audio;
8. the face crop of every frame for the renderer: ``crop_size`` square, in the box of the
   utterance's first frame, exactly as the renderers crop a portrait (that frame is the
   utterance's portrait: the renderer is trained to animate it, as it will be at inference).

Dataset format (``DATA``, ``format`` "moda-video/1")
---------------------------------------------------
``manifest.json``: ``format``, ``fps`` (30), ``sample_rate`` (16000), ``crop_size``,
``crop_scale``, ``crop_shift_y``, ``smoothing`` (sigmas), ``splits`` (per split: videos,
utterances, frames, seconds), ``videos`` (one record per video: ``name``, ``source``, ``shard``,
``split``, ``frames`` (30 fps frames decoded), ``face_frames``, ``seconds``, ``has_audio``,
``utterances``, ``skipped``), ``skipped`` (every span left out: ``video``, ``start_s``,
``end_s``, ``frames``, ``reason``), ``failed`` (videos that could not be read, with the error),
``utterances`` (``id``, ``video``, ``shard``, ``index``, ``split``, ``subject``, ``frames``,
``seconds``, ``start_s``, ``blink_rate``) and ``shards``.

``shard_XXXX.npz`` (one per video; rows = its face frames, utterances concatenated)
    ``frame_offsets`` (U + 1,), ``utt_ids`` (U,), ``subject`` (U,) int32 (row of ``subjects.npz``),
    ``frame_index`` (F,) int64 (30 fps frame number in the video), ``features`` (F, 80) f16,
    ``phones`` (F, 13) f16, ``lip`` (F, 40, 3) f16, ``eye`` (F, 60, 3) f16 (offsets from the
    utterance's first-frame canonical mesh, as the pipeline offsets from the portrait's),
    ``head`` (F, 7) f32 (relative to the utterance's first frame, ``moda_hub.face.pose.head_offset``),
    ``torso`` (F, 2) f32 canonical units, ``dense`` (F, 478, 3) f16 with ``dense_frames`` (F,),
    ``landmarks`` (F, 478, 3) f32 smoothed full-frame pixels, ``landmarks_raw`` the tracker's,
    ``pose`` (F, 7) smoothed poses, ``boxes`` (U, 4) float64 ``[x0, y0, side, 0]`` each utterance's
    crop (full-frame pixels), ``image_hw`` (2,), ``reference_frames`` (U, H, W, 3) uint8 each
    utterance's first frame (its portrait),
    ``subject_meshes`` (U, 478, 3), ``audio_wav`` (N,) int16 the 16 kHz audio,
    ``states`` (F, 384) f16 the ``audio_encoder``'s Whisper states of that audio at the frames
    (``moda_hub.speech.speech_states``; :func:`add_encoder_states` adds them to an older dataset).
``frames_XXXX.npy`` (F, crop_size, crop_size, 3) uint8 face crops, rows as the shard's
    (``np.load(..., mmap_mode="r")``).
``subjects.npz``: ``meshes`` (S, 478, 3) canonical mesh of each utterance's first frame.
``records/<name>.json``: per-video records; a video with a record is done (resume skips it).
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import AudioDecodeError, InvalidParameterError
from ..face import topology as topo
from ..face.landmarks import FaceTracker
from ..face.pose import estimate_pose, from_canonical, head_offset, to_canonical
from ..motion.blinks import count_blinks
from ..options import SAMPLE_RATE
from ..render.crop import crop_texture, face_crop_box
from ..speech.audio import load_audio
from ..speech.features import feature_dim, speech_features
from ..speech.phones import PHONE_STREAM_COLUMNS
from ..speech.speech_states import default_encoder, encoder_features
from ..video import iter_video_frames, read_video_info

FORMAT = "moda-video/1"
FPS = 30
VIDEO_EXTENSIONS = (".mp4", ".mpg", ".mpeg", ".mov", ".mkv", ".webm", ".avi", ".m4v")

#: Temporal smoothing (Gaussian sigma in 30 fps frames) per part: MediaPipe's tracking jitter
#: is mostly in the pose and the face outline; lips and lids move fast, so they get the least.
SMOOTHING = {"head": 1.5, "lip": 0.7, "eye": 0.7, "face": 1.5, "torso": 2.0}

def _part_masks():
    lip = np.zeros(topo.NUM_LANDMARKS, bool)
    lip[topo.LIPS] = True
    lip[topo.LIPS_INNER] = True
    lip[topo.LIPS_OUTER] = True
    eye = np.zeros(topo.NUM_LANDMARKS, bool)
    eye[topo.EYES] = True
    eye[topo.LEFT_EYE_LOOP] = True
    eye[topo.RIGHT_EYE_LOOP] = True
    eye[[topo.LEFT_IRIS_CENTER, topo.RIGHT_IRIS_CENTER]] = True
    return lip, eye & ~lip


def list_videos(inputs) -> List[str]:
    """Video files named by ``inputs``: a folder (its video files, sorted, recursively), a file,
    or a list of either."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found += sorted(p for p in glob.glob(os.path.join(item, "**", "*"), recursive=True)
                            if p.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(p))
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise InvalidParameterError(f"{item!r} is neither a video file nor a folder — pass a folder of "
                                        "talking videos (mp4, mpg, mov, mkv, webm, avi)")
    if not found:
        raise InvalidParameterError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {inputs!r}")
    return found


def smooth_track(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time (axis 0) of a (T, ...) track, sigma in frames, edges held."""
    from scipy.ndimage import gaussian_filter1d

    x = np.asarray(x, np.float64)
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    return gaussian_filter1d(x, sigma, axis=0, mode="nearest")


def smooth_landmarks(landmarks_px: np.ndarray, smoothing: Dict[str, float] = SMOOTHING):
    """Per-part temporal smoothing of one utterance's tracked meshes.

    The head pose (angles, translation, log scale) and the canonical expression are smoothed
    separately — lips, eyes (lids, brows, irises), the rest of the face — then recomposed.

    Args:
        landmarks_px ((T, 478, 3) float): tracked meshes, image pixels, consecutive frames.
        smoothing: sigmas in frames (keys of :data:`SMOOTHING`).

    Returns:
        (landmarks (T, 478, 3) float32 px, pose (T, 7) float32, canonical (T, 478, 3) float32).
    """

    lm = np.asarray(landmarks_px, np.float64)
    pose = estimate_pose(lm).astype(np.float64)
    canon = to_canonical(lm, pose).astype(np.float64)
    p = pose.copy()
    p[:, 6] = np.log(p[:, 6])
    p = smooth_track(p, smoothing["head"])
    p[:, 6] = np.exp(p[:, 6])
    lip, eye = _part_masks()
    rest = ~(lip | eye)
    c = canon.copy()
    c[:, lip] = smooth_track(canon[:, lip], smoothing["lip"])
    c[:, eye] = smooth_track(canon[:, eye], smoothing["eye"])
    c[:, rest] = smooth_track(canon[:, rest], smoothing["face"])
    return from_canonical(c, p).astype(np.float32), p.astype(np.float32), c.astype(np.float32)


def torso_shift(frames_gray: Sequence[np.ndarray], ref_landmarks_px: np.ndarray) -> Optional[np.ndarray]:
    """Upper-body shift of each frame relative to the first, (T, 2) float32 pixels (x, y), from
    phase correlation of the region below the chin (face-oval width x 2.2, from 0.05 to 1.0 face
    heights below the chin, as seen in the first frame); None when that region is not in the frame."""
    import cv2

    lm = np.asarray(ref_landmarks_px)[:468, :2]
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    fw, fh = x1 - x0, y1 - y0
    chin = float(np.asarray(ref_landmarks_px)[topo.CHIN, 1])
    H, W = frames_gray[0].shape
    rx0, rx1 = int(max(0, x0 - 0.6 * fw)), int(min(W, x1 + 0.6 * fw))
    ry0, ry1 = int(max(0, chin + 0.05 * fh)), int(min(H, chin + 1.0 * fh))
    if rx1 - rx0 < 32 or ry1 - ry0 < 12:
        return None
    win = cv2.createHanningWindow((rx1 - rx0, ry1 - ry0), cv2.CV_32F)
    ref = frames_gray[0][ry0:ry1, rx0:rx1].astype(np.float32)
    out = np.zeros((len(frames_gray), 2), np.float32)
    for t in range(1, len(frames_gray)):
        (dx, dy), _ = cv2.phaseCorrelate(ref, frames_gray[t][ry0:ry1, rx0:rx1].astype(np.float32), win)
        out[t] = (dx, dy)
    return out


def _face_spans(found: np.ndarray, min_len: int):
    """Runs of True in ``found`` (T,): (kept [(a, b)], dropped [(a, b, reason)])."""
    kept, dropped = [], []
    t, T = 0, len(found)
    while t < T:
        u = t
        while u < T and found[u] == found[t]:
            u += 1
        if not found[t]:
            dropped.append((t, u, "no face"))
        elif u - t < min_len:
            dropped.append((t, u, f"face span shorter than {min_len} frames"))
        else:
            kept.append((t, u))
        t = u
    return kept, dropped


def _split_spans(spans, max_len: int):
    """Cut spans longer than ``max_len`` frames into near-equal parts of at most ``max_len``."""
    out = []
    for a, b in spans:
        n = int(np.ceil((b - a) / max_len))
        edges = np.linspace(a, b, n + 1).round().astype(int)
        out += [(int(edges[i]), int(edges[i + 1])) for i in range(n)]
    return out


def prepare_video(path: str, out_dir: str, shard: int, subject_start: int, name: str,
                  crop_size: int = 256, crop_scale: float = 2.2, crop_shift_y: float = 0.05,
                  min_span_s: float = 1.0, max_clip_s: float = 10.0, smoothing: Dict[str, float] = SMOOTHING,
                  features: str = "logmel+phones+opening", frame_bar=None) -> dict:
    """Process one video into ``shard_{shard:04d}.npz`` and ``frames_{shard:04d}.npy``; returns
    its record (see the module docstring). Raises only when the video cannot be read at all."""
    import cv2


    # 1-2. frames at 30 fps, tracked; faceless frames are None
    landmarks, grays, frames = [], [], []
    with FaceTracker() as tracker:
        for frame in iter_video_frames(path, fps=FPS):
            landmarks.append(tracker.process(frame))
            grays.append(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
            frames.append(frame)
            if frame_bar is not None:
                frame_bar.update(1)
    T = len(frames)
    if T == 0:
        raise InvalidParameterError(f"no frames could be decoded from {path!r}")
    H, W = frames[0].shape[:2]
    try:
        wav = load_audio(path, sample_rate=SAMPLE_RATE)
        has_audio = True
    except AudioDecodeError:
        wav, has_audio = None, False
    # 3. face spans
    found = np.array([lm is not None for lm in landmarks])
    min_len = max(2, int(round(min_span_s * FPS)))
    spans, dropped = _face_spans(found, min_len)
    spans = _split_spans(spans, max(min_len, int(round(max_clip_s * FPS))))
    skipped = [dict(video=name, start_s=round(a / FPS, 3), end_s=round(b / FPS, 3), frames=b - a, reason=r)
               for a, b, r in dropped]
    # 7. features over the whole audio, one row per 30 fps frame
    if has_audio:
        feats = speech_features(wav, SAMPLE_RATE, FPS, kind=features)
        if len(feats) < T:
            feats = np.concatenate([feats, np.repeat(feats[-1:], T - len(feats), 0)])
        feats = feats[:T]
    else:
        feats = np.zeros((T, feature_dim(features)), np.float32)
    # 4-6. per utterance: smoothing, pose, canonical offsets, torso
    rows: Dict[str, list] = {k: [] for k in ("frame_index", "lip", "eye", "head", "torso", "dense", "landmarks",
                                             "landmarks_raw", "pose")}
    subjects, utts, offsets, boxes, refs, crops = [], [], [0], [], [], []
    for j, (a, b) in enumerate(spans):
        raw = np.stack(landmarks[a:b]).astype(np.float32)
        lm, pose, canon = smooth_landmarks(raw, smoothing)
        ref_canon, ref_pose = canon[0], pose[0]
        shift = torso_shift(grays[a:b], lm[0])
        torso = np.zeros((b - a, 2), np.float32) if shift is None else \
            (smooth_track(shift, smoothing["torso"]) / ref_pose[6]).astype(np.float32)
        rows["frame_index"].append(np.arange(a, b))
        rows["lip"].append(canon[:, topo.LIPS] - ref_canon[topo.LIPS])
        rows["eye"].append(canon[:, topo.EYES] - ref_canon[topo.EYES])
        rows["head"].append(head_offset(ref_pose, pose))
        rows["torso"].append(torso)
        rows["dense"].append(canon - ref_canon)
        rows["landmarks"].append(lm)
        rows["landmarks_raw"].append(raw)
        rows["pose"].append(pose)
        subjects.append(ref_canon)
        offsets.append(offsets[-1] + b - a)
        # 8. face crops in the box of the utterance's first frame (the portrait of this clip)
        box = face_crop_box(lm[0], (H, W), crop_size, crop_scale, crop_shift_y)
        boxes.append([box.x0, box.y0, crop_size / box.scale, 0.0])
        refs.append(frames[a])
        crops.append(np.stack([crop_texture(frames[t], box, 0) for t in range(a, b)]))
        blink_rate = count_blinks(topo.eye_openness(lm), FPS) * 60.0 * FPS / (b - a)
        utts.append(dict(id=f"{name}_{j:02d}", video=name, shard=shard, index=j, subject=subject_start + j,
                         frames=b - a, seconds=round((b - a) / FPS, 3), start_s=round(a / FPS, 3),
                         blink_rate=round(float(blink_rate), 3), has_audio=has_audio))
    F = offsets[-1]
    cat = {k: (np.concatenate(v) if v else np.zeros((0,), np.float32)) for k, v in rows.items()}
    crops = np.concatenate(crops) if crops else np.zeros((0, crop_size, crop_size, 3), np.uint8)
    tmp = os.path.join(out_dir, f"frames_{shard:04d}.tmp.npy")
    np.save(tmp, crops)
    os.replace(tmp, os.path.join(out_dir, f"frames_{shard:04d}.npy"))
    ph = feats[:, 80:] if feats.shape[1] > 80 else np.zeros((T, len(PHONE_STREAM_COLUMNS)), np.float32)
    fi = cat["frame_index"].astype(np.int64) if F else np.zeros(0, np.int64)
    arrays = dict(
        frame_offsets=np.asarray(offsets, np.int64), utt_ids=np.array([u["id"] for u in utts]),
        subject=np.array([u["subject"] for u in utts], np.int32), frame_index=fi,
        features=feats[fi, :80].astype(np.float16), phones=ph[fi].astype(np.float16),
        lip=cat["lip"].astype(np.float16).reshape(F, 40, 3), eye=cat["eye"].astype(np.float16).reshape(F, 60, 3),
        head=cat["head"].astype(np.float32).reshape(F, 7), torso=cat["torso"].astype(np.float32).reshape(F, 2),
        dense=cat["dense"].astype(np.float16).reshape(F, 478, 3), dense_frames=np.arange(F, dtype=np.int64),
        landmarks=cat["landmarks"].astype(np.float32).reshape(F, 478, 3),
        landmarks_raw=cat["landmarks_raw"].astype(np.float32).reshape(F, 478, 3),
        pose=cat["pose"].astype(np.float32).reshape(F, 7),
        subject_meshes=np.asarray(subjects, np.float32).reshape(len(subjects), 478, 3),
        boxes=np.asarray(boxes, np.float64).reshape(len(utts), 4), image_hw=np.array([H, W], np.int64),
        reference_frames=np.asarray(refs, np.uint8).reshape(len(utts), H, W, 3),
        audio_wav=(np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16) if has_audio else np.zeros(0, np.int16)))
    tmp = os.path.join(out_dir, f"shard_{shard:04d}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(out_dir, f"shard_{shard:04d}.npz"))
    return dict(name=name, source=os.path.abspath(path), source_size=os.path.getsize(path),
                source_mtime=os.path.getmtime(path), shard=shard, subject_start=subject_start,
                frames=T, face_frames=int(F), seconds=round(T / FPS, 3), has_audio=has_audio,
                width=W, height=H, utterances=utts, skipped=skipped)


def _split(names: List[str], val_fraction: float, seed: int, val_names: Optional[Iterable[str]]) -> Dict[str, str]:
    if val_names is not None:
        val = set(val_names)
    else:
        n_val = int(round(val_fraction * len(names)))
        if val_fraction > 0 and len(names) >= 2:
            n_val = min(max(n_val, 1), len(names) - 1)
        order = np.random.default_rng(seed).permutation(len(names))
        val = {names[i] for i in order[:n_val]}
    return {n: ("val" if n in val else "train") for n in names}


def prepare_videos(inputs, out_dir: str, crop_size: int = 256, val_fraction: float = 0.2, seed: int = 0,
                   val_names: Optional[Iterable[str]] = None, min_span_s: float = 1.0, max_clip_s: float = 10.0,
                   smoothing: Optional[Dict[str, float]] = None, progress: bool = True, log=None) -> dict:
    """Prepare a folder of talking videos into a dataset folder (resumable).

    Args:
        inputs: a folder of videos, a video file, or a list of them.
        out_dir: the dataset folder (created). Videos already done there (a record in
            ``records/`` whose source file has the same size and time) are skipped, so an
            interrupted run continues where it stopped.
        crop_size (int, default 256): side of the stored face crops, pixels.
        val_fraction (float, default 0.2): share of videos in the validation split (chosen with
            ``seed``, by video, so no validation frame comes from a training video);
            ``val_names`` names them explicitly instead (video file stems).
        min_span_s (float, default 1.0): face spans shorter than this are skipped (reported).
        max_clip_s (float, default 10.0): longer face spans are cut into clips of at most this.
        smoothing: per-part sigmas, default :data:`SMOOTHING`.
        progress (bool): a progress bar over frames (stderr).

    Returns:
        dict: the manifest (also ``out_dir/manifest.json``).
    """
    from tqdm.auto import tqdm

    smoothing = dict(SMOOTHING, **(smoothing or {}))
    if crop_size < 64:
        raise InvalidParameterError(f"crop_size={crop_size} — use 128, 256 or 512 pixels")
    paths = list_videos(inputs)
    names, seen = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    rec_dir = os.path.join(out_dir, "records")
    os.makedirs(rec_dir, exist_ok=True)
    say = log or (lambda msg: print(msg, flush=True))
    records, failed = {}, []
    for f in glob.glob(os.path.join(rec_dir, "*.json")):
        with open(f) as fh:
            r = json.load(fh)
        records[r["name"]] = r
    todo = []
    for p, n in zip(paths, names):
        r = records.get(n)
        if r and r.get("source_size") == os.path.getsize(p) and abs(r.get("source_mtime", 0) - os.path.getmtime(p)) < 1e-3 \
                and r.get("crop_size", crop_size) == crop_size and os.path.exists(os.path.join(out_dir, f"shard_{r['shard']:04d}.npz")):
            continue
        todo.append((p, n))
    if len(todo) < len(paths):
        say(f"prepare: {len(paths) - len(todo)} of {len(paths)} videos already done in {out_dir}, resuming")

    total = 0
    for p, _ in todo:
        try:
            total += int(round((read_video_info(p)["duration"] or 0) * FPS))
        except Exception:  # noqa: BLE001 - unreadable files fail below, with their error
            pass
    t0 = time.time()
    bar = tqdm(total=total, unit="frame", desc="prepare", disable=not progress or not todo)
    next_shard = max([r["shard"] for r in records.values()] + [-1]) + 1
    next_subject = max([r["subject_start"] + len(r["utterances"]) for r in records.values()] + [0])
    for p, n in todo:
        bar.set_postfix_str(n)
        old = records.get(n)
        shard = old["shard"] if old else next_shard
        subject_start = old["subject_start"] if old and len(old["utterances"]) else next_subject
        try:
            rec = prepare_video(p, out_dir, shard, subject_start, n, crop_size=crop_size,
                                min_span_s=min_span_s, max_clip_s=max_clip_s, smoothing=smoothing, frame_bar=bar)
        except Exception as err:  # noqa: BLE001 - one bad video must not end the run
            failed.append(dict(video=n, source=os.path.abspath(p), error=f"{type(err).__name__}: {err}"))
            say(f"prepare: {n}: skipped ({type(err).__name__}: {err})")
            continue
        rec["crop_size"] = crop_size
        if rec["skipped"]:
            say(f"prepare: {n}: skipped " + ", ".join(f"{s['start_s']:.2f}-{s['end_s']:.2f} s ({s['reason']})"
                                                      for s in rec["skipped"]))
        tmp = os.path.join(rec_dir, f"{n}.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(rec, fh)
        os.replace(tmp, os.path.join(rec_dir, f"{n}.json"))
        records[n] = rec
        next_shard = max(next_shard, shard + 1)
        next_subject = max(next_subject, subject_start + len(rec["utterances"]))
    bar.close()
    if any(r["utterances"] for r in records.values()):
        add_encoder_states(out_dir)           # what a stage 1 hearing the audio encoder trains on
    manifest = write_manifest(out_dir, [records[n] for n in names if n in records], failed, crop_size,
                              val_fraction, seed, val_names, smoothing)
    say(f"prepare: {len(manifest['videos'])} videos, {len(manifest['utterances'])} utterances, "
        f"{sum(v['face_frames'] for v in manifest['videos'])} face frames, {len(manifest['skipped'])} spans "
        f"skipped, {len(failed)} failed, in {time.time() - t0:.0f} s -> {out_dir}")
    return manifest


def write_manifest(out_dir: str, records: List[dict], failed: List[dict], crop_size: int, val_fraction: float,
                   seed: int, val_names, smoothing) -> dict:
    """Split the videos, gather ``subjects.npz`` and write ``manifest.json`` (atomically)."""
    split = _split([r["name"] for r in records], val_fraction, seed, val_names)
    n_subjects = max([r["subject_start"] + len(r["utterances"]) for r in records] + [0])
    meshes = np.zeros((n_subjects, 478, 3), np.float32)
    utts, videos, skipped = [], [], []
    for r in records:
        r = dict(r, split=split[r["name"]])
        if r["utterances"]:
            with np.load(os.path.join(out_dir, f"shard_{r['shard']:04d}.npz")) as z:
                meshes[r["subject_start"]:r["subject_start"] + len(r["utterances"])] = z["subject_meshes"]
        for u in r["utterances"]:
            utts.append(dict(u, split=r["split"]))
        skipped += r["skipped"]
        videos.append({k: v for k, v in r.items() if k != "utterances"} | {"utterances": len(r["utterances"])})
    tmp = os.path.join(out_dir, "subjects.tmp.npz")
    np.savez(tmp, meshes=meshes, names=np.array([u["id"] for u in sorted(utts, key=lambda u: u["subject"])]))
    os.replace(tmp, os.path.join(out_dir, "subjects.npz"))
    splits = {}
    for s in ("train", "val"):
        vs = [v for v in videos if v["split"] == s]
        us = [u for u in utts if u["split"] == s]
        splits[s] = dict(videos=len(vs), utterances=len(us), frames=int(sum(u["frames"] for u in us)),
                         seconds=round(sum(u["seconds"] for u in us), 2))
    manifest = dict(format=FORMAT, fps=FPS, sample_rate=SAMPLE_RATE, crop_size=crop_size, crop_scale=2.2,
                    crop_shift_y=0.05, features="logmel (80, features) + pocketsphinx viseme classes (13, phones)",
                    smoothing=smoothing, seed=seed, val_fraction=val_fraction, splits=splits, videos=videos,
                    skipped=skipped, failed=failed, utterances=utts,
                    shards=[dict(file=f"shard_{v['shard']:04d}.npz", frames_file=f"frames_{v['shard']:04d}.npy",
                                 video=v["name"], frames=v["face_frames"]) for v in videos],
                    hours=round(sum(u["seconds"] for u in utts) / 3600, 4))
    tmp = os.path.join(out_dir, "manifest.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1)
    os.replace(tmp, os.path.join(out_dir, "manifest.json"))
    return manifest


def add_encoder_states(data_dir: str, encoder=None) -> int:
    """Add ``states`` (the ``audio_encoder``'s Whisper states of each video's audio, one row per
    stored frame) to the shards of a prepared dataset that lack them, or whose states come from
    another encoder layer (``states_layer``, stored beside them; none stored: the last layer);
    returns how many shards were written. The states are computed over the whole audio, as at
    inference, then indexed by ``frame_index``."""

    encoder = encoder if encoder is not None else default_encoder()
    layer = encoder.states_layer()
    written = 0
    for path in sorted(glob.glob(os.path.join(data_dir, "shard_*.npz"))):
        if path.endswith(".tmp.npz"):
            continue
        with np.load(path) as z:
            stored = int(z["states_layer"]) if "states_layer" in z.files else encoder.config.encoder_layers
            if "states" in z.files and stored == layer:
                continue
            d = {k: z[k] for k in z.files}
        wav = d["audio_wav"].astype(np.float32) / 32767.0
        fi = d["frame_index"].astype(np.int64)
        n = max(int(fi.max()) + 1 if len(fi) else 0, int(round(len(wav) / SAMPLE_RATE * FPS)))
        if len(wav):
            states = encoder_features(wav, FPS, encoder, num_frames=n)
        else:
            states = np.zeros((n, encoder.config.d_model), np.float32)
        d["states"] = states[fi].astype(np.float16)
        d["states_layer"] = np.int64(layer)
        tmp = path[:-len(".npz")] + ".tmp.npz"
        np.savez(tmp, **d)
        os.replace(tmp, path)
        written += 1
    return written


def load_manifest(data_dir: str) -> dict:
    """The manifest of a prepared video dataset; a clear error when ``data_dir`` is not one."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.isfile(path):
        raise InvalidParameterError(f"no dataset at {data_dir!r} (manifest.json missing) — make one with "
                                    "`moda prepare video --in VIDEOS --out DATA`")
    with open(path) as fh:
        manifest = json.load(fh)
    if manifest.get("format") != FORMAT:
        raise InvalidParameterError(f"{data_dir!r} is a {manifest.get('format')!r} dataset, not a prepared video "
                                    f"dataset ({FORMAT}) — make one with `moda prepare video`")
    return manifest
