"""Stage-1 trainer: ModaModel on a motion corpus, written on accelerate.

Runs as is on one CPU and unchanged under ``accelerate launch`` on several GPUs. Seeded and
repeatable on a given machine; logs plain lines; saves safetensors through ``save_pretrained``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..speech.features import PHONE_COLUMNS
from ..models.moda import ModaModel, blink_condition
from .corpus import MotionCorpus
from .runlog import RunLog
from .threads import set_cpu_threads

PARTS = ("lip", "eye", "head", "torso")


class WindowBatches:
    """Random fixed-length windows from a corpus, as normalised tensors.

    Utterances longer than ``window`` are cropped at a random start; shorter ones are padded
    (``frame_mask`` marks real frames). Deterministic for a given ``seed``.

    ``feature_noise`` adds Gaussian noise of that many times each feature column's standard
    deviation (over the corpus) to the input features; ``time_masks`` spans of 1 to
    ``mask_frames`` frames per window have their features replaced by the column means
    (SpecAugment-style; the targets are kept). Both only regularise what stage 1 hears: it
    learns from few real speakers, and must not learn their voices.

    ``reference_shift``: the share of windows from utterances whose every frame's mesh is known
    (prepared real footage) that are re-referenced to a random frame ``r`` of the utterance, as
    if that frame were the portrait: the condition becomes the canonical mesh of frame ``r`` and
    the targets their offsets from it (lip, eye, torso: ``x[t] - x[r]``; head pose offsets the
    same, a small-angle approximation: real heads turn a few degrees). Real clips start with the
    mouth closed; photos are often taken mid-word or smiling with the lips apart, and stage 1
    must learn to close such a mouth as far as the speech needs.
    """

    def __init__(self, corpus: MotionCorpus, model: ModaModel, window: int, batch_size: int, seed: int,
                 feature_noise: float = 0.0, time_masks: int = 0, mask_frames: int = 4,
                 reference_shift: float = 0.0):
        self.corpus, self.model, self.window, self.batch_size = corpus, model, window, batch_size
        self.rng = np.random.default_rng(seed)
        self.feature_noise, self.time_masks, self.mask_frames = feature_noise, time_masks, mask_frames
        self.reference_shift = reference_shift
        self.aug_rng = np.random.default_rng([seed, 1])      # its own stream: the same windows either way
        if feature_noise or time_masks:
            sample = np.concatenate([u["features"][::7] for u in corpus.utterances]).astype(np.float64)
            self.feat_mean = sample.mean(0).astype(np.float32)
            self.feat_std = sample.std(0).astype(np.float32)
        lengths = np.array([len(u["features"]) * u.get("weight", 1.0) for u in corpus.utterances], float)
        self.prob = lengths / lengths.sum()       # a mixed corpus's "weight": its share per frame

    def __iter__(self):
        return self

    def __next__(self):
        W, B = self.window, self.batch_size
        F = self.corpus.utterances[0]["features"].shape[1]
        feats = np.zeros((B, W, F), np.float32)
        parts = {p: np.zeros((B, W, self.model.part_dims[p]), np.float32) for p in PARTS}
        mask = np.zeros((B, W), np.float32)
        cond = np.zeros((B, self.model.config.cond_dim), np.float32)
        extra = np.zeros((B, self.model.config.extra_cond_dim), np.float32)
        for b, i in enumerate(self.rng.choice(len(self.prob), size=B, p=self.prob)):
            u = self.corpus.utterances[i]
            T = len(u["features"])
            s = int(self.rng.integers(0, max(1, T - W + 1)))
            n = min(W, T - s)
            feats[b, :n] = u["features"][s:s + n]
            ref = None
            if self.reference_shift and "dense" in u and self.aug_rng.random() < self.reference_shift:
                ref = int(self.aug_rng.integers(0, T))
            if self.feature_noise:
                feats[b, :n] += (self.aug_rng.standard_normal((n, F)).astype(np.float32)
                                 * (self.feature_noise * self.feat_std))
            for _ in range(self.time_masks):
                w = int(self.aug_rng.integers(1, self.mask_frames + 1))
                m0 = int(self.aug_rng.integers(0, max(1, n - w + 1)))
                feats[b, m0:m0 + w] = self.feat_mean
            for p in PARTS:
                x = u[p][s:s + n] if ref is None else u[p][s:s + n] - u[p][ref]
                parts[p][b, :n] = x.reshape(n, -1)
            mask[b, :n] = 1
            subject = self.corpus.subjects[u["subject"]]
            cond[b] = (subject if ref is None else subject + u["dense"][ref].astype(np.float32)).reshape(-1)
            extra[b, 0] = blink_condition(u["blink_rate"])
        to = torch.from_numpy
        targets = {p: self.model.normalize(p, to(parts[p])) * to(mask)[..., None] for p in PARTS}
        return to(feats), to(cond), to(extra), targets, to(mask)


def corpus_statistics(corpus: MotionCorpus) -> dict:
    """Per-channel mean/std of each motion part over the training utterances, and of the
    subject meshes ("cond")."""
    stats = {}
    for p in PARTS:
        x = np.concatenate([u[p].reshape(len(u[p]), -1) for u in corpus.utterances]).astype(np.float64)
        stats[p] = (x.mean(0), x.std(0) + 1e-4)
    subj = corpus.subjects.reshape(len(corpus.subjects), -1).astype(np.float64)
    stats["cond"] = (subj.mean(0), subj.std(0) + 1e-3)
    return stats


def widen_statistics(model: ModaModel, corpus: MotionCorpus, factor: float = 3.0) -> Dict[str, int]:
    """Fit a pretrained model's normalisation to new data before fine-tuning on it.

    A channel that the pretraining corpus barely moved (e.g. the synthetic rig's still irises,
    std ~1e-4) but that moves in the new data (tracking of real video) would give normalised
    targets in the hundreds and a loss that is all that channel. Where the new data's RMS
    deviation from the model's mean exceeds ``factor`` times the model's std, the std becomes that
    RMS; every other channel (and every mean) is kept, so the pretrained mapping is unchanged there.
    Returns the number of widened channels per part.
    """
    widened = {}
    for part, (mean, std) in corpus_statistics(corpus).items():
        if part == "cond":
            continue
        old_mean, old_std = getattr(model, f"{part}_mean"), getattr(model, f"{part}_std")
        rms = torch.from_numpy(np.sqrt(std ** 2 + (mean - old_mean.double().numpy()) ** 2)).to(old_std)
        wide = rms > factor * old_std
        old_std.copy_(torch.where(wide, rms, old_std))
        widened[part] = int(wide.sum())
    return widened


@torch.no_grad()
def validate(model: ModaModel, corpus: MotionCorpus, max_utterances: int = 64) -> dict:
    """Mean lip error (canonical units) on validation utterances, teacher-free (prior samples)."""
    model.eval()
    errs = []
    gen = torch.Generator().manual_seed(0)
    for u in corpus.utterances[:max_utterances]:
        out = model.generate(torch.from_numpy(u["features"].astype(np.float32)),
                             torch.from_numpy(corpus.subjects[u["subject"]].reshape(-1)),
                             torch.tensor([blink_condition(u["blink_rate"])]), generator=gen)
        lip = out["lip"].numpy()
        errs.append(np.linalg.norm(lip - u["lip"].reshape(lip.shape), axis=-1).mean())
    model.train()
    return {"val_lip_l2": float(np.mean(errs))}


@torch.no_grad()
def calibrate_latent_scale(model: ModaModel, corpus: MotionCorpus, candidates=(1.0, 1.25, 1.5, 1.75, 2.0),
                           max_utterances: int = 24, seed: int = 0) -> float:
    """Pick the prior scale whose sampled head-angle spread best matches the corpus's.

    A VAE's prior samples are often under-dispersed (the posterior uses a corner of latent space);
    this measures the std of the three head angles over ``max_utterances`` validation utterances
    for each candidate scale and returns the one with the ratio closest to 1 (log scale).
    """
    model.eval()
    utts = corpus.utterances[:max_utterances]
    target = np.concatenate([u["head"][:, :3] for u in utts]).std(0).mean()
    best, best_err = 1.0, float("inf")
    for scale in candidates:
        gen = torch.Generator().manual_seed(seed)
        heads = []
        for u in utts:
            feats = torch.from_numpy(u["features"].astype(np.float32))
            z = torch.randn(1, len(feats) // model.config.latent_stride + 2, model.config.latent_dim,
                            generator=gen) * scale
            out = model.generate(feats, torch.from_numpy(corpus.subjects[u["subject"]].reshape(-1)),
                                 torch.tensor([blink_condition(u["blink_rate"])]), latent=z)
            heads.append(out["head"][:, :3].numpy())
        err = abs(np.log(np.concatenate(heads).std(0).mean() / target))
        if err < best_err:
            best, best_err = scale, err
    model.register_to_config(latent_scale=float(best))
    model.train()
    return float(best)


def train_moda(data, out: str, minutes: Optional[float] = None, steps: Optional[int] = None,
               seed: int = 0, init: Optional[str] = None, batch_size: int = 16, window: int = 150,
               lr: float = 1e-3, log_every: int = 50, features: str = "logmel+phones+opening",
               model_kwargs: Optional[dict] = None, threads: Optional[int] = None,
               ema_decay: Optional[float] = None, feature_noise: float = 0.0,
               time_masks: int = 0, reference_shift: float = 0.0) -> ModaModel:
    """Train stage 1 on the corpus in ``data`` and save it to ``out`` (config.json + safetensors).

    data: a corpus folder, or ``(train, val)`` / ``(train, val, calibration)`` :class:`MotionCorpus`
    objects built by the caller (e.g. :func:`~moda_hub.training.corpus.mix_corpora` of synthetic
    and real footage, speakers normalised; ``calibration``: the corpus whose head motion the prior
    scale is matched to, default ``val``); ``features`` must then be theirs.

    minutes / steps: stop at whichever comes first (at least one must be given).
    init: a pipeline folder (its ``moda/`` subfolder is used) or a component folder to start from.
    threads: torch CPU threads (:func:`~moda_hub.training.threads.set_cpu_threads`).
    ema_decay: keep an exponential moving average of the weights (decay per step, warmed up as
        ``min(ema_decay, (1 + step) / (10 + step))``) and validate, calibrate and save that instead
        of the last step's (None = the last step's). moda-base uses 0.998 (a half-life of ~350 of
        its 3000 steps): the same training run, only the saved weights averaged, lifted real-speech
        lip-sync at both seeds measured (seed 0: 0.460 -> 0.465; seed 1: 0.421 -> 0.432).
    feature_noise, time_masks: input-feature augmentation; reference_shift: windows re-referenced
        to another portrait frame (:class:`WindowBatches`).
    """
    if minutes is None and steps is None:
        raise ValueError("give --minutes or --steps")
    accelerator = Accelerator()
    set_seed(seed)
    set_cpu_threads(accelerator, threads)
    if init:
        sub = os.path.join(init, "moda")
        model = ModaModel.from_pretrained(sub if os.path.isdir(sub) else init)
        features = model.config.features
    calib = None
    if isinstance(data, (tuple, list)):
        train, val = data[:2]
        calib = data[2] if len(data) > 2 else None
        if train.feature_kind != features:
            raise ValueError(f"the corpora hold {train.feature_kind!r} features, not features={features!r}")
    else:
        train = MotionCorpus(data, "train", features)
        val = MotionCorpus(data, "val", features)
    layer = train.states_layer          # the encoder layer the states come from (None: not recorded)
    trained = model.config.audio_state_layer if init else None
    if trained is not None and layer is not None and trained != layer:
        raise ValueError(f"{init!r} was trained on the audio encoder's layer-{trained} "
                         f"states, the corpus holds layer-{layer} ones — recompute them with its encoder")
    if not init:
        kwargs = {"phone_dim": PHONE_COLUMNS[features] or 13, "audio_state_layer": layer, **(model_kwargs or {})}
        model = ModaModel(features=features, audio_dim=train.feature_dim, fps=train.fps, **kwargs)
        model.set_statistics(corpus_statistics(train))
    else:
        widened = widen_statistics(model, train)
    batches = WindowBatches(train, model, window, batch_size, seed + accelerator.process_index,
                            feature_noise=feature_noise, time_masks=time_masks,
                            reference_shift=reference_shift)
    total_steps = steps or 10 ** 9
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model, opt = accelerator.prepare(model, opt)
    start = time.time()
    params = list(accelerator.unwrap_model(model).parameters())
    ema = None if ema_decay is None else [p.detach().clone() for p in params]
    log = RunLog(out, accelerator.is_main_process)
    if init:
        log.line(f"fine-tuning {init}: normalisation widened on " + ", ".join(
            f"{n} {p} channels" for p, n in widened.items()) + " (new data moves them, the old barely did)")
    step, budget = 0, (minutes * 60 if minutes else float("inf"))
    est_steps = total_steps
    for step in range(1, total_steps + 1):
        elapsed = time.time() - start
        if elapsed > budget:
            break
        if minutes and step > 20:                       # cosine schedule over the time budget
            est_steps = min(total_steps, int(step * budget / max(elapsed, 1e-6)))
        frac = min(1.0, step / max(est_steps, 1))
        for g in opt.param_groups:
            g["lr"] = lr * (min(1.0, step / 200) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))))
        feats, cond, extra, targets, mask = next(batches)
        dev = accelerator.device
        kl_weight = 0.03 * min(1.0, step / 500)         # KL warm-up
        losses = accelerator.unwrap_model(model).loss(
            feats.to(dev), cond.to(dev), extra.to(dev), {k: v.to(dev) for k, v in targets.items()},
            frame_mask=mask.to(dev), kl_weight=kl_weight)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            d = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.mul_(d).add_(p.detach(), alpha=1 - d)
        if step % log_every == 0:
            log.line(f"step {step} t {time.time() - start:.0f}s " + " ".join(
                f"{k} {float(v.detach()):.4f}" for k, v in losses.items()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema, params):
                    p.copy_(e)
        metrics = validate(model, val)
        metrics["latent_scale"] = calibrate_latent_scale(model, calib or val)
        metrics.update(steps=step, seconds=round(time.time() - start, 1))
        log.finish(model, metrics)
    return model
