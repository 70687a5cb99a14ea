"""The person-specific NeuralRenderer against the one-shot WarpRenderer on real footage (GRID s1).

    python benchmarks/eval_renderer.py                       # everything, ~70 min on one CPU core
    python benchmarks/eval_renderer.py --train-minutes 5 --max-test 5     # a quick look
    python benchmarks/eval_renderer.py --finetune-minutes 8      # then: stages 1-2 fine-tuned on GRID s1

Steps (each resumable / skipped when its output exists, unless ``--fresh``):

1. ``moda prepare video`` on all 150 clips of ``../shared/train/grid/s1`` -> ``runs/grid_s1/``
   (30 fps, FaceMesh tracking, smoothing, crops); 30 clips held out (seeded split by video).
2. ``moda train --stage renderer`` on the 120 training clips for ``--train-minutes`` (30) of CPU,
   one torch thread -> ``runs/grid_s1_renderer/`` (renderer + personal pipeline). Never committed.
3. On the 30 held-out clips, both renderers start from the clip's first frame (the portrait) and
   are driven by the real (tracked, smoothed) landmarks of the clip's frames; against the real
   frames (the same 256 px face crop): PSNR, SSIM, and temporal stability — the mean absolute
   frame-to-frame difference of the rendered crops next to the real footage's (and a "still"
   baseline: the first frame repeated).
4. Lip-sync (the measure of ``../shared/eval/README.md``): stage 1 of ``pretrained/moda-base``
   drives each renderer from the clip's first frame and the clip's audio at 25 fps; the mouth
   aperture of the generated landmarks, and of the rendered video tracked again with MediaPipe,
   against the real frames' aperture; Pearson r at lag 0 and the best lag within +-3 frames, next
   to the audio RMS-envelope baseline of the same run.

Writes ``benchmarks/results/renderer_grid.json`` and ``.md`` (the table for benchmarks/README.md).
GRID: Cooke et al. 2006, CC BY 4.0 (see ../shared/train/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def clip_arrays(data_dir, video):
    """Real 256 px crops (T, 256, 256, 3), smoothed landmarks (T, 478, 3) px, torso px (T, 2),
    reference frame (H, W, 3) of one prepared video (its first utterance)."""
    with np.load(os.path.join(data_dir, f"shard_{video['shard']:04d}.npz")) as z:
        a, b = int(z["frame_offsets"][0]), int(z["frame_offsets"][1])
        lm, torso, pose = z["landmarks"][a:b], z["torso"][a:b], z["pose"][a:b]
        ref = z["reference_frames"][0]
    crops = np.load(os.path.join(data_dir, f"frames_{video['shard']:04d}.npy"), mmap_mode="r")[a:b]
    return np.asarray(crops), lm, torso * pose[0, 6], ref


def truth_and_portrait(args, video):
    """Real mouth aperture (T,) at 25 fps of a test clip and the portrait to animate it from: the
    clip's first frame, or the prepared reference frame where the first frame has no face."""
    from moda_hub.evaluation import real_mouth_aperture

    truth, first = real_mouth_aperture(video["source"], cache_dir=os.path.join(ROOT, "outputs", "eval_cache_grid"))
    if not np.isfinite(truth[0]):
        first = clip_arrays(args.data, video)[3]
    return truth, first


def frame_metrics(pred, real):
    """PSNR (mean over frames), SSIM, and mean |frame_t - frame_t-1| of pred and of real (0-255)."""
    from moda_hub.models.neural_renderer import psnr, ssim, to_tensor

    ps = [psnr(p, r) for p, r in zip(pred, real)]
    ss = []
    for k in range(0, len(pred), 16):
        ss += ssim(to_tensor(pred[k:k + 16]), to_tensor(real[k:k + 16])).tolist()
    diff = lambda x: float(np.abs(np.diff(x.astype(np.float32), axis=0)).mean())  # noqa: E731
    return dict(psnr=float(np.mean(ps)), ssim=float(np.mean(ss)), temporal=diff(pred), temporal_real=diff(real))


def retrack_aperture(frames):
    from moda_hub.face.landmarks import FaceTracker
    from moda_hub.face.topology import mouth_aperture

    out = []
    with FaceTracker() as tracker:
        for f in frames:
            lm = tracker.process(np.ascontiguousarray(f))
            out.append(float(mouth_aperture(lm)) if lm is not None else float("nan"))
    return np.asarray(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=os.path.join(ROOT, "..", "shared", "train", "grid", "s1"))
    ap.add_argument("--data", default=os.path.join(ROOT, "runs", "grid_s1"))
    ap.add_argument("--run", default=os.path.join(ROOT, "runs", "grid_s1_renderer"))
    ap.add_argument("--base", default=os.path.join(ROOT, "pretrained", "moda-base"))
    ap.add_argument("--train-minutes", type=float, default=30.0)
    ap.add_argument("--val-count", type=int, default=30)
    ap.add_argument("--max-test", type=int, default=None, help="evaluate on at most this many test clips")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="retrain even if a trained renderer exists")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "renderer_grid"))
    ap.add_argument("--finetune-composer-minutes", type=float, default=3.0,
                    help="with --finetune-minutes: stage 2's fine-tuning budget")
    ap.add_argument("--finetune-minutes", type=float, default=0.0,
                    help="also fine-tune stage 1 on the 120 training clips (moda train --stage moda --init base) "
                         "for this long and measure its lip-sync on the test clips (added to an existing report)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.finetune_minutes > 0:
        return finetune(args)
    if not os.path.isdir(args.grid):
        log(f"skipped: no GRID clips at {args.grid}")
        return 0
    from moda_hub.data.video_dataset import list_videos, prepare_videos
    from moda_hub.evaluation import lipsync_scores
    from moda_hub.face.topology import mouth_aperture
    from moda_hub.models.neural_renderer import NeuralRenderer
    from moda_hub.pipeline import ModaPipeline
    from moda_hub.render.warp import WarpRenderer
    from moda_hub.training.train_renderer import train_renderer

    report = dict(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
                          f"torch threads {args.threads}", date=time.strftime("%Y-%m-%d %H:%M"))
    # 1. prepare all clips
    t0 = time.time()
    n = len(list_videos(args.grid))
    manifest = prepare_videos(args.grid, args.data, val_fraction=args.val_count / n, seed=0, progress=False, log=log)
    report["prepare"] = dict(videos=len(manifest["videos"]), seconds=round(time.time() - t0, 1),
                             skipped=len(manifest["skipped"]), failed=len(manifest["failed"]),
                             splits=manifest["splits"])
    # 2. train
    renderer_dir = os.path.join(args.run, "renderer")
    metrics_path = renderer_dir + ".metrics.json"
    if args.fresh or not os.path.isfile(metrics_path):
        log(f"training the renderer for {args.train_minutes} min")
        train_renderer(args.data, args.run, minutes=args.train_minutes, threads=args.threads, base=args.base,
                       log_every=50)
    with open(metrics_path) as f:
        report["training"] = json.load(f)
    neural = NeuralRenderer.from_pretrained(renderer_dir).eval()
    warp = WarpRenderer(output_size=256)
    # 3. frame metrics on the held-out clips, driven by their real landmarks
    tests = [v for v in manifest["videos"] if v["split"] == "val" and v["face_frames"] > 0][:args.max_test]
    rows = []
    cache = args.out + ".frames_partial.json"          # step 3 is kept if step 4 fails
    if os.path.isfile(cache) and not args.fresh:
        with open(cache) as f:
            rows = json.load(f)
    for k, v in enumerate(tests):
        if k < len(rows):
            continue
        real, lm, torso_px, ref = clip_arrays(args.data, v)
        t1 = time.time()
        p = neural.prepare(ref, lm[0], output_size=256)
        fn = neural.render(p, lm)
        tn = time.time() - t1
        t1 = time.time()
        fw = warp.render(warp.prepare(ref, lm[0], output_size=256), lm, torso_px)
        tw = time.time() - t1
        still = np.repeat(real[:1], len(real), 0)
        row = dict(clip=v["name"], frames=len(real), neural=frame_metrics(fn[1:], real[1:]),
                   warp=frame_metrics(fw[1:], real[1:]), still=frame_metrics(still[1:], real[1:]),
                   neural_s_per_frame=tn / len(real), warp_s_per_frame=tw / len(real))
        rows.append(row)
        log(f"[{k + 1}/{len(tests)}] {v['name']}: PSNR neural {row['neural']['psnr']:.2f} warp {row['warp']['psnr']:.2f} "
            f"still {row['still']['psnr']:.2f}; SSIM {row['neural']['ssim']:.3f} / {row['warp']['ssim']:.3f}")
        if k == 0:
            import cv2
            os.makedirs(os.path.join(ROOT, "outputs", "renderer_grid"), exist_ok=True)   # not committed
            sheet = np.concatenate([np.concatenate([real[t], fn[t], fw[t]], 1) for t in (10, 40, 70)
                                    if t < len(real)], 0)
            cv2.imwrite(os.path.join(ROOT, "outputs", "renderer_grid", "real_neural_warp.png"),
                        cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        with open(cache, "w") as f:
            json.dump(rows, f)
    methods = ("neural", "warp", "still")
    report["frames"] = dict(
        clips=rows, crop=256,
        mean={m: {key: float(np.mean([r[m][key] for r in rows])) for key in ("psnr", "ssim", "temporal", "temporal_real")}
              for m in methods},
        neural_s_per_frame=float(np.mean([r["neural_s_per_frame"] for r in rows])),
        warp_s_per_frame=float(np.mean([r["warp_s_per_frame"] for r in rows])))
    # 4. lip-sync with stage 1 driving each renderer
    from moda_hub.speech.audio import load_audio, rms_envelope

    base = ModaPipeline.from_pretrained(args.base)
    base.set_progress_bar_config(disable=True)
    pipes = {"neural": ModaPipeline.from_pretrained(args.base, renderer=neural), "warp": base}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    lrows = []
    for k, v in enumerate(tests):
        src = v["source"]
        truth, first = truth_and_portrait(args, v)
        wav = load_audio(src, sample_rate=16000)
        row = dict(clip=v["name"], rms=lipsync_scores(truth, np.asarray(rms_envelope(wav, 16000, 25), np.float64)))
        for name, pipe in pipes.items():
            out = pipe(image=first, audio=src, fps=25, output_type="np", output_size=256,
                       generator=torch.Generator().manual_seed(0))
            if name == "warp":
                row["landmarks"] = lipsync_scores(truth, mouth_aperture(out.landmarks).astype(np.float64))
            row[f"{name}_video"] = lipsync_scores(truth, retrack_aperture(out.frames))
        lrows.append(row)
        log(f"[{k + 1}/{len(tests)}] lip-sync {v['name']}: r_best landmarks {row['landmarks']['r_best']:.3f} "
            f"neural video {row['neural_video']['r_best']:.3f} warp video {row['warp_video']['r_best']:.3f} "
            f"rms {row['rms']['r_best']:.3f}")
    lm_methods = ("landmarks", "neural_video", "warp_video", "rms")
    report["lipsync"] = dict(clips=lrows, fps=25, stage1=os.path.relpath(args.base, ROOT),
                             mean={m: {key: float(np.nanmean([r[m][key] for r in lrows])) for key in ("r0", "r_best")}
                                   for m in lm_methods})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(report))
    log(f"wrote {args.out}.json and .md")
    print(markdown(report))
    return 0


def finetune(args) -> int:
    """Fine-tune stages 1 and 2 of ``--base`` on the prepared training clips (``moda train --stage moda|composer
    --init``): the composer's dense-mesh error on the test clips before and after, and the landmark
    lip-sync on the test clips (same protocol as step 4) of the base, of the fine-tuned stage 1, and of
    both fine-tuned; adds ``finetune`` to the report written by a full run."""
    from moda_hub.data.video_dataset import load_manifest
    from moda_hub.evaluation import lipsync_scores
    from moda_hub.face.topology import mouth_aperture
    from moda_hub.models.composer import FacialComposer
    from moda_hub.models.moda import ModaModel
    from moda_hub.pipeline import ModaPipeline
    from moda_hub.training.corpus import DenseFrames
    from moda_hub.training.train_composer import train_composer, validate_composer
    from moda_hub.training.train_moda import train_moda

    with open(args.out + ".json") as f:
        report = json.load(f)
    moda_dir = os.path.join(args.run, "moda_finetuned")
    comp_dir = os.path.join(args.run, "composer_finetuned")
    if args.fresh or not os.path.isfile(moda_dir + ".metrics.json"):
        log(f"fine-tuning stage 1 for {args.finetune_minutes} min")
        train_moda(args.data, moda_dir, minutes=args.finetune_minutes, init=args.base, log_every=25,
                   threads=args.threads)
    if args.fresh or not os.path.isfile(comp_dir + ".metrics.json"):
        log(f"fine-tuning stage 2 for {args.finetune_composer_minutes} min")
        train_composer(args.data, comp_dir, minutes=args.finetune_composer_minutes, init=args.base,
                       threads=args.threads)
    training = {}
    for name, d in (("moda", moda_dir), ("composer", comp_dir)):
        with open(d + ".metrics.json") as f:
            training[name] = json.load(f)
    torch.set_num_threads(args.threads)
    test_frames = DenseFrames(args.data, "val")
    composer_error = {"base": validate_composer(FacialComposer.from_pretrained(os.path.join(args.base, "composer")).eval(),
                                                test_frames),
                      "finetuned": validate_composer(FacialComposer.from_pretrained(comp_dir).eval(), test_frames)}
    log(f"composer dense error on the test clips: base {composer_error['base']:.5f} "
        f"fine-tuned {composer_error['finetuned']:.5f}")
    pipes = {"base": ModaPipeline.from_pretrained(args.base),
             "finetuned": ModaPipeline.from_pretrained(args.base),
             "finetuned_both": ModaPipeline.from_pretrained(args.base)}
    pipes["finetuned"].register_modules(moda=ModaModel.from_pretrained(moda_dir))
    pipes["finetuned_both"].register_modules(moda=ModaModel.from_pretrained(moda_dir),
                                             composer=FacialComposer.from_pretrained(comp_dir))
    manifest = load_manifest(args.data)
    tests = [v for v in manifest["videos"] if v["split"] == "val" and v["face_frames"] > 0][:args.max_test]
    rows = []
    for v in tests:
        truth, first = truth_and_portrait(args, v)
        row = {"clip": v["name"]}
        for name, pipe in pipes.items():
            pipe.set_progress_bar_config(disable=True)
            out = pipe(image=first, audio=v["source"], fps=25, output_type="landmarks",
                       generator=torch.Generator().manual_seed(0))
            row[name] = lipsync_scores(truth, mouth_aperture(out.landmarks).astype(np.float64))
        rows.append(row)
        log(f"fine-tune lip-sync {v['name']}: " + " ".join(f"{m} {row[m]['r_best']:.3f}" for m in pipes))
    report["finetune"] = dict(date=time.strftime("%Y-%m-%d %H:%M"), minutes=args.finetune_minutes,
                              composer_minutes=args.finetune_composer_minutes,
                              threads=args.threads, training=training, composer_error=composer_error, clips=rows,
                              mean={m: {k: float(np.nanmean([r[m][k] for r in rows])) for k in ("r0", "r_best")}
                                    for m in pipes},
                              wins={m: int(sum(r[m]["r_best"] > r["base"]["r_best"] for r in rows))
                                    for m in ("finetuned", "finetuned_both")})
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0


def markdown(r) -> str:
    fm, lm, tr = r["frames"]["mean"], r["lipsync"]["mean"], r["training"]
    pr = r["prepare"]
    lines = [
        f"Measured {r['date']} on {r['machine']}. GRID s1: {pr['videos']} clips prepared in {pr['seconds'] / 60:.1f} min "
        f"({pr['skipped']} spans skipped, {pr['failed']} failed); train {pr['splits']['train']['videos']} clips "
        f"({pr['splits']['train']['seconds'] / 60:.1f} min), test {pr['splits']['val']['videos']} clips. "
        f"Renderer: {tr['params'] / 1e6:.2f} M params, {tr['image_size']} px, {tr['steps']} steps in "
        f"{tr['seconds'] / 60:.1f} min (batch {tr['batch_size']}).",
        "",
        f"Frames: {len(r['frames']['clips'])} test clips, every frame after the first, 256 px face crop, "
        "driven by the real landmarks of those frames; both renderers start from the clip's first frame.",
        "",
        "| renderer | PSNR (dB) | SSIM | mean abs frame-to-frame difference (real footage) | s / frame |",
        "|---|---|---|---|---|",
        f"| NeuralRenderer (trained on 120 clips) | **{fm['neural']['psnr']:.2f}** | **{fm['neural']['ssim']:.3f}** | "
        f"{fm['neural']['temporal']:.2f} ({fm['neural']['temporal_real']:.2f}) | {r['frames']['neural_s_per_frame']:.3f} |",
        f"| WarpRenderer (one-shot) | {fm['warp']['psnr']:.2f} | {fm['warp']['ssim']:.3f} | "
        f"{fm['warp']['temporal']:.2f} ({fm['warp']['temporal_real']:.2f}) | {r['frames']['warp_s_per_frame']:.3f} |",
        f"| still first frame (baseline) | {fm['still']['psnr']:.2f} | {fm['still']['ssim']:.3f} | 0.00 "
        f"({fm['still']['temporal_real']:.2f}) | – |",
        "",
        f"Lip-sync (the measure of ../shared/eval/README.md), stage 1 = `{r['lipsync']['stage1']}` from the clip's "
        "first frame and audio, 25 fps, Pearson r against the real frames' mouth aperture:",
        "",
        "| prediction | r (lag 0) | r (best lag ±3) |",
        "|---|---|---|",
        f"| generated landmarks | {lm['landmarks']['r0']:.3f} | {lm['landmarks']['r_best']:.3f} |",
        f"| NeuralRenderer video, tracked again | {lm['neural_video']['r0']:.3f} | {lm['neural_video']['r_best']:.3f} |",
        f"| WarpRenderer video, tracked again | {lm['warp_video']['r0']:.3f} | {lm['warp_video']['r_best']:.3f} |",
        f"| audio RMS envelope (baseline) | {lm['rms']['r0']:.3f} | {lm['rms']['r_best']:.3f} |",
        "",
    ]
    if "finetune" in r:
        ft, n = r["finetune"], len(r["finetune"]["clips"])
        tm, tc = ft["training"]["moda"], ft["training"]["composer"]
        lines += [
            f"Stages 1-2 fine-tuned ({ft.get('date', r['date'])}) on the 120 training clips (`moda train --stage moda|composer --init "
            f"pretrained/moda-base --data runs/grid_s1`, torch threads {ft['threads']}): stage 1 {tm['steps']} steps in "
            f"{tm['seconds'] / 60:.1f} min, stage 2 {tc['steps']} steps in {tc['seconds'] / 60:.1f} min. "
            f"Stage 2's dense-mesh error on the {n} test clips' frames (canonical units): base "
            f"{ft['composer_error']['base']:.5f}, fine-tuned {ft['composer_error']['finetuned']:.5f}. "
            f"Generated landmarks on the {n} test clips:",
            "",
            "| stages 1-2 | r (lag 0) | r (best lag ±3) | clips better than base |",
            "|---|---|---|---|",
            f"| pretrained/moda-base | {ft['mean']['base']['r0']:.3f} | {ft['mean']['base']['r_best']:.3f} | – |",
            f"| stage 1 fine-tuned on GRID s1 | {ft['mean']['finetuned']['r0']:.3f} | "
            f"{ft['mean']['finetuned']['r_best']:.3f} | {ft['wins']['finetuned']} / {n} |",
            f"| stages 1 + 2 fine-tuned | {ft['mean']['finetuned_both']['r0']:.3f} | "
            f"{ft['mean']['finetuned_both']['r_best']:.3f} | {ft['wins']['finetuned_both']} / {n} |",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
