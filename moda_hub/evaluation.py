"""Evaluation: does the generated mouth follow real speech? Plus one-to-many and blink checks.

Measures (all on landmarks, no rendering):

1. **Real-speech lip-sync** on ``<eval_dir>/clips/*.mp4`` (real talking faces with their own
   audio). Ground truth: :func:`moda_hub.face.topology.mouth_aperture` (inner-lip gap 13-14 over
   the outer-eye-corner distance 33-263) on MediaPipe landmarks tracked through the real frames
   (frames without a face are NaN and left out). Prediction: the same measure on the landmarks
   the pipeline generates from the clip's *first frame* and the clip's audio at 25 fps.
   Scores per clip: Pearson r at lag 0, best r within +-``max_lag`` frames (and that lag), and
   both again against the ground truth lightly smoothed (Gaussian, sigma 1 frame), and how far the
   generated mouth moves next to the real one (:func:`movement_depth`: r ignores scale). Two naive
   baselines run next to the model, needing no model: the audio RMS envelope
   (``moda_hub.speech.audio.rms_envelope``) and recognised phones through a plain viseme-opening table
   (:func:`moda_hub.speech.phones.phone_opening_curve`).
2. **Held-out synthetic utterances** (unseen voices) from a synthetic corpus folder
   (``moda_hub.data.synthetic``): mean L2 error of stage 1 over the 40 lip points, canonical units
   (outer-eye-corner distance = 1, so x100 is % of the inter-ocular distance).
3. **One-to-many**: one portrait + one speech, two seeds: the mouth-aperture curves must agree
   (Pearson r >= 0.95) while the head moves differently (mean |pose difference| >= 1 degree).
4. **Blinks per minute** on generated landmarks (eye openness + ``motion.blinks.count_blinks``).

Lag convention: ``lag = +L`` means the prediction is *late* by ``L`` frames
(``truth[t]`` is compared with ``pred[t + L]``).

Everything needing ``<eval_dir>`` (``../shared/eval/dev``) or trained weights is skipped, with
the reason recorded, when it is absent. Ground-truth apertures are cached per clip under
``<cache_dir>`` (default ``outputs/eval_cache``) so reruns are fast.

Example:
    >>> from moda_hub.evaluation import evaluate                    # doctest: +SKIP
    >>> report = evaluate("pretrained/moda-base", out="outputs/eval.json")
    >>> report["real_lipsync"]["mean"]["phones"]["r_best"]          # about 0.38 on dev
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from moda_hub.errors import ModaError
from moda_hub.face.landmarks import FaceTracker
from moda_hub.face.topology import eye_openness, mouth_aperture
from moda_hub.motion.blinks import count_blinks
from moda_hub.options import DEFAULT_MODEL, SAMPLE_RATE
from moda_hub.pipeline import ModaPipeline
from moda_hub.speech.audio import load_audio, rms_envelope
from moda_hub.speech.features import ENCODER_KINDS, PHONE_COLUMNS
from moda_hub.speech.phones import phone_opening_curve, recognize_phones
from moda_hub.video import iter_video_frames, read_video_info

__all__ = ["EVAL_FPS", "pearson", "pearson_best_lag", "smooth_nan", "lipsync_scores",
           "real_mouth_aperture", "movement_depth", "load_pipeline", "evaluate_real_clips", "evaluate_synthetic",
           "evaluate_one_to_many", "evaluate_blinks", "evaluate", "format_table", "main"]

EVAL_FPS = 25                 # frames per second of the eval clips and of generation here
GT_CACHE_VERSION = 1          # bump when the ground-truth measure changes
MIN_R_ONE_TO_MANY = 0.95      # same audio, two seeds: lip curves must agree this well
MIN_POSE_DIFF_DEG = 1.0       # ... while the head moves at least this differently on average


# ----------------------------------------------------------------------------- statistics

def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two (T,) series over the frames where both are finite.

    NaN when fewer than 3 such frames remain or either series is constant there."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 1e-12 else float("nan")


def pearson_best_lag(truth: np.ndarray, pred: np.ndarray, max_lag: int = 3) -> Tuple[float, int]:
    """Best Pearson r of ``truth[t]`` against ``pred[t + lag]`` over ``|lag| <= max_lag``.

    Returns ``(r, lag)``; ``lag > 0`` means the prediction is late by ``lag`` frames. Series of
    different lengths are compared over their common start. ``(nan, 0)`` if no lag gives an r.
    """
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    n = min(len(truth), len(pred))
    truth, pred = truth[:n], pred[:n]
    best, best_lag = float("nan"), 0
    for lag in sorted(range(-max_lag, max_lag + 1), key=abs):      # ties go to the smaller |lag|
        if lag >= 0:
            r = pearson(truth[:n - lag], pred[lag:])
        else:
            r = pearson(truth[-lag:], pred[:n + lag])
        if np.isfinite(r) and not (r <= best):
            best, best_lag = r, lag
    return best, best_lag


def smooth_nan(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (sigma in frames) of a (T,) series that ignores NaNs (normalised
    convolution); NaN frames stay NaN."""
    from scipy.ndimage import gaussian_filter1d

    x = np.asarray(x, np.float64)
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    ok = np.isfinite(x)
    num = gaussian_filter1d(np.where(ok, x, 0.0), sigma, mode="nearest")
    den = gaussian_filter1d(ok.astype(np.float64), sigma, mode="nearest")
    out = num / np.maximum(den, 1e-12)
    out[~ok] = np.nan
    return out


def lipsync_scores(truth: np.ndarray, pred: np.ndarray, max_lag: int = 3,
                   smooth_sigma: float = 1.0) -> Dict[str, float]:
    """Scores of a predicted (T,) mouth-aperture curve against the real one.

    Returns ``r0`` (lag 0), ``r_best`` and ``lag`` (best within +-``max_lag``), and ``r0_smooth``,
    ``r_best_smooth`` against ``truth`` smoothed with a Gaussian of ``smooth_sigma`` frames."""
    r0 = pearson(truth, pred)
    rb, lag = pearson_best_lag(truth, pred, max_lag)
    ts = smooth_nan(truth, smooth_sigma)
    rbs, lag_s = pearson_best_lag(ts, pred, max_lag)
    return {"r0": r0, "r_best": rb, "lag": int(lag), "r0_smooth": pearson(ts, pred),
            "r_best_smooth": rbs, "lag_smooth": int(lag_s)}


# ----------------------------------------------------------------------------- ground truth

def real_mouth_aperture(clip_path: str, cache_dir: Optional[str] = "outputs/eval_cache"
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Mouth aperture of the real face through a video, frame by frame at 25 fps.

    MediaPipe FaceMesh in tracking mode (``moda_hub.face.landmarks.FaceTracker``) on every
    frame; :func:`~moda_hub.face.topology.mouth_aperture` of the landmarks.

    Args:
        clip_path: the video file.
        cache_dir: folder for the per-clip cache (keyed by file size and mtime); None = no cache.

    Returns:
        ``(aperture (T,) float64, NaN where no face; first_frame (H, W, 3) uint8 RGB)``.
    """
    key = _file_key(clip_path)
    cache = None
    if cache_dir:
        stem = os.path.splitext(os.path.basename(clip_path))[0]
        cache = os.path.join(cache_dir, f"gt_{stem}.npz")
        if os.path.exists(cache):
            try:
                with np.load(cache) as z:
                    if str(z["key"]) == key:
                        return z["aperture"].astype(np.float64), z["first_frame"]
            except (OSError, KeyError, ValueError):
                pass                                              # stale or broken: recompute

    fps = read_video_info(clip_path)["fps"]
    resample = None if fps and abs(fps - EVAL_FPS) < 1e-3 else EVAL_FPS
    apertures, first = [], None
    with FaceTracker() as tracker:
        for frame in iter_video_frames(clip_path, fps=resample):
            if first is None:
                first = np.ascontiguousarray(frame)
            lm = tracker.process(frame)
            apertures.append(float(mouth_aperture(lm)) if lm is not None else float("nan"))
    if first is None:
        raise ValueError(f"no frames could be read from '{clip_path}'")
    aperture = np.asarray(apertures, np.float64)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez_compressed(tmp, key=key, aperture=aperture, first_frame=first)
        os.replace(tmp, cache)
    return aperture, first


# ----------------------------------------------------------------------------- model

def load_pipeline(model_dir: Optional[str]):
    """``(pipe, None)`` when ``model_dir`` holds a loadable pipeline, else ``(None, reason)``.

    Missing or broken weights are a skip with the reason, never a result (``from_pretrained``
    refuses to fill in random weights; it alone decides "folder or Hub id")."""
    if not model_dir:
        return None, "no model_dir given"
    try:
        pipe = ModaPipeline.from_pretrained(model_dir)
    except ModaError as exc:
        return None, f"no trained weights: {exc}"
    except Exception as exc:  # noqa: BLE001 - any load failure makes the model part a skip
        return None, f"could not load '{model_dir}': {type(exc).__name__}: {exc}"
    return pipe, None


def _generate(pipe, image, audio, seed: int, fps: int = EVAL_FPS):
    """Landmarks-only generation: ``ModaPipelineOutput`` (landmarks (T, 478, 3) px, motion)."""
    import torch

    return pipe(image=image, audio=audio, fps=fps, output_type="landmarks",
                generator=torch.Generator().manual_seed(int(seed)))


# ----------------------------------------------------------------------------- sections

def evaluate_real_clips(eval_dir: str, pipe=None, cache_dir: Optional[str] = "outputs/eval_cache",
                        seed: int = 0, max_lag: int = 3, smooth_sigma: float = 1.0,
                        phone_smooth_frames: float = 1.0, clips: Optional[Sequence[str]] = None,
                        log=print) -> Dict:
    """Lip-sync on real talking-face clips (section 1 of the module docstring).

    Args:
        eval_dir: folder with ``clips/*.mp4``.
        pipe: a loaded ``ModaPipeline``, or None to run the baselines only.
        cache_dir: ground-truth cache folder (see :func:`real_mouth_aperture`).
        seed: generator seed of the model's prediction.
        max_lag: best-lag search range, frames.
        smooth_sigma: sigma (frames) of the smoothed ground truth.
        phone_smooth_frames: sigma (frames) of the phone baseline's smoothing.
        clips: explicit clip paths (default: every ``clips/*.mp4``).

    Returns:
        dict: ``clips`` (one dict per clip: name, seconds, frames, face_frames, and for each
        method in ``rms``, ``phones``, ``model`` the :func:`lipsync_scores`), ``mean`` (per
        method, means over clips), ``model_beats_both`` (clips where the model's best-lag r
        beats both baselines'), ``phones_rtf`` (phone recognition wall time / audio time).
    """

    paths = list(clips) if clips is not None else sorted(glob.glob(os.path.join(eval_dir, "clips", "*.mp4")))
    if not paths:
        return {"skipped": f"no clips in '{os.path.join(eval_dir, 'clips')}'"}
    rows, phone_time, audio_time = [], 0.0, 0.0
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        truth, first = real_mouth_aperture(path, cache_dir)
        wav = load_audio(path, sample_rate=SAMPLE_RATE)
        seconds = len(wav) / SAMPLE_RATE
        preds = {"rms": np.asarray(rms_envelope(wav, SAMPLE_RATE, EVAL_FPS), np.float64).reshape(-1)}
        t0 = time.perf_counter()
        phones = recognize_phones(wav, SAMPLE_RATE)
        phone_time += time.perf_counter() - t0
        audio_time += seconds
        preds["phones"] = phone_opening_curve(wav, SAMPLE_RATE, EVAL_FPS, phone_smooth_frames,
                                              phones=phones).astype(np.float64)
        row = {"clip": name, "seconds": round(seconds, 3), "frames": int(len(truth)),
               "face_frames": int(np.isfinite(truth).sum())}
        if pipe is not None:
            try:
                out = _generate(pipe, first, path, seed)
                preds["model"] = mouth_aperture(out.landmarks).astype(np.float64)
                row["model_depth"] = movement_depth(preds["model"], truth)
            except Exception as exc:  # noqa: BLE001 - one bad clip must not end the evaluation
                row["model_error"] = f"{type(exc).__name__}: {exc}"
        for method, pred in preds.items():
            row[method] = lipsync_scores(truth, pred, max_lag, smooth_sigma)
        rows.append(row)
        log(f"  {name}: " + "  ".join(f"{m} r={row[m]['r_best']:.3f}" for m in preds))
    methods = [m for m in ("rms", "phones", "model") if any(m in r for r in rows)]
    mean = {m: {k: _nanmean([r[m][k] for r in rows if m in r])
                for k in ("r0", "r_best", "r0_smooth", "r_best_smooth")} for m in methods}
    result = {"clips": rows, "mean": mean, "methods": methods, "max_lag": max_lag,
              "smooth_sigma": smooth_sigma, "phones_rtf": phone_time / max(audio_time, 1e-9)}
    if "model" in methods:
        result["model_beats_both"] = int(sum(
            1 for r in rows if "model" in r
            and r["model"]["r_best"] > max(r["rms"]["r_best"], r["phones"]["r_best"])))
        result["model_clips"] = int(sum(1 for r in rows if "model" in r))
        result["model_depth_median"] = float(np.median([r["model_depth"] for r in rows if "model_depth" in r]))
    return result


def movement_depth(pred: np.ndarray, truth: np.ndarray) -> float:
    """How far the generated mouth moves next to the real one: ``(p90 - p10)`` of the predicted
    (T,) aperture over ``(p90 - p10)`` of the real (T,) aperture (NaN frames left out).

    Pearson r ignores scale, so a model could score well with a mouth that barely moves; this is
    the check on that (1 = as much as the real speaker; both in outer-eye-corner units)."""
    n = min(len(pred), len(truth))
    keep = np.isfinite(truth[:n])
    t, p = truth[:n][keep], pred[:n][keep]
    spread = float(np.subtract(*np.percentile(t, [90, 10])))
    return float(np.subtract(*np.percentile(p, [90, 10]))) / max(spread, 1e-9)


def evaluate_synthetic(data: str, pipe, seed: int = 0, max_utterances: Optional[int] = None,
                       log=print) -> Dict:
    """Lip landmark error of stage 1 on the held-out (val) utterances of a synthetic corpus.

    The corpus (``moda_hub.data.synthetic``, manifest with a ``val`` split whose voices,
    subjects and sentences never occur in ``train``) stores per utterance the log-mel
    features at its fps, the subject's canonical mesh and the true lip offsets. Each val
    utterance goes through ``pipe.moda.generate`` (features + subject condition, seeded
    generator) and its ``lip`` (T, 40, 3) is compared with the truth. The composer copies the
    lip points unchanged, so this is also the error of the final canonical landmarks.

    Returns:
        dict: ``utterances`` (per utterance: id, voice, frames, lip_l2), ``n``, ``frames``,
        ``lip_l2`` (mean over frames and the 40 lip points of the L2 distance, canonical units),
        ``lip_l2_pct_iod`` (the same x100: % of the outer-eye-corner distance, which is 1),
        ``still_lip_l2`` (the error of predicting no lip motion, for scale).
    """
    import torch

    # corpus code stays out of `moda generate` (the cli imports this module)
    from moda_hub.data.synthetic import load_utterances

    manifest = json.load(open(os.path.join(data, "manifest.json")))
    fps, model = manifest.get("fps"), pipe.moda
    if fps != model.config.fps:
        return {"skipped": f"corpus fps {fps} differs from the model's {model.config.fps}"}
    subjects = np.load(os.path.join(data, "subjects.npz"))["meshes"]
    utts = load_utterances(data, split="val")
    n_phone = PHONE_COLUMNS.get(model.config.features, 0)
    if model.config.features in ENCODER_KINDS:               # the model's input: the encoder's states
        if not all("states" in u for u in utts):
            return {"skipped": f"corpus '{data}' has no audio-encoder states (built before them)"}
        for u in utts:
            u["features"] = u["states"]
    elif n_phone:                                            # the model's input: log-mel + phone stream
        for u in utts:
            u["features"] = np.concatenate([u["features"], u["phones"][:, :n_phone]], axis=1)
    if max_utterances is not None:
        utts = utts[:max_utterances]
    if not utts:
        return {"skipped": f"no val utterances in '{data}'"}
    if utts[0]["features"].shape[1] != model.config.audio_dim:
        return {"skipped": f"corpus features have {utts[0]['features'].shape[1]} dims, the model "
                           f"takes {model.config.audio_dim}"}
    rows, errs, still = [], [], []
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for u in utts:
            feats = torch.from_numpy(u["features"].astype(np.float32))
            cond = torch.from_numpy(subjects[u["subject"]].reshape(-1).astype(np.float32))
            pred = model.generate(feats, cond, generator=gen)["lip"]
            pred = (pred[0] if pred.dim() == 4 else pred).float().cpu().numpy()         # (T, 40, 3)
            true = u["lip"].astype(np.float32)
            n = min(len(pred), len(true))
            e = np.linalg.norm(pred[:n] - true[:n], axis=-1).mean(-1)               # (n,)
            errs.append(e)
            still.append(np.linalg.norm(true[:n], axis=-1).mean(-1))
            rows.append({"id": str(u["meta"]["id"]), "voice": u["meta"].get("voice"),
                         "frames": int(n), "lip_l2": float(e.mean())})
    allerr = np.concatenate(errs)
    log(f"  {len(rows)} val utterances, {len(allerr)} frames: lip L2 {allerr.mean():.4f}")
    return {"utterances": rows, "n": len(rows), "frames": int(len(allerr)),
            "lip_l2": float(allerr.mean()), "lip_l2_pct_iod": float(100.0 * allerr.mean()),
            "still_lip_l2": float(np.concatenate(still).mean())}


def evaluate_one_to_many(pipe, portrait, speech: str, seeds: Sequence[int] = (0, 1),
                         _cache: Optional[Dict] = None) -> Dict:
    """Same portrait and speech, different seeds: lips must agree, head motion must differ.

    Returns:
        dict: ``lip_r`` (min over seed pairs of the Pearson r of the mouth-aperture curves;
        pass >= 0.95), ``head_pose_diff_deg`` (mean over pairs, frames and the 3 angles of
        |head-pose difference|, degrees; pass >= 1), ``pass_lips``, ``pass_head``, ``seeds``.
    """
    if len(seeds) < 2:
        return {"skipped": "one-to-many needs at least two seeds"}
    outs = [_cached_generate(pipe, portrait, speech, s, _cache) for s in seeds]
    aps = [mouth_aperture(o.landmarks) for o in outs]
    heads = [np.asarray(o.motion["head"], np.float64)[:, :3] for o in outs]
    rs, diffs = [], []
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            rs.append(pearson(aps[i], aps[j]))
            n = min(len(heads[i]), len(heads[j]))
            diffs.append(float(np.abs(heads[i][:n] - heads[j][:n]).mean()))
    lip_r, head = float(np.nanmin(rs)), float(np.mean(diffs))
    return {"speech": os.path.basename(speech), "seeds": [int(s) for s in seeds], "lip_r": lip_r,
            "head_pose_diff_deg": head, "pass_lips": bool(lip_r >= MIN_R_ONE_TO_MANY),
            "pass_head": bool(head >= MIN_POSE_DIFF_DEG)}


def evaluate_blinks(pipe, portrait, speech_files: Sequence[str], seed: int = 0,
                    _cache: Optional[Dict] = None) -> Dict:
    """Blinks per minute on generated landmarks (eye openness + ``motion.blinks.count_blinks``).

    Returns:
        dict: ``files`` (per speech file: seconds, blinks, per_minute) and ``per_minute``
        (all blinks over all minutes). People blink about 15-20 times a minute when talking.
    """

    rows, blinks, minutes = [], 0, 0.0
    for path in speech_files:
        out = _cached_generate(pipe, portrait, path, seed, _cache)
        n = int(count_blinks(eye_openness(out.landmarks), out.fps))
        mins = len(out.landmarks) / out.fps / 60.0
        rows.append({"speech": os.path.basename(path), "seconds": round(mins * 60, 2), "blinks": n,
                     "per_minute": n / max(mins, 1e-9)})
        blinks, minutes = blinks + n, minutes + mins
    return {"files": rows, "seed": int(seed), "per_minute": blinks / max(minutes, 1e-9)}


def _cached_generate(pipe, portrait, speech, seed, cache):
    key = (str(speech), int(seed))
    if cache is not None and key in cache:
        return cache[key]
    out = _generate(pipe, portrait, speech, seed)
    if cache is not None:
        cache[key] = out
    return out


# ----------------------------------------------------------------------------- driver

def evaluate_val_speakers(prepared_dir: str, pipe=None, cache_dir: Optional[str] = "outputs/eval_cache",
                          seed: int = 0, max_lag: int = 3, log=print) -> Dict:
    """Lip-sync on the validation speakers of the real training footage (speakers stage 1 never
    trained on; ``moda_hub.data.train_footage``): :func:`evaluate_real_clips` on their clips,
    plus per speaker the mean best-lag r of each method, clips where the model beats both
    baselines and the median movement depth.

    Args:
        prepared_dir: the prepared video dataset (``moda prepare video``) whose ``val`` split
            names the clips (their source files must still exist).
    """
    from moda_hub.data.train_footage import val_clips_by_speaker   # (corpus code, as above)

    if not os.path.exists(os.path.join(prepared_dir, "manifest.json")):
        return {"skipped": f"no prepared footage at '{prepared_dir}'"}
    by_speaker = val_clips_by_speaker(prepared_dir)
    if not by_speaker:
        return {"skipped": f"no validation clips of '{prepared_dir}' found on disk"}
    paths = [p for clips in by_speaker.values() for p in clips]
    result = evaluate_real_clips("", pipe, cache_dir, seed, max_lag, clips=paths, log=log)
    speaker = {os.path.splitext(os.path.basename(p))[0]: s for s, clips in by_speaker.items() for p in clips}
    per = {}
    for s in by_speaker:
        rows = [r for r in result["clips"] if speaker[r["clip"]] == s]
        entry = {"clips": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 1)}
        for m in result["methods"]:
            entry[m] = _nanmean([r[m]["r_best"] for r in rows if m in r])
        if "model" in result["methods"]:
            entry["model_beats_both"] = int(sum(1 for r in rows if "model" in r and r["model"]["r_best"]
                                                > max(r["rms"]["r_best"], r["phones"]["r_best"])))
            entry["model_beats_phones"] = int(sum(1 for r in rows if "model" in r
                                                  and r["model"]["r_best"] > r["phones"]["r_best"]))
            entry["model_depth_median"] = float(np.median([r["model_depth"] for r in rows if "model_depth" in r]))
        per[s] = entry
    result["speakers"] = per
    result["prepared_dir"] = prepared_dir
    return result


def evaluate(model_dir: Optional[str] = "pretrained/moda-base", data: Optional[str] = None,
             eval_dir: str = "../shared/eval/dev", out: Optional[str] = "outputs/eval.json",
             seeds: Sequence[int] = (0, 1), cache_dir: Optional[str] = "outputs/eval_cache",
             max_lag: int = 3, max_synthetic: Optional[int] = None, val_data: Optional[str] = None,
             log=print) -> Dict:
    """Run every evaluation that its inputs allow, print a table and write JSON.

    Args:
        model_dir: pipeline folder or Hub id; without trained weights only the baselines run.
        data: synthetic corpus folder with a val split (section 2), or None to skip it.
        eval_dir: real eval media (``clips/``, ``speech/``, ``portraits/``); skipped if absent.
        out: JSON path (None = do not write).
        seeds: generator seeds; the first is used for lip-sync and blinks, all for one-to-many.
        cache_dir: ground-truth cache folder.
        max_lag: best-lag search range, frames.
        max_synthetic: evaluate at most this many val utterances (None = all).
        val_data: a prepared real-footage dataset: lip-sync on its validation speakers
            (:func:`evaluate_val_speakers`), or None to skip it.

    Returns:
        the report dict written to ``out`` (NaN written as null).
    """
    t_start = time.perf_counter()
    pipe, why_no_model = load_pipeline(model_dir)
    report: Dict = {"model_dir": model_dir, "model": why_no_model or "loaded", "eval_dir": eval_dir,
                    "seeds": [int(s) for s in seeds], "fps": EVAL_FPS}
    if why_no_model:
        log(f"model: skipped ({why_no_model}); baselines only")
    have_eval = bool(eval_dir) and os.path.isdir(eval_dir)
    seed0 = int(seeds[0]) if len(seeds) else 0

    # 1. real-speech lip-sync
    if have_eval:
        log(f"real-speech lip-sync on {os.path.join(eval_dir, 'clips')}")
        report["real_lipsync"] = evaluate_real_clips(eval_dir, pipe, cache_dir, seed0, max_lag, log=log)
    else:
        report["real_lipsync"] = {"skipped": f"eval media not found at '{eval_dir}'"}

    # 1b. the validation speakers of the real training footage
    if val_data is None:
        report["val_speakers"] = {"skipped": "no prepared footage given (val_data=None)"}
    else:
        log(f"real-speech lip-sync on the validation speakers of {val_data}")
        report["val_speakers"] = evaluate_val_speakers(val_data, pipe, cache_dir, seed0, max_lag, log=log)

    # 2. held-out synthetic utterances
    if data is None:
        report["synthetic"] = {"skipped": "no synthetic corpus given (data=None)"}
    elif pipe is None:
        report["synthetic"] = {"skipped": why_no_model}
    elif not os.path.isdir(data):
        report["synthetic"] = {"skipped": f"synthetic corpus not found at '{data}'"}
    else:
        log(f"held-out synthetic utterances in {data}")
        report["synthetic"] = evaluate_synthetic(data, pipe, seed0, max_synthetic, log=log)

    # 3-4. one-to-many and blinks on an eval portrait with the eval speech
    portrait = os.path.join(eval_dir, "portraits", "p4.png") if eval_dir else ""
    speech = sorted(glob.glob(os.path.join(eval_dir, "speech", "*.wav"))) if have_eval else []
    if pipe is None:
        report["one_to_many"] = report["blinks"] = {"skipped": why_no_model}
    elif not (os.path.exists(portrait) and speech):
        report["one_to_many"] = report["blinks"] = {
            "skipped": f"eval portrait/speech not found under '{eval_dir}'"}
    else:
        gen_cache: Dict = {}
        log("one-to-many and blinks")
        report["one_to_many"] = evaluate_one_to_many(pipe, portrait, speech[0], seeds, gen_cache)
        report["blinks"] = evaluate_blinks(pipe, portrait, speech, seed0, gen_cache)

    report["seconds"] = round(time.perf_counter() - t_start, 1)
    log(format_table(report))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(_jsonable(report), f, indent=1, allow_nan=False)
        os.replace(tmp, out)
        log(f"wrote {out}")
    return report


def format_table(report: Dict) -> str:
    """The report as a plain-text table (per-clip lip-sync, means, other sections)."""
    lines = []
    for key, title in (("real_lipsync", "Real-speech lip-sync"), ("val_speakers", "Validation speakers")):
        lines += _lipsync_table(report.get(key, {}), title)
    syn = report.get("synthetic", {})
    if "lip_l2" in syn:
        lines.append(f"Synthetic val ({syn['n']} utterances, unseen voices): lip L2 {syn['lip_l2']:.4f} "
                     f"canonical units = {syn['lip_l2_pct_iod']:.2f}% of inter-ocular distance "
                     f"(no lip motion: {syn['still_lip_l2']:.4f})")
    elif syn:
        lines.append(f"Synthetic val: skipped ({syn.get('skipped')})")
    otm = report.get("one_to_many", {})
    if "lip_r" in otm:
        lines.append(f"One-to-many ({otm['speech']}, seeds {otm['seeds']}): lip r {_f(otm['lip_r'])} "
                     f"({'pass' if otm['pass_lips'] else 'FAIL'} >= {MIN_R_ONE_TO_MANY}), head pose diff "
                     f"{otm['head_pose_diff_deg']:.2f} deg ({'pass' if otm['pass_head'] else 'FAIL'} "
                     f">= {MIN_POSE_DIFF_DEG})")
    elif otm:
        lines.append(f"One-to-many: skipped ({otm.get('skipped')})")
    bl = report.get("blinks", {})
    if "per_minute" in bl:
        lines.append(f"Blinks: {bl['per_minute']:.1f} per minute over "
                     f"{sum(r['seconds'] for r in bl['files']):.0f} s of generated motion")
    elif bl:
        lines.append(f"Blinks: skipped ({bl.get('skipped')})")
    return "\n".join(lines)


def _lipsync_table(real: Dict, title: str) -> list:
    """Lines of one lip-sync section (per clip, means, beats-both, depth, per speaker)."""
    lines = []
    if "clips" in real:
        methods = real["methods"]
        head = f"{'clip':<16}{'sec':>6}{'face%':>6}"
        for m in methods:
            head += f" | {m + ' r0':>10}{'r_best':>8}{'lag':>4}{'r_sm':>7}"
        lines += [f"{title} (Pearson r of mouth aperture; best lag within "
                  f"+-{real['max_lag']} frames; r_sm = best-lag r vs GT smoothed "
                  f"sigma={real['smooth_sigma']} frame)", head, "-" * len(head)]
        for r in real["clips"]:
            s = f"{r['clip']:<16}{r['seconds']:>6.1f}{100 * r['face_frames'] / max(r['frames'], 1):>6.0f}"
            for m in methods:
                if m in r:
                    c = r[m]
                    s += f" | {_f(c['r0']):>10}{_f(c['r_best']):>8}{c['lag']:>4d}{_f(c['r_best_smooth']):>7}"
                else:
                    s += f" | {'-':>10}{'-':>8}{'-':>4}{'-':>7}"
            lines.append(s)
        s = f"{'mean':<16}{'':>6}{'':>6}"
        for m in methods:
            c = real["mean"][m]
            s += f" | {_f(c['r0']):>10}{_f(c['r_best']):>8}{'':>4}{_f(c['r_best_smooth']):>7}"
        lines += ["-" * len(head), s]
        if "model_beats_both" in real:
            lines.append(f"clips where the model beats both baselines (best-lag r): "
                         f"{real['model_beats_both']}/{real['model_clips']}")
            lines.append(f"mouth movement depth, model / real (p90 - p10 of the aperture), median over "
                         f"clips: {real['model_depth_median']:.2f}")
        lines.append(f"phone recognition: {real['phones_rtf']:.3f} x real time")
    elif real:
        lines.append(f"{title}: skipped ({real.get('skipped')})")
    for s, e in real.get("speakers", {}).items():
        row = f"  speaker {s}: {e['clips']} clips, {e['seconds']} s, best-lag r " + ", ".join(
            f"{m} {_f(e[m])}" for m in real["methods"])
        if "model_beats_both" in e:
            row += (f"; model beats both on {e['model_beats_both']}, phones on {e['model_beats_phones']}; "
                    f"depth {e['model_depth_median']:.2f}")
        lines.append(row)
    return lines


def add_arguments(p) -> None:
    """The evaluation's command-line options (``moda evaluate`` and ``python -m moda_hub.evaluation``)."""
    p.add_argument("--model", "--model-dir", dest="model", default=DEFAULT_MODEL,
                   help="pipeline folder or Hub id (baselines only when it has no weights)")
    p.add_argument("--data", default=None, help="synthetic corpus folder with a val split (held-out voices)")
    p.add_argument("--eval-dir", default=os.path.join("..", "shared", "eval", "dev"), help="real eval media folder")
    p.add_argument("--out", default="outputs/eval.json", help="JSON report path")
    p.add_argument("--seeds", default="0,1", help="comma-separated generator seeds")
    p.add_argument("--cache-dir", default="outputs/eval_cache", help="ground-truth cache folder")
    p.add_argument("--max-lag", type=int, default=3, help="best-lag search range, frames")
    p.add_argument("--max-synthetic", type=int, default=None, help="at most this many val utterances")
    p.add_argument("--val-data", default=os.path.join("runs", "moda-base", "real"),
                   help="prepared real footage (make train): lip-sync on its validation speakers")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run(args) -> Dict:
    """Run the evaluation with the options of :func:`add_arguments`."""
    import torch                                    # ~1.3 s of import: not for `moda --help`

    torch.set_num_threads(args.threads)
    return evaluate(args.model, args.data, args.eval_dir, args.out,
                    tuple(int(s) for s in args.seeds.split(",") if s.strip()),
                    args.cache_dir, args.max_lag, args.max_synthetic, val_data=args.val_data)


def main(argv: Optional[Iterable[str]] = None) -> Dict:
    """Command line: ``python -m moda_hub.evaluation [--model ...] [--data ...]`` (= ``moda evaluate``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(list(argv) if argv is not None else None))


# ----------------------------------------------------------------------------- helpers

def _file_key(path: str) -> str:
    st = os.stat(path)
    return f"v{GT_CACHE_VERSION}-{st.st_size}-{st.st_mtime_ns}"


def _nanmean(xs: Sequence[float]) -> float:
    xs = np.asarray([x for x in xs if x is not None], np.float64)
    return float(np.nanmean(xs)) if np.isfinite(xs).any() else float("nan")


def _f(x) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


if __name__ == "__main__":
    main()
