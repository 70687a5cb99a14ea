"""Rebuild pretrained/moda-base from nothing: synthetic corpus -> stage 2 -> stage 1 -> pipeline folder.

    .venv/bin/python scripts/build_moda_base.py --out pretrained/moda-base     # (make train)

Measured on the 2-core CPU (2026-12-02): corpus 3.7 min (2 h of speech), composer 1750 steps
(0.9 min), MODA 3000 steps (13.8 min): 18.6 min in all (limit 45; earlier builds of the same
step counts took 25.4 and 37.3: the machine drifts).
Stage 1 saves the moving average of its weights (``--ema-decay 0.998``), not the last step's. Training runs a fixed number of steps, not a time budget, so the same
command gives the same weights however busy the machine is (``--max-minutes`` caps a stage's time
for quick looks; a capped build is not the documented one).
Stage 1's lips hear the pocketsphinx phone stream (13 viseme classes + the phone's table opening,
``features="logmel+phones+opening"``), a loudness column and five coarse band loudnesses (``--lip-input phones+bands``): the full log-mel spectra of espeak-ng voices do not
carry over to human voices (real-speech lip-sync r 0.32 with them, see model_cards/moda-base.md);
phones, loudness and the broad spectral shape (first formant = jaw opening, tilt) do.
Seeded; the pipeline folder gets model_index.json, one folder per component (config json +
safetensors) and the model card as README.md.
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
    ap.add_argument("--hours", type=float, default=2.0, help="hours of synthetic speech")
    ap.add_argument("--composer-steps", type=int, default=1750)
    ap.add_argument("--moda-steps", type=int, default=3000)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="also stop each training stage after this many minutes (quick looks only)")
    ap.add_argument("--lip-input", default="phones+bands", choices=("all", "phones", "phones+energy", "phones+bands"),
                    help="what stage 1's lips hear (ModaModel lip_input)")
    ap.add_argument("--ema-decay", type=float, default=0.998,
                    help="stage 1 saves a moving average of its weights (see train_moda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reuse-corpus", action="store_true", help="keep an existing corpus in --work")
    args = ap.parse_args(argv)

    import torch
    from moda_hub import FacialComposer, ModaModel, ModaPipeline, WarpRenderer
    from moda_hub.data.synthetic import build_corpus
    from moda_hub.training.train_composer import train_composer
    from moda_hub.training.train_moda import train_moda

    t0 = time.time()
    corpus = os.path.join(args.work, "corpus")
    if not (args.reuse_corpus and os.path.exists(os.path.join(corpus, "manifest.json"))):
        shutil.rmtree(corpus, ignore_errors=True)
        build_corpus(corpus, hours=args.hours, seed=args.seed, workers=args.workers)
    t_corpus = time.time() - t0
    print(f"corpus: {t_corpus / 60:.1f} min", flush=True)
    train_composer(corpus, os.path.join(args.work, "composer"), steps=args.composer_steps,
                   minutes=args.max_minutes, seed=args.seed)
    train_moda(corpus, os.path.join(args.work, "moda"), steps=args.moda_steps, minutes=args.max_minutes,
               seed=args.seed, model_kwargs={"lip_input": args.lip_input}, ema_decay=args.ema_decay)
    pipe = ModaPipeline(moda=ModaModel.from_pretrained(os.path.join(args.work, "moda")),
                        composer=FacialComposer.from_pretrained(os.path.join(args.work, "composer")),
                        renderer=WarpRenderer())
    shutil.rmtree(args.out, ignore_errors=True)
    card_path = os.path.join(ROOT, "model_cards", "moda-base.md")
    card = open(card_path, encoding="utf-8").read() if os.path.exists(card_path) else None
    pipe.save_pretrained(args.out, model_card=card)
    summary = {"corpus_minutes": round(t_corpus / 60, 1), "total_minutes": round((time.time() - t0) / 60, 1),
               "hours": args.hours, "seed": args.seed,
               "composer_steps": args.composer_steps, "moda_steps": args.moda_steps, "max_minutes": args.max_minutes, "lip_input": args.lip_input, "ema_decay": args.ema_decay, "torch": torch.__version__}
    for stage in ("composer", "moda"):
        with open(os.path.join(args.work, stage) + ".metrics.json") as f:
            summary[stage] = json.load(f)
    with open(os.path.join(args.work, "build_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
