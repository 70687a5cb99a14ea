"""Stage-3 trainer: a person's NeuralRenderer on their own prepared video (``moda train --stage renderer``).

Data: a folder made by ``moda prepare video`` (:mod:`moda_hub.data.video_dataset`): face crops
and the smoothed landmarks of every frame. Each training example is one target frame ``t`` of a
training video with

- its landmark sketch (what to draw) and the clip's portrait warped to it by the WarpRenderer
  (the first guess the network corrects),
- the clip's first frame as the reference (the portrait, as at inference), and
- a previous frame, as the renderer will see it at inference: for most rows the renderer's
  *own* output of the frame before, from rollouts that follow clips frame by frame across
  training steps (:class:`Batches`; so it learns to correct its own errors instead of copying
  and accumulating them), for the others the real frame ``t - 1`` with noise (teacher forcing)
  or the reference itself (the first frame of a clip).

Losses: L1 + 0.5 (1 - SSIM), plus an optional PatchGAN hinge loss (``gan_weight``).
Runs as is on one CPU and unchanged under ``accelerate launch``; seeded; plain log lines; weights
saved as safetensors (``save_pretrained``) every ``save_every`` steps and at the end. Validation
renders whole held-out clips frame by frame from their first frame (exactly as the pipeline
would), and reports PSNR / SSIM against the real frames, before training and after.

Defaults depend on the device (``defaults_for``): a CPU trains a small net on a 128 px grid
(about 1 s a step on one core); a GPU a wider one on a 256 px grid with the discriminator. The
output is the dataset's crop size (256 px) either way: the correction is upsampled to it.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..data.video_dataset import load_manifest
from ..errors import InvalidParameterError
from ..models.neural_renderer import NeuralRenderer, PatchDiscriminator, psnr, ssim, to_tensor
from ..render.crop import CropBox
from .runlog import RunLog
from .threads import set_cpu_threads


def defaults_for(device_type: str) -> dict:
    """Model and batch settings that train in sensible time on a CPU core or a GPU."""
    if device_type == "cuda":
        return dict(image_size=256, base_channels=32, channel_mult=[1, 2, 4, 8, 8], batch_size=8, gan_weight=0.05)
    return dict(image_size=128, base_channels=16, channel_mult=[1, 2, 4, 8, 8], batch_size=4, gan_weight=0.0)


class VideoFrames:
    """The clips (utterances) of one split of a prepared video dataset.

    clips: one dict per utterance: ``frames`` (T, K, K, 3) uint8 real face crops (memory-mapped),
    ``landmarks_px`` (T, 478, 3) float32 full-frame pixels (smoothed), ``landmarks`` the same in
    canvas pixels, ``portrait`` (H, W, 3) uint8 the clip's first frame, ``torso_px`` (T, 2),
    ``video``, ``index``. Consecutive rows of a clip are consecutive 30 fps frames; K is the
    dataset's ``crop_size``.
    """

    def __init__(self, data_dir: str, split: str, max_videos: Optional[int] = None):
        manifest = load_manifest(data_dir)
        self.manifest = manifest
        self.canvas_size = int(manifest["crop_size"])
        videos = [v for v in manifest["videos"] if v["split"] == split and v["face_frames"] > 0]
        if max_videos is not None:
            videos = videos[:max_videos]
        if not videos:
            raise InvalidParameterError(f"the dataset {data_dir!r} has no {split!r} video with a face — "
                                        "prepare more videos, or change --val-fraction")
        self.clips: List[dict] = []
        K = self.canvas_size
        for v in videos:
            with np.load(os.path.join(data_dir, f"shard_{v['shard']:04d}.npz")) as z:
                offsets, lm, boxes, refs = z["frame_offsets"], z["landmarks"], z["boxes"], z["reference_frames"]
                torso, pose = z["torso"], z["pose"]
                hw = tuple(int(x) for x in z["image_hw"])
            crops = np.load(os.path.join(data_dir, f"frames_{v['shard']:04d}.npy"), mmap_mode="r")
            for j in range(len(offsets) - 1):
                a, b = int(offsets[j]), int(offsets[j + 1])
                x0, y0, side = (float(q) for q in boxes[j][:3])
                box = CropBox(x0=x0, y0=y0, width=K, height=K, scale=K / side, image_hw=hw)
                self.clips.append(dict(frames=crops[a:b], landmarks_px=lm[a:b], landmarks=box.to_canvas(lm[a:b]),
                                       portrait=refs[j], torso_px=torso[a:b] * pose[a, 6], video=v["name"],
                                       index=j))
        self.num_frames = sum(len(c["frames"]) for c in self.clips)


class Batches:
    """Training examples (see the module docstring), as CPU tensors.

    Every clip's portrait is its first frame, warped by the model's WarpRenderer to the target
    meshes (the first guess the network corrects). Rows of a batch are of two kinds:

    - *rollout* rows (``rollouts`` of them): each follows one clip frame after frame over
      successive steps, and its previous frame is the renderer's **own output** of the step before
      (:meth:`update`), exactly as at inference — so the renderer learns to correct its own
      errors instead of drifting. A rollout runs ``rollout_frames`` frames, then a new one starts:
      half the time at the clip's first frame with the reference as previous frame (the start of
      a clip at inference), otherwise at a random frame from the real frame before it;
    - *teacher-forcing* rows: a random frame, the real previous frame with noise as previous
      frame (or, with ``p_start``, the reference: a clip's first frame).
    """

    def __init__(self, data: VideoFrames, model: NeuralRenderer, batch_size: int, seed: int,
                 rollouts: Optional[int] = None, rollout_frames: int = 30, p_start: float = 0.2,
                 noise: float = 0.03):
        if model.config.canvas_size != data.canvas_size:
            raise InvalidParameterError(f"the renderer's canvas_size {model.config.canvas_size} differs from the "
                                        f"dataset's crop_size {data.canvas_size} — prepare the data with "
                                        f"--crop-size {model.config.canvas_size}")
        self.data, self.model, self.B = data, model, batch_size
        self.rng = np.random.default_rng(seed)
        self.n_roll = max(0, min(batch_size, (batch_size * 3) // 4 if rollouts is None else rollouts))
        self.rollout_frames, self.p_start, self.noise = rollout_frames, p_start, noise
        lengths = np.array([len(c["frames"]) for c in data.clips], float)
        self.prob = lengths / lengths.sum()
        self._sketches: Dict[tuple, np.ndarray] = {}
        self._warps: Dict[int, object] = {}
        self.streams: List[Optional[dict]] = [None] * self.n_roll

    def sketch(self, c: int, t: int) -> np.ndarray:
        s = self._sketches.get((c, t))
        if s is None:
            s = self.model.sketch(self.data.clips[c]["landmarks"][t])
            if len(self._sketches) < 60000:                  # bounded cache
                self._sketches[(c, t)] = s
        return s

    def warped(self, c: int, t: int) -> np.ndarray:
        """(K, K, 3) uint8: clip c's portrait warped to its frame t's mesh."""
        clip = self.data.clips[c]
        w = self.model.warp_renderer
        if c not in self._warps:
            self._warps[c] = w.prepare(clip["portrait"], clip["landmarks_px"][0])
        return w.render(self._warps[c], clip["landmarks_px"][t:t + 1], clip["torso_px"][t:t + 1])[0]

    def _grid(self, frame: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.model.to_grid(to_tensor(frame)[None])[0]

    def _new_stream(self) -> dict:
        c = int(self.rng.choice(len(self.prob), p=self.prob))
        clip = self.data.clips[c]
        T = len(clip["frames"])
        if T < 2 or self.rng.random() < 0.5:
            t, prev, prev_sk = min(1, T - 1), None, None                  # from the reference
        else:
            t = int(self.rng.integers(1, T))
            prev, prev_sk = self._grid(clip["frames"][t - 1]), self.sketch(c, t - 1)
        return dict(clip=c, t=t, prev=prev, prev_sketch=prev_sk, left=self.rollout_frames)

    def next(self):
        """-> dict of tensors: target, warped (B, 3, K, K); target_sketch, reference, reference_sketch,
        previous, previous_sketch (B, ., S, S) on the network grid; ``rollout`` (B,) bool."""
        rng, B = self.rng, self.B
        rows = []
        for i in range(self.n_roll):
            st = self.streams[i]
            if st is None or st["left"] <= 0 or st["t"] >= len(self.data.clips[st["clip"]]["frames"]):
                st = self.streams[i] = self._new_stream()
            rows.append((st["clip"], st["t"], st["prev"], st["prev_sketch"], True))
        for _ in range(B - self.n_roll):
            c = int(rng.choice(len(self.prob), p=self.prob))
            clip = self.data.clips[c]
            T = len(clip["frames"])
            t = int(rng.integers(1, T)) if T > 1 else 0
            if t == 0 or rng.random() < self.p_start:
                rows.append((c, t, None, None, False))
            else:
                g = self._grid(clip["frames"][t - 1])
                sigma = float(rng.uniform(0, self.noise))
                g = (g + 2 * sigma * torch.from_numpy(rng.standard_normal(g.shape).astype(np.float32))).clamp(-1, 1)
                rows.append((c, t, g, self.sketch(c, t - 1), False))
        out = {k: [] for k in ("target", "warped", "target_sketch", "reference", "reference_sketch", "previous",
                               "previous_sketch")}
        for c, t, prev, prev_sk, _ in rows:
            clip = self.data.clips[c]
            ref = self._grid(clip["frames"][0])
            out["target"].append(to_tensor(clip["frames"][t])); out["warped"].append(to_tensor(self.warped(c, t)))
            out["target_sketch"].append(torch.from_numpy(self.sketch(c, t)))
            out["reference"].append(ref); out["reference_sketch"].append(torch.from_numpy(self.sketch(c, 0)))
            out["previous"].append(ref if prev is None else prev)
            out["previous_sketch"].append(torch.from_numpy(self.sketch(c, 0) if prev_sk is None else prev_sk))
        batch = {k: torch.stack(v) for k, v in out.items()}
        batch["rollout"] = torch.tensor([r[4] for r in rows])
        return batch

    def update(self, pred: torch.Tensor) -> None:
        """Advance the rollouts with this step's outputs ``pred`` (B, 3, K, K) (rows as :meth:`next`)."""
        with torch.no_grad():
            grid = self.model.to_grid(pred.detach().float().cpu())
        for i, st in enumerate(self.streams):
            st["prev"], st["prev_sketch"] = grid[i], self.sketch(st["clip"], st["t"])
            st["t"] += 1
            st["left"] -= 1


@torch.no_grad()
def render_clip(model: NeuralRenderer, clip: dict, max_frames: Optional[int] = None) -> np.ndarray:
    """Render a clip from its first frame, frame by frame, exactly as the pipeline does
    (``prepare`` + ``render`` at the canvas size); (T, K, K, 3) uint8."""
    T = len(clip["frames"]) if max_frames is None else min(len(clip["frames"]), max_frames)
    p = model.prepare(clip["portrait"], clip["landmarks_px"][0], output_size=int(model.config.canvas_size))
    return model.render(p, clip["landmarks_px"][:T], clip["torso_px"][:T])


@torch.no_grad()
def validate(model: NeuralRenderer, data: VideoFrames, max_clips: int = 8, max_frames: int = 60) -> dict:
    """Mean PSNR (dB) and SSIM of clips rendered from their first frame against the real frames
    (frames 1.. of each clip; frame 0 is the portrait itself)."""
    was_training = model.training
    model.eval()
    ps, ss = [], []
    for clip in data.clips[:max_clips]:
        pred = render_clip(model, clip, max_frames)
        real = np.asarray(clip["frames"][:len(pred)])
        ps += [psnr(pred[t], real[t]) for t in range(1, len(pred))]
        ss.append(float(ssim(to_tensor(pred[1:]), to_tensor(real[1:])).mean()))
    model.train(was_training)
    return {"val_psnr": float(np.mean(ps)), "val_ssim": float(np.mean(ss))}


def train_renderer(data: str, out: str, minutes: Optional[float] = None, steps: Optional[int] = None,
                   seed: int = 0, init: Optional[str] = None, batch_size: Optional[int] = None,
                   image_size: Optional[int] = None, base_channels: Optional[int] = None,
                   channel_mult: Optional[list] = None, lr: float = 5e-4, gan_weight: Optional[float] = None,
                   ssim_weight: float = 0.5, log_every: int = 25, save_every: int = 500,
                   val_clips: int = 8, val_frames: int = 60, threads: Optional[int] = None,
                   base: Optional[str] = None, pipeline_out: Optional[str] = None,
                   max_videos: Optional[int] = None, gan_start: int = 200) -> NeuralRenderer:
    """Train a NeuralRenderer on the train split of ``data`` and save it to ``out``.

    Args:
        data: a prepared video dataset (``moda prepare video``).
        out: the run folder: ``out/renderer`` (config.json + safetensors), ``out/renderer.log``,
            ``out/renderer.metrics.json`` and, with ``base``, the personal pipeline ``out/pipeline``.
        minutes / steps: stop at whichever comes first (at least one).
        init: a renderer folder (or a pipeline folder with a ``renderer/`` NeuralRenderer) to
            continue from; its architecture is kept.
        batch_size, image_size, base_channels, channel_mult, gan_weight: None = the device's
            defaults (:func:`defaults_for`).
        threads: torch CPU threads (default: the cores, shared between accelerate processes).
        base: a pipeline (stages 1-2) to make a personal pipeline with; pipeline_out: where it goes
            (default ``out/pipeline``).
        max_videos: use at most this many training videos (quick runs).
        gan_start: the discriminator trains from this step on, the generator's adversarial loss
            from ``gan_start + 50`` (reconstruction first).

    Returns:
        the trained renderer (on the CPU, eval mode).
    """
    if minutes is None and steps is None:
        raise InvalidParameterError("give --minutes or --steps")
    run_dir, out = out, os.path.join(out, "renderer")
    accelerator = Accelerator()
    set_seed(seed)
    dev = accelerator.device
    set_cpu_threads(accelerator, threads)
    d = defaults_for(dev.type)
    if init:
        sub = os.path.join(init, "renderer")
        model = NeuralRenderer.from_pretrained(sub if os.path.isdir(sub) else init)
    train = VideoFrames(data, "train", max_videos)
    val = VideoFrames(data, "val")
    if not init:
        model = NeuralRenderer(image_size=image_size or d["image_size"], canvas_size=train.canvas_size,
                               base_channels=base_channels or d["base_channels"],
                               channel_mult=channel_mult or d["channel_mult"])
    S = model.config.image_size
    batch_size = batch_size or d["batch_size"]
    gan_weight = d["gan_weight"] if gan_weight is None else gan_weight
    log = RunLog(out, accelerator.is_main_process)
    n_params = sum(p.numel() for p in model.parameters())
    log.line(f"renderer: {n_params / 1e6:.2f} M params, {S} px, batch {batch_size}, gan {gan_weight}, "
             f"{len(train.clips)} train clips ({train.num_frames} frames), {len(val.clips)} val clips, device {dev}")
    metrics: dict = {}
    if accelerator.is_main_process and not init:
        before = validate(model, val, val_clips, val_frames)
        metrics.update({"untrained_" + k: v for k, v in before.items()})
        log.line(f"untrained val_psnr {before['val_psnr']:.2f} val_ssim {before['val_ssim']:.4f}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    disc = d_opt = None
    if gan_weight > 0:
        disc = PatchDiscriminator(3 + model.config.sketch_channels)
        d_opt = torch.optim.AdamW(disc.parameters(), lr=lr, betas=(0.5, 0.99))
        model, opt, disc, d_opt = accelerator.prepare(model, opt, disc, d_opt)
    else:
        model, opt = accelerator.prepare(model, opt)
    net = accelerator.unwrap_model(model)
    batches = Batches(train, net, batch_size, seed + 1000 * accelerator.process_index)
    total = steps or 10 ** 9
    budget = minutes * 60 if minutes else float("inf")
    start, est, step = time.time(), total, 0
    for step in range(1, total + 1):
        elapsed = time.time() - start
        if elapsed > budget:
            step -= 1
            break
        if minutes and step > 10:                            # cosine schedule over the time budget
            est = min(total, int(step * budget / max(elapsed, 1e-6)))
        frac = min(1.0, step / max(est, 1))
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        b = {k: v.to(dev) for k, v in batches.next().items()}
        pred = model(b["warped"], b["target_sketch"], b["reference"], b["reference_sketch"], b["previous"],
                     b["previous_sketch"])
        batches.update(pred)
        losses = net.loss(pred, b["target"], ssim_weight)
        loss = losses["loss"]
        if disc is not None and step > gan_start + 50:
            fake_in = torch.cat([net.to_grid(pred), b["target_sketch"]], 1)
            g_adv = -disc(fake_in).mean()
            loss = loss + gan_weight * g_adv
            losses["g_adv"] = g_adv
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if disc is not None and step > gan_start:
            real_in = torch.cat([net.to_grid(b["target"]), b["target_sketch"]], 1)
            fake_in = torch.cat([net.to_grid(pred.detach()), b["target_sketch"]], 1)
            d_loss = F.relu(1 - disc(real_in)).mean() + F.relu(1 + disc(fake_in)).mean()
            d_opt.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            d_opt.step()
            losses["d"] = d_loss
        if step % log_every == 0:
            log.line(f"step {step} t {time.time() - start:.0f}s " + " ".join(
                f"{k} {float(v.detach()):.4f}" for k, v in losses.items()))
        if save_every and step % save_every == 0 and accelerator.is_main_process:
            net.save_pretrained(out)
    accelerator.wait_for_everyone()
    net = accelerator.unwrap_model(model).cpu().eval()
    if accelerator.is_main_process:
        metrics.update(validate(net, val, val_clips, val_frames))
        metrics.update(steps=step, seconds=round(time.time() - start, 1), train_clips=len(train.clips),
                       train_frames=train.num_frames, val_clips=min(val_clips, len(val.clips)),
                       image_size=S, batch_size=batch_size, gan_weight=gan_weight, params=n_params)
        log.finish(net, metrics)
        if base:
            folder = pipeline_out or os.path.join(run_dir, "pipeline")
            save_personal_pipeline(net, base, folder, data, metrics)
            log_path = os.path.abspath(out) + ".log"
            with open(log_path, "a") as f:
                f.write(f"personal pipeline -> {folder}\n")
            print(f"personal pipeline -> {folder}", flush=True)
    return net


def save_personal_pipeline(renderer: NeuralRenderer, base: str, folder: str, data: str, metrics: dict,
                           name: Optional[str] = None) -> str:
    """Write a personal pipeline: ``base``'s stages 1-2 with ``renderer`` as stage 3, and a model
    card from ``model_cards/personal.md`` filled with the training data and ``metrics``.
    Returns ``folder``."""
    from ..pipeline import ModaPipeline

    pipe = ModaPipeline.from_pretrained(base, renderer=renderer)
    pipe.save_pretrained(folder, model_card=personal_model_card(renderer, base, data, metrics, name))
    return folder


def personal_model_card(renderer: NeuralRenderer, base: str, data: str, metrics: dict,
                        name: Optional[str] = None) -> str:
    """The personal pipeline's README.md from the template ``model_cards/personal.md``."""
    from string import Template

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "model_cards", "personal.md")
    if not os.path.isfile(path):
        raise InvalidParameterError(f"the model card template {path!r} is missing — reinstall moda-hub from its "
                                    "repository (`pip install -e .`)")
    manifest = load_manifest(data)
    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    sources = sorted({os.path.dirname(v["source"]) for v in manifest["videos"]})
    cfg = renderer.config

    def f(key, fmt="{:.2f}"):
        return fmt.format(metrics[key]) if key in metrics else "n/a"

    with open(path, encoding="utf-8") as fh:
        template = Template(fh.read())
    return template.safe_substitute(
        name=name or os.path.basename(os.path.normpath(data)), base=base,
        data=os.path.abspath(data), sources=", ".join(sources),
        train_videos=tr["videos"], train_minutes=f"{tr['seconds'] / 60:.1f}", train_frames=tr["frames"],
        val_videos=va["videos"], val_minutes=f"{va['seconds'] / 60:.1f}", skipped=len(manifest["skipped"]),
        image_size=cfg.image_size, base_channels=cfg.base_channels, channel_mult=list(cfg.channel_mult),
        params=f"{sum(p.numel() for p in renderer.parameters()) / 1e6:.2f}",
        steps=metrics.get("steps", "n/a"), minutes=f"{metrics.get('seconds', 0) / 60:.1f}",
        batch_size=metrics.get("batch_size", "n/a"), gan_weight=metrics.get("gan_weight", "n/a"),
        val_psnr=f("val_psnr"), val_ssim=f("val_ssim", "{:.3f}"),
        untrained_psnr=f("untrained_val_psnr"), untrained_ssim=f("untrained_val_ssim", "{:.3f}"),
        val_clips=metrics.get("val_clips", "n/a"), date=time.strftime("%Y-%m-%d"))
