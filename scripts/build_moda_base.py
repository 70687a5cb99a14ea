"""Rebuild pretrained/moda-base: real footage + synthetic corpus -> stage 2 -> stage 1 -> pipeline folder.

    .venv/bin/python scripts/build_moda_base.py --out pretrained/moda-base     # (make train)

Steps (each printed with its time; ``runs/moda-base/build_summary.json`` records them):

1. the ``audio_encoder`` component (Whisper tiny's encoder, converted once by
   ``scripts/convert_whisper_encoder.py``) is read from ``--audio-encoder`` (default: the one in
   ``--out``) and written back into the new folder with its weights unchanged and its
   ``state_layer`` set to ``--state-layer`` (2: stage 1 hears the output of Whisper tiny's second
   of four layers — chosen on the validation speakers, see the model card: clip mean r 1: 0.782,
   2: 0.826, 3: 0.826, 4 (the last, used before): 0.816; speaker mean 2: 0.848, 3: 0.842);
2. real talking faces: ``moda prepare video`` over ``../shared/train`` (GRID, CREMA-D; the
   speaker split of ``moda_hub.data.train_footage``: GRID s16, s27 and CREMA-D 1001 held out
   for validation, s4 trains; ``--val-speakers s4,s16,s27,cremad-1001`` is the split the recipe
   was chosen on), cached in ``runs/moda-base/real`` (a resumed run skips prepared videos), plus
   the encoder's states of each clip's audio;
3. the synthetic corpus (espeak-ng voices on the face rig, with the encoder's states) in
   ``runs/moda-base/corpus`` (``--reuse-corpus`` keeps an existing one whose states come from the
   same encoder layer, and rebuilds one from another);
4. stage 2 (composer) on the synthetic corpus;
5. stage 1 (``features="whisper-tiny"``) on both: ``--real-share`` of the training windows from
   the real footage, the rest synthetic (head, eyes, blinks and the one-to-many latent, phonetic
   coverage); every real speaker's lip motion, and the synthetic rig's, scaled to one amplitude,
   ``--lip-target`` (``moda_hub.training.corpus.normalise_speakers``); two regularisers chosen on
   the validation speakers (``moda_hub.training.train_moda.WindowBatches``): Gaussian noise of
   ``--feature-noise`` (0.5) column standard deviations on the encoder states (stage 1 learns from
   few real voices and must not learn them: validation r 0.796 -> 0.821, 1.0 gave 0.830 on the
   clips but less on the speakers' mean and on CREMA-D), and ``--reference-shift`` (0.5): half the
   real windows re-referenced to a random frame of their clip as the portrait, so stage 1 learns
   to close a mouth photographed open (validation with each clip's widest-open frame as the
   portrait: 0.739 -> 0.834). Measured with layer-2 states and kept off: noise 1.0 (validation r
   0.825 vs 0.826) and ``--footage-copies 2`` (two copies of each real clip at another tape speed
   through the synthetic corpus's recording chain, ``moda_hub.training.footage_augment``: 0.811);
6. ``ModaModel.config.lip_amplitude`` = ``--lip-amplitude``, then the pipeline folder.

The lip amplitude. Faces and trackers move lips by different amounts, so each training speaker
is scaled to one amplitude (``--lip-target``, default the median real training speaker's).
Read GRID commands move the lips less than freer speech: at amplitude 1 the validation depth
(generated / real mouth movement, ``moda evaluate``) is 0.73 (s16) and 0.90 (s27) but 0.42 on
the acted CREMA-D actor. ``--lip-amplitude`` scales the opening measured from the portrait's
*closed* lips (``moda_hub.motion.controls.apply_controls``), which leaves lip-sync r unchanged
(validation, amplitude 1 -> 1.6: 0.834 -> 0.831 with open-mouth portraits, 0.827 -> 0.827 with
the clips' first frames) — unlike scaling the offsets from the portrait's own mouth, or the
training targets, which push an open mouth's lips through each other and cost r on such
portraits (0.834 -> 0.775). The amplitude is set last, by that rule: the value that makes the
geometric mean of the GRID and CREMA-D validation depths 1 — 1.7 for the layer-4 weights of
2026-12-05, **1.9** for the layer-2 ones (at 1.7: s16 1.00, s27 1.61, CREMA-D 0.63, mean 0.89;
at 1.9 GRID moves ~1.4x, CREMA-D ~0.7x as far as the real speakers, validation r unchanged).

Training runs a fixed number of steps, not a time budget, so the same command gives the same
weights however busy the machine is (``--max-minutes`` caps a stage's time for quick looks; a
capped build is not the documented one). Seeded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "pretrained", "moda-base"))
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "moda-base"), help="corpus and logs")
    ap.add_argument("--hours", type=float, default=0.5, help="hours of synthetic speech")
    ap.add_argument("--footage", default=None, help="real training footage (default ../shared/train)")
    ap.add_argument("--real-share", type=float, default=0.5,
                    help="share of stage-1 training windows from the real footage")
    ap.add_argument("--lip-target", default="real-median",
                    help="how far every speaker's lips move in training (see step 5): 'synthetic' (the "
                         "synthetic rig's amplitude), 'real-median' (the median real training speaker's), or "
                         "a number: that many times the median real training speaker's (how far the *generated* "
                         "mouth opens is --lip-amplitude's job: see the docstring)")
    ap.add_argument("--reuse-composer", action="store_true",
                    help="keep the stage-2 composer already trained in --work (development runs)")
    ap.add_argument("--audio-encoder", default=None,
                    help="audio_encoder component folder (default: <out>/audio_encoder)")
    ap.add_argument("--state-layer", type=int, default=2,
                    help="which hidden state of the audio encoder stage 1 hears: the output of this many of "
                         "Whisper tiny's 4 layers (see the docstring)")
    ap.add_argument("--composer-steps", type=int, default=1750)
    ap.add_argument("--moda-steps", type=int, default=1200)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="also stop each training stage after this many minutes (quick looks only)")
    ap.add_argument("--ema-decay", type=float, default=0.998,
                    help="stage 1 saves a moving average of its weights (see train_moda)")
    ap.add_argument("--feature-noise", type=float, default=0.5,
                    help="stage 1: Gaussian noise on the encoder states, times each column's std")
    ap.add_argument("--time-masks", type=int, default=0,
                    help="stage 1: spans of 1-4 frames per training window whose states are masked")
    ap.add_argument("--reference-shift", type=float, default=0.5,
                    help="stage 1: share of real-footage windows re-referenced to a random frame of their clip "
                         "as the portrait (photos taken with the lips apart)")
    ap.add_argument("--footage-copies", type=int, default=0,
                    help="stage 1: augmented copies of each real training clip (tape speed, room, noise, "
                         "channel; moda_hub.training.footage_augment)")
    ap.add_argument("--footage-speed-jitter", type=float, default=0.1,
                    help="tape speeds of the copies: uniform in 1 +- this")
    ap.add_argument("--lip-amplitude", type=float, default=1.9,
                    help="stage 1's ModaModel.config.lip_amplitude: how far the mouth opens from closed lips, "
                         "times the trained amplitude (see the docstring)")
    ap.add_argument("--val-speakers", default=None,
                    help="comma-separated validation speakers (default: moda_hub.data.train_footage.VAL_SPEAKERS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the training stages (1: on a 2-core machine shared with other "
                         "jobs, 2 threads ran 5-10x slower than 1, measured 2026-12-05)")
    ap.add_argument("--reuse-corpus", action="store_true", help="keep an existing corpus in --work")
    ap.add_argument("--prepare-only", action="store_true",
                    help="stop after preparing the real footage and the synthetic corpus (caches in --work)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from moda_hub import FacialComposer, ModaModel, ModaPipeline, WarpRenderer
    from moda_hub.data import train_footage
    from moda_hub.data.synthetic import build_corpus
    from moda_hub.data.video_dataset import add_encoder_states, prepare_videos
    from moda_hub.models.audio_encoder import WhisperTinyEncoder
    from moda_hub.speech.speech_states import set_default_encoder
    from moda_hub.training.corpus import MotionCorpus, lip_target, mix_corpora, normalise_speakers, speaker_lip_scale
    from moda_hub.training.train_composer import train_composer
    from moda_hub.training.footage_augment import augmented_footage
    from moda_hub.training.train_moda import train_moda
    from moda_hub.weights import load_component

    t0 = time.time()
    times = {}
    # 1. the audio encoder (loaded before --out is replaced)
    enc_dir = os.path.abspath(args.audio_encoder or os.path.join(args.out, "audio_encoder"))   # (absolute: not saved)
    if not os.path.isfile(os.path.join(enc_dir, "config.json")):
        sys.exit(f"error: no audio_encoder at {enc_dir!r} — convert it once with "
                 "scripts/convert_whisper_encoder.py, or pass --audio-encoder")
    encoder = load_component(WhisperTinyEncoder, WhisperTinyEncoder.from_pretrained, enc_dir).float().eval()
    if not 1 <= args.state_layer <= encoder.config.encoder_layers:
        sys.exit(f"error: --state-layer {args.state_layer} — use 1..{encoder.config.encoder_layers}")
    encoder.register_to_config(state_layer=args.state_layer)
    set_default_encoder(encoder)                # the corpus builders' default_encoder()
    # 2. real footage, prepared once (cached), with the encoder's states
    real = os.path.join(args.work, "real")
    val_speakers = tuple(args.val_speakers.split(",")) if args.val_speakers else train_footage.VAL_SPEAKERS
    videos, val_names = train_footage.footage(args.footage or train_footage.default_root(), val_speakers)
    prepare_videos(videos, real, crop_size=64, val_names=val_names, seed=args.seed, progress=False)
    add_encoder_states(real, encoder)
    times["real_minutes"] = round((time.time() - t0) / 60, 1)
    print(f"real footage: {times['real_minutes']} min", flush=True)
    # 3. the synthetic corpus
    corpus = os.path.join(args.work, "corpus")
    reuse = args.reuse_corpus and os.path.exists(os.path.join(corpus, "manifest.json"))
    if reuse:
        with open(os.path.join(corpus, "manifest.json")) as f:
            stored = json.load(f)["features"].get("states_layer", encoder.config.encoder_layers)
        if stored != encoder.states_layer():
            print(f"corpus: its states are the encoder's layer {stored}, not {encoder.states_layer()} — rebuilding it",
                  flush=True)
            reuse = False
    if not reuse:
        shutil.rmtree(corpus, ignore_errors=True)
        build_corpus(corpus, hours=args.hours, seed=args.seed, workers=args.workers)
    t_corpus = time.time() - t0
    print(f"corpus: {t_corpus / 60:.1f} min", flush=True)
    if args.prepare_only:
        return 0
    # 4. stage 2
    if not (args.reuse_composer and os.path.exists(os.path.join(args.work, "composer.metrics.json"))):
        train_composer(corpus, os.path.join(args.work, "composer"), steps=args.composer_steps,
                       minutes=args.max_minutes, seed=args.seed, threads=args.threads)
    # 5. stage 1 on real + synthetic, real speakers' lip motion scaled to the synthetic corpus's
    kind = "whisper-tiny"
    synth, synth_val = MotionCorpus(corpus, "train", kind), MotionCorpus(corpus, "val", kind)
    real_train, real_val = MotionCorpus(real, "train", kind), MotionCorpus(real, "val", kind)
    if args.footage_copies:
        copies = augmented_footage(real, "train", args.footage_copies, encoder, seed=args.seed,
                                   speed_jitter=args.footage_speed_jitter)
        real_train.utterances += copies
        print(f"real footage: {len(copies)} augmented copies added", flush=True)
    sources = {v["name"]: v["source"] for v in json.load(open(os.path.join(real, "manifest.json")))["videos"]}
    for c in (real_train, real_val):
        for u in c.utterances:
            u["speaker"] = train_footage.speaker_of(u["speaker"], sources.get(u["speaker"], ""))
    # every real training speaker's lips, and the synthetic rig's, moved as far as --lip-target
    try:
        target = lip_target(args.lip_target, speaker_lip_scale(real_train),
                            speaker_lip_scale(synth, lambda u: "synthetic")["synthetic"])
    except ValueError as err:
        sys.exit(f"error: {err}")
    factors = normalise_speakers(real_train, target)
    factors["synthetic"] = normalise_speakers(synth, target, lambda u: "synthetic")["synthetic"]
    print(f"lip motion scaled to {args.lip_target} ({target:.4f} canonical units): " + ", ".join(
        f"{s} x{f:.2f}" for s, f in sorted(factors.items()) if not s.startswith("grid-")), flush=True)
    train = mix_corpora([synth, real_train], [1 - args.real_share, args.real_share])
    train_moda((train, real_val, synth_val), os.path.join(args.work, "moda"), steps=args.moda_steps,
               minutes=args.max_minutes, seed=args.seed, features=kind, model_kwargs={"lip_input": "all"},
               feature_noise=args.feature_noise, time_masks=args.time_masks, reference_shift=args.reference_shift,
               ema_decay=args.ema_decay, threads=args.threads)
    moda = ModaModel.from_pretrained(os.path.join(args.work, "moda"))
    moda.register_to_config(lip_amplitude=float(args.lip_amplitude))
    pipe = ModaPipeline(moda=moda,
                        composer=FacialComposer.from_pretrained(os.path.join(args.work, "composer")),
                        renderer=WarpRenderer(), audio_encoder=encoder.to(torch.float16))
    shutil.rmtree(args.out, ignore_errors=True)
    card_path = os.path.join(ROOT, "model_cards", "moda-base.md")
    card = open(card_path, encoding="utf-8").read() if os.path.exists(card_path) else None
    pipe.save_pretrained(args.out, model_card=card)
    summary = {"corpus_minutes": round(t_corpus / 60, 1), "total_minutes": round((time.time() - t0) / 60, 1),
               "hours": args.hours, "seed": args.seed,
               "composer_steps": args.composer_steps, "moda_steps": args.moda_steps, "max_minutes": args.max_minutes, "real_share": args.real_share,
               "features": kind, "state_layer": args.state_layer, "lip_target": args.lip_target, "lip_amplitude": args.lip_amplitude,
               "feature_noise": args.feature_noise, "footage_copies": args.footage_copies,
               "footage_speed_jitter": args.footage_speed_jitter, "reference_shift": args.reference_shift,
               "val_speakers": list(val_speakers), "lip_factors": factors, "ema_decay": args.ema_decay, "torch": torch.__version__,
               **times}
    for stage in ("composer", "moda"):
        with open(os.path.join(args.work, stage) + ".metrics.json") as f:
            summary[stage] = json.load(f)
    with open(os.path.join(args.work, "build_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
