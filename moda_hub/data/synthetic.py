"""Synthetic speech-motion corpus for stage 1 (MODA) and stage 2 (facial composer).

Speech comes from espeak-ng (C API, exact phoneme timeline; :mod:`moda_hub.speech.espeak`) over
8 English accents x ~45 voice variants, rates 130-230 words per minute, random pitch and
intonation range, sentences from :mod:`moda_hub.data.sentences` joined with pauses, then a
tape-speed jitter (0.92-1.08, the phoneme times are scaled with it) and a microphone /
room / noise chain (:mod:`moda_hub.data.augment`). Motion targets come from the phoneme
timeline: viseme coarticulation (:mod:`moda_hub.data.visemes`) applied to a subject mesh by
a procedural rig (:mod:`moda_hub.face.rig`), blinks, brows, gaze, head pose and torso
(:mod:`moda_hub.data.motion`), on real and synthetic subjects
(:mod:`moda_hub.data.subjects`).

Build::

    python -m moda_hub.data.synthetic --hours 2.5 --out data/synthetic --workers 2
    # or: from moda_hub.data.synthetic import build_corpus; build_corpus("data/synthetic", 2.5)

Corpus format (``out_dir``)
---------------------------
``manifest.json``
    ``format`` ("moda-synthetic/1"), ``seed``, ``hours_requested``, ``hours`` (built),
    ``fps`` (30), ``sample_rate`` (16000), ``features`` (how they were computed: function
    ``moda_hub.speech.audio.audio_features``, n_mels 80, window 64 ms centred on frame ``k`` at
    ``(k + 0.5) / fps`` s, per-utterance mean/std normalised, stored float16),
    ``params`` (names of the ``params`` columns, :data:`moda_hub.face.rig.PARAMS`),
    ``dense_every`` (6), ``augmentation`` (settings), ``splits`` (per split: voices,
    utterance count, hours; the ``val`` voices never occur in ``train``, and val subjects and
    sentences are held out too), ``subjects`` (file, count), ``shards`` (file, utterances,
    frames) and ``utterances``: one record each with ``id``, ``shard``, ``index`` (position
    in the shard), ``split``, ``voice`` (espeak voice string), ``rate`` (wpm), ``pitch``,
    ``pitch_range``, ``speed`` (tape-speed factor applied), ``text``, ``subject`` (row of
    ``subjects.npz``), ``frames``, ``seconds``, ``augment`` (what was applied), ``audio``
    (key of the kept 16 kHz audio, or null).

``subjects.npz``
    ``meshes`` (S, 478, 3) float32 canonical subject meshes (the subject condition),
    ``names`` (S,) str, ``split`` (S,) str.

``shard_XXXX.npz`` (uncompressed; the utterances of a shard are concatenated in time)
    ``frame_offsets`` (U + 1,) int64: utterance ``i`` owns frame rows
    ``frame_offsets[i]:frame_offsets[i + 1]`` of every per-frame array below;
    ``utt_ids`` (U,) str; ``subject`` (U,) int32 (row of ``subjects.npz``);
    ``features`` (F, 80) float16 log-mel of the *augmented* 16 kHz audio, one row per
    30 fps frame (``F`` = total frames); ``phones`` (F, 14) float16 phone stream of the phones
    pocketsphinx recognises in that audio (``moda_hub.speech.phones.phone_stream``: 13 viseme-class
    occupancies, then the table opening; corpora built before the opening have 13 columns);
    ``states`` (F, 384) float16 the ``audio_encoder``'s Whisper-tiny states of that audio at the
    frames (``moda_hub.speech.speech_states``, the same windows as the pipeline; absent from corpora
    built before the encoder);
    ``lip`` (F, 40, 3) float16 offsets of ``topology.LIPS`` points from the subject mesh,
    canonical units; ``eye`` (F, 60, 3) float16 offsets of ``topology.EYES`` points;
    ``head`` (F, 7) float32 ``[d_pitch, d_yaw, d_roll (deg), d_tx, d_ty, d_tz (canonical),
    d_log_scale]`` relative to the reference pose; ``torso`` (F, 2) float32 shoulder shift,
    canonical units; ``params`` (F, 12) float16 the rig parameters (viseme curves from the
    phoneme timeline, blinks, brow, gaze in degrees) that made the meshes;
    ``dense`` (N, 478, 3) float16 dense offsets (``subject mesh + dense`` = the face) for
    every 6th frame of each utterance (random phase), with ``dense_frames`` (N,) int64 the
    frame rows they belong to (so ``lip[dense_frames]``, ``eye[dense_frames]`` match them
    exactly: ``dense[:, LIPS] == lip[dense_frames]``);
    ``timeline`` (U,) str: JSON ``[[phoneme, start_s, end_s], ...]`` per utterance (times
    in the augmented audio); ``audio_<utt_id>`` (n,) int16 16 kHz augmented audio for a
    few validation utterances.

:func:`load_utterances` reads shards back as one dict per utterance.

Determinism: utterance ``i`` is a function of ``(seed, i)`` only, shards are fixed groups
of utterances, and the corpus is the shortest prefix of utterances reaching ``hours`` -
so the same seed and hours give the same files with any number of workers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from moda_hub.data import augment as aug
from moda_hub.data import motion
from moda_hub.data.augment import config_dict
from moda_hub.data.sentences import generate_sentences
from moda_hub.data.subjects import subject_bank
from moda_hub.data.visemes import P_MOUTH, ArticulationStyle, viseme_curves
from moda_hub.errors import InvalidParameterError, ModaError, OutputPathError
from moda_hub.face import topology as topo
from moda_hub.face.rig import BLINK_L, BLINK_R, BROW, GAZE_X, PARAMS, P_ALL, FaceRig
from moda_hub.motion.blinks import blink_track
from moda_hub.options import SAMPLE_RATE
from moda_hub.speech.audio import audio_features, frame_times, num_frames
from moda_hub.speech.espeak import speak
from moda_hub.speech.phones import phone_stream
from moda_hub.speech.speech_states import default_encoder, encoder_features

FORMAT = "moda-synthetic/1"
FPS = 30
DENSE_EVERY = 6
#: Arrays with one row per frame in every shard.
FRAME_KEYS = ("features", "phones", "states", "lip", "eye", "head", "torso", "params")

ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "whisper", "whisperf",
            "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "aunty", "belinda", "benjamin",
            "boris", "caleb", "david", "edward", "Gene", "grandma", "grandpa", "iven", "iven2",
            "john", "linda", "max", "Michael", "norbert", "paul", "quincy", "rob", "steph",
            "steph2", "travis", "victor", "zac")
#: Validation voices: every voice with one of these variants or this accent (unseen in train).
VAL_VARIANTS = ("m4", "f4", "klatt3", "Andy", "belinda", "steph2", "grandpa")
VAL_ACCENTS = ("en-gb-x-gbcwmd",)
RATE_WPM = (130, 230)
PITCH = (25, 75)


def voices(split: str) -> List[str]:
    """espeak voice strings (``"en-us+f3"``) of a split: "train" or "val" (disjoint)."""
    out = []
    for acc in ACCENTS:
        for var in VARIANTS:
            is_val = acc in VAL_ACCENTS or var in VAL_VARIANTS
            if is_val == (split == "val"):
                out.append(acc + ("+" + var if var else ""))
    return out


@dataclass
class CorpusConfig:
    """Settings of :func:`build_corpus` (all recorded in the manifest)."""
    num_subjects: int = 400
    num_sentences: int = 4000
    val_fraction: float = 0.06          # share of utterances in the val split
    val_sentence_fraction: float = 0.1  # share of the sentence pool kept for val
    utterance_seconds: tuple = (3.0, 16.0)
    gap_seconds: tuple = (0.15, 1.2)    # pauses inserted between sentences
    lead_seconds: tuple = (0.1, 0.7)    # silence before the first / after the last word
    speed_jitter: float = 0.08          # tape speed in [1 - j, 1 + j] for half the utterances
    blink_rate_range: tuple = (6.0, 30.0)  # blinks per minute, drawn per utterance
    p_keep_audio_val: float = 0.25     # share of val utterances whose audio is kept
    utterances_per_shard: int = 48


# --- one utterance ----------------------------------------------------------------------------
class _Context:
    """Per-process state: sentence pools, subjects, rigs (built once per worker)."""

    def __init__(self, seed: int, cfg: CorpusConfig, subjects: np.ndarray,
                 subject_split: np.ndarray):
        self.seed, self.cfg = seed, cfg
        sents = generate_sentences(cfg.num_sentences, seed)
        n_val = max(1, int(round(cfg.val_sentence_fraction * len(sents))))
        self.sentences = {"train": sents[:-n_val], "val": sents[-n_val:]}
        self.voices = {"train": voices("train"), "val": voices("val")}
        self.subjects = subjects
        self.subject_ids = {s: np.flatnonzero(subject_split == s) for s in ("train", "val")}
        if len(self.subject_ids["val"]) == 0:
            self.subject_ids["val"] = self.subject_ids["train"]
        self._rigs: Dict[int, object] = {}

    def rig(self, sid: int):
        if sid not in self._rigs:
            if len(self._rigs) > 256:
                self._rigs.clear()
            self._rigs[sid] = FaceRig(self.subjects[sid])
        return self._rigs[sid]


def _speak_utterance(ctx: _Context, rng: np.random.Generator, split: str):
    """espeak-ng speech of 1-6 sentences joined by pauses. Returns samples (float32,
    espeak rate), sample rate, phoneme timeline [(ph, s, e)], text, voice settings."""

    cfg = ctx.cfg
    voice = str(rng.choice(ctx.voices[split]))
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    prange = int(rng.integers(15, 90))
    target = float(rng.uniform(*cfg.utterance_seconds))
    pool = ctx.sentences[split]
    lead = float(rng.uniform(*cfg.lead_seconds))
    chunks, phonemes, texts = [], [], []
    sr, pos = None, 0
    while True:
        text = pool[int(rng.integers(0, len(pool)))]
        res = speak(text, voice=voice, rate=rate, pitch=pitch, pitch_range=prange,
                    end_pause=False)
        if sr is None:
            sr = res.sample_rate
            pos = int(round(lead * sr))
            chunks.append(np.zeros(pos, np.float32))
        phonemes += [(ph, pos / sr + s, pos / sr + e) for ph, s, e in res.phonemes]
        chunks.append(res.samples)
        pos += len(res.samples)
        texts.append(text)
        if pos / sr >= target or len(texts) >= 6:
            break
        gap = int(round(rng.uniform(*cfg.gap_seconds) * sr))
        chunks.append(np.zeros(gap, np.float32))
        pos += gap
    tail = int(round(rng.uniform(*cfg.lead_seconds) * sr))
    chunks.append(np.zeros(tail, np.float32))
    wav = np.concatenate(chunks)
    return wav, sr, phonemes, " ".join(texts), dict(voice=voice, rate=rate, pitch=pitch,
                                                    pitch_range=prange)


def make_utterance(ctx: _Context, index: int) -> dict:
    """Build utterance ``index`` (deterministic in ``(seed, index)``): a dict of arrays
    (see the module docstring) plus its manifest record under ``"meta"``."""

    cfg = ctx.cfg
    rng = np.random.default_rng([ctx.seed, 1, index])
    # low-discrepancy split: utterance i is val when frac(i * golden ratio) < val_fraction,
    # so even a tiny corpus gets its share of val utterances, evenly spread
    split = "val" if (index * 0.6180339887498949 + 0.3) % 1.0 < cfg.val_fraction else "train"

    # 1. speech with its phoneme timeline, tape-speed jitter, microphone chain
    wav, sr, phonemes, text, vmeta = _speak_utterance(ctx, rng, split)
    speed = 1.0
    if rng.random() < 0.5:
        speed = float(rng.uniform(1 - cfg.speed_jitter, 1 + cfg.speed_jitter))
    speed = aug.speed_for_resample(sr, SAMPLE_RATE, speed)
    wav16 = aug.resample(wav, sr, SAMPLE_RATE, speed)
    phonemes = [(ph, s / speed, e / speed) for ph, s, e in phonemes]
    wav16, aug_info = aug.augment(wav16, SAMPLE_RATE, rng)

    # 2. audio features, one row per frame
    T = num_frames(len(wav16), SAMPLE_RATE, FPS)
    feats = audio_features(wav16, SAMPLE_RATE, FPS)
    phone_feats = phone_stream(wav16, SAMPLE_RATE, FPS)   # recognised, errors included
    states = encoder_features(wav16, FPS, default_encoder(), num_frames=T)
    times = frame_times(T, FPS)
    duration = len(wav16) / SAMPLE_RATE

    # 3. rig parameters: visemes, blinks, brows, gaze
    params = np.zeros((T, P_ALL), np.float32)
    style = ArticulationStyle.random(rng)
    params[:, :P_MOUTH] = viseme_curves(phonemes, T, FPS, style=style, rng=rng,
                                        frame_times=times)
    pause_spans = motion.pauses(phonemes, duration)
    # a per-utterance blink rate, so that stage 1 learns the `blink_rate` control
    blinks = motion.blink_events(duration, rng, pause_spans,
                                 rate_per_min=float(rng.uniform(*cfg.blink_rate_range)))
    params[:, [BLINK_L, BLINK_R]] = blink_track(blinks, T, FPS, rng)
    emph = motion.emphasis_times(phonemes, rng)
    params[:, BROW] = motion.brow_track(emph, T, FPS, rng)
    params[:, GAZE_X:GAZE_X + 2] = motion.gaze_track(T, FPS, rng, blinks)

    # 4. dense mesh offsets on a subject; lip / eye targets
    ids = ctx.subject_ids[split]
    sid = int(ids[int(rng.integers(0, len(ids)))])
    dense = ctx.rig(sid).offsets(params)                           # (T, 478, 3) float32
    dense16 = dense.astype(np.float16)
    lip, eye = dense16[:, topo.LIPS], dense16[:, topo.EYES]
    phase = int(rng.integers(0, DENSE_EVERY))
    dense_frames = np.arange(phase, T, DENSE_EVERY)

    # 5. head pose and torso
    activity = motion.speech_activity(phonemes, T, FPS)
    head = motion.head_track(T, FPS, rng, activity, emph)
    torso = motion.torso_track(head, FPS, rng)

    uid = f"u{index:07d}"
    keep_audio = split == "val" and (index * 0.41421356237309515) % 1.0 < cfg.p_keep_audio_val
    meta = dict(id=uid, split=split, text=text, speed=round(speed, 5), subject=sid,
                frames=int(T), seconds=round(duration, 4), augment=aug_info,
                audio=f"audio_{uid}" if keep_audio else None, **vmeta)
    out = dict(meta=meta, features=feats.astype(np.float16), phones=phone_feats.astype(np.float16),
               states=states.astype(np.float16), lip=lip, eye=eye,
               head=head.astype(np.float32), torso=torso.astype(np.float32),
               params=params.astype(np.float16), dense=dense16[dense_frames],
               dense_frames=dense_frames,
               timeline=json.dumps([[ph, round(s, 5), round(e, 5)] for ph, s, e in phonemes]))
    if keep_audio:
        out["audio"] = np.round(np.clip(wav16, -1, 1) * 32767).astype(np.int16)
    return out


# --- shards -------------------------------------------------------------------------------------
def _write_shard(path: Path, utts: Sequence[dict]):
    frames = np.cumsum([0] + [u["meta"]["frames"] for u in utts]).astype(np.int64)
    arrays = {
        "frame_offsets": frames,
        "utt_ids": np.array([u["meta"]["id"] for u in utts]),
        "subject": np.array([u["meta"]["subject"] for u in utts], np.int32),
        "timeline": np.array([u["timeline"] for u in utts]),
    }
    for key in FRAME_KEYS + ("dense",):
        arrays[key] = np.concatenate([u[key] for u in utts])
    arrays["dense_frames"] = np.concatenate(
        [u["dense_frames"] + frames[i] for i, u in enumerate(utts)]).astype(np.int64)
    for u in utts:
        if "audio" in u:
            arrays[u["meta"]["audio"]] = u["audio"]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


_CTX: Optional[_Context] = None


def _init_worker(seed, cfg, subjects, subject_split):
    global _CTX
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:              # imported by the package; keep it to one thread
        sys.modules["torch"].set_num_threads(1)
    _CTX = _Context(seed, cfg, subjects, subject_split)


def _build_shard(args):
    """Worker: build utterances ``[first, first + count)``, write the shard, return metas."""
    shard_idx, first, count, out_dir = args
    utts = [make_utterance(_CTX, i) for i in range(first, first + count)]
    path = Path(out_dir) / f"shard_{shard_idx:04d}.npz"
    _write_shard(path, utts)
    metas = []
    for k, u in enumerate(utts):
        m = dict(u["meta"])
        m["shard"], m["index"] = shard_idx, k
        metas.append(m)
    return shard_idx, metas


def _truncate_shard(path: Path, keep: int):
    """Keep only the first ``keep`` utterances of a written shard."""
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    fo = d["frame_offsets"]
    F = int(fo[keep])
    out = {"frame_offsets": fo[:keep + 1], "utt_ids": d["utt_ids"][:keep],
           "subject": d["subject"][:keep], "timeline": d["timeline"][:keep]}
    for key in FRAME_KEYS:
        if key in d:
            out[key] = d[key][:F]
    sel = d["dense_frames"] < F
    out["dense"], out["dense_frames"] = d["dense"][sel], d["dense_frames"][sel]
    kept_ids = set(str(u) for u in out["utt_ids"])
    for k, v in d.items():
        if k.startswith("audio_") and k[len("audio_"):] in kept_ids:
            out[k] = v
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)


def build_corpus(out_dir, hours: float = 2.5, seed: int = 0, workers: int = 2,
                 config: Optional[CorpusConfig] = None, progress: bool = True) -> dict:
    """Build the synthetic corpus in ``out_dir`` (created; existing shards are replaced).

    Args:
        out_dir (str | Path): output folder (see the module docstring for the format).
        hours (float, default 2.5): hours of speech to build (the last utterance may
            overshoot by a few seconds).
        seed (int, default 0): everything is a deterministic function of ``seed`` (and
            ``hours``), whatever ``workers`` is.
        workers (int, default 2): processes (1 = in this process).
        config (CorpusConfig | None): corpus settings; default :class:`CorpusConfig()`.
        progress (bool, default True): print one line per finished shard to stderr.

    Returns:
        dict: the manifest (also written to ``out_dir/manifest.json``).

    Example::

        >>> m = build_corpus("/tmp/corpus", hours=0.05, seed=0, workers=2)
        >>> m["hours"], len(m["utterances"])
    """

    if not (hours > 0 and math.isfinite(hours)):
        raise InvalidParameterError(f"hours must be a positive number, got {hours!r}")
    if int(workers) < 1:
        raise InvalidParameterError(f"workers must be at least 1, got {workers!r}")
    cfg = config or CorpusConfig()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("shard_*.npz"):
            old.unlink()
    except OSError as err:
        raise OutputPathError(f"cannot write the corpus to {str(out)!r} ({err}) — pick a "
                              "writable folder with --out") from err
    t0 = time.time()
    subjects, names, subject_split = subject_bank(cfg.num_subjects, seed)
    np.savez(out / "subjects.npz", meshes=subjects, names=np.array(names),
             split=subject_split)

    target_s = hours * 3600.0
    mean_s = 0.5 * sum(cfg.utterance_seconds) + 1.5
    per_shard = int(np.clip(round(target_s / mean_s / 16), 4, cfg.utterances_per_shard))
    results: Dict[int, list] = {}

    def covered() -> Optional[int]:
        """Shards 0..k-1 all done and reaching the target -> k, else None."""
        total, k = 0.0, 0
        while k in results:
            total += sum(m["seconds"] for m in results[k])
            k += 1
            if total >= target_s:
                return k
        return None

    def log(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    next_shard = 0

    def task():
        nonlocal next_shard
        a = (next_shard, next_shard * per_shard, per_shard, str(out))
        next_shard += 1
        return a

    if workers == 1:
        _init_worker(seed, cfg, subjects, subject_split)
        while covered() is None:
            k, metas = _build_shard(task())
            results[k] = metas
            log(f"shard {k}: {len(metas)} utterances, "
                f"{sum(m['seconds'] for m in metas) / 60:.1f} min, {time.time() - t0:.0f} s")
    else:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        with ctx.Pool(int(workers), initializer=_init_worker,
                      initargs=(seed, cfg, subjects, subject_split)) as pool:
            pending = []
            while covered() is None:
                # keep every worker busy while the expected total is short of the target
                done = [sum(m["seconds"] for m in v) for v in results.values()]
                shard_s = float(np.mean(done)) if done else per_shard * mean_s
                expected = sum(done) + len(pending) * shard_s
                while len(pending) < int(workers) and (expected < target_s or not pending):
                    pending.append(pool.apply_async(_build_shard, (task(),)))
                    expected += shard_s
                while not any(p.ready() for p in pending):
                    time.sleep(0.05)
                for p in [p for p in pending if p.ready()]:
                    pending.remove(p)
                    k, metas = p.get()
                    results[k] = metas
                    log(f"shard {k}: {len(metas)} utterances, "
                        f"{sum(m['seconds'] for m in metas) / 60:.1f} min, "
                        f"{time.time() - t0:.0f} s")
            # shards still running are past the target: the pool is terminated on exit

    # the shortest prefix of utterances that reaches the target
    k_end = covered()
    utts, total = [], 0.0
    for k in range(k_end):
        for j, m in enumerate(results[k]):
            if total >= target_s:
                break
            utts.append(m)
            total += m["seconds"]
    last_shard = utts[-1]["shard"]
    n_last = sum(1 for m in utts if m["shard"] == last_shard)
    if n_last < len(results[last_shard]):
        _truncate_shard(out / f"shard_{last_shard:04d}.npz", n_last)
    for f in list(out.glob("shard_*.npz*")):
        if f.name.endswith(".tmp.npz") or int(f.name[6:10]) > last_shard:
            f.unlink(missing_ok=True)

    shards = []
    for k in range(last_shard + 1):
        ms = [m for m in utts if m["shard"] == k]
        shards.append(dict(file=f"shard_{k:04d}.npz", utterances=len(ms),
                           frames=int(sum(m["frames"] for m in ms))))
    splits = {}
    for s in ("train", "val"):
        ms = [m for m in utts if m["split"] == s]
        splits[s] = dict(voices=voices(s), utterances=len(ms),
                         hours=round(sum(m["seconds"] for m in ms) / 3600, 4),
                         subjects=int(np.sum(subject_split == s)))
    manifest = dict(
        format=FORMAT, created_by="moda_hub.data.synthetic.build_corpus", seed=int(seed),
        hours_requested=float(hours), hours=round(total / 3600, 4), fps=FPS,
        sample_rate=SAMPLE_RATE,
        features=dict(function="moda_hub.speech.audio.audio_features", n_mels=80, win_seconds=0.064,
                      fmin=20.0, fmax=8000.0, normalize=True, frame_centre="(k + 0.5) / fps",
                      computed_on="augmented 16 kHz audio", dtype="float16",
                      states="moda_hub.speech.speech_states.encoder_features (audio_encoder: Whisper tiny), float16",
                      states_layer=default_encoder().states_layer()),
        params=list(PARAMS), dense_every=DENSE_EVERY,
        units=dict(lip="canonical units, offsets of topology.LIPS from the subject mesh",
                   eye="canonical units, offsets of topology.EYES from the subject mesh",
                   head="[deg, deg, deg, canonical, canonical, canonical, log-scale]",
                   torso="canonical units (x, y)", dense="canonical units, (478, 3) offsets"),
        augmentation=config_dict(), config={k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in vars(cfg).items()},
        splits=splits, subjects=dict(file="subjects.npz", count=int(len(subjects))),
        shards=shards, utterances=utts, build_seconds=round(time.time() - t0, 1),
        workers=int(workers))
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")
    log(f"built {manifest['hours']:.3f} h ({len(utts)} utterances) in {out} "
        f"in {manifest['build_seconds']:.0f} s")
    return manifest


def load_utterances(out_dir, split: Optional[str] = None) -> List[dict]:
    """Read a built corpus back: one dict per utterance with its arrays (``features``,
    ``lip``, ``eye``, ``head``, ``torso``, ``params``, ``dense``, ``dense_frames`` (rows
    within the utterance), ``timeline`` (list), ``audio`` if kept) and ``meta`` (its
    manifest record). ``split``: "train", "val" or None for both. Loads everything in
    memory: for training loaders read the shards directly."""
    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    by_shard: Dict[int, list] = {}
    for m in manifest["utterances"]:
        if split is None or m["split"] == split:
            by_shard.setdefault(m["shard"], []).append(m)
    res = []
    for k, metas in sorted(by_shard.items()):
        with np.load(out / f"shard_{k:04d}.npz") as z:
            d = {key: z[key] for key in z.files}
        fo = d["frame_offsets"]
        for m in metas:
            i = m["index"]
            a, b = int(fo[i]), int(fo[i + 1])
            sel = (d["dense_frames"] >= a) & (d["dense_frames"] < b)
            u = {key: d[key][a:b] for key in FRAME_KEYS if key in d}
            u["dense"], u["dense_frames"] = d["dense"][sel], d["dense_frames"][sel] - a
            u["timeline"] = json.loads(str(d["timeline"][i]))
            u["subject"] = int(d["subject"][i])
            if m.get("audio"):
                u["audio"] = d[m["audio"]]
            u["meta"] = m
            res.append(u)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moda_hub.data.synthetic",
                                 description="Build the synthetic speech-motion corpus.")
    ap.add_argument("--hours", type=float, default=2.5, help="hours of speech (default 2.5)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--subjects", type=int, default=CorpusConfig.num_subjects,
                    help=f"subject meshes (default {CorpusConfig.num_subjects})")
    args = ap.parse_args(argv)

    try:
        build_corpus(args.out, args.hours, args.seed, args.workers,
                     CorpusConfig(num_subjects=args.subjects))
    except ModaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
