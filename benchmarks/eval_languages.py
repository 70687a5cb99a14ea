"""Does the mouth move with speech in languages other than English? (issue 17's check)

    python benchmarks/eval_languages.py [--model pretrained/moda-base] [--out outputs/languages.json]

espeak-ng speaks a few sentences in each language (its own voice for the language); the pipeline
animates ``examples/portrait.png`` with it (landmarks only, seed 0). Per language:

- ``depth``: (p90 - p10) of the generated mouth aperture (inner-lip gap / outer-eye-corner
  distance) over the same for English — how far the mouth moves next to English speech
  (a collapse to a fixed pose gives ~0);
- ``r_rms``: best-lag (+-3 frames) Pearson r of the aperture with the speech's loudness envelope
  (``moda_hub.speech.audio.rms_envelope``): does the mouth open when there is voice and close in the pauses;
- ``speech_open`` / ``pause_open``: mean aperture over frames with speech / the pauses between
  sentences (``moda_hub.motion.blinks.speech_pauses``).

No ground truth exists for synthetic speech, so these say "moves with the speech, no collapse",
not "correct visemes". Not a test: a measurement (prints a table, writes JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SENTENCES = {
    "en-us": "The weather was fine this morning. We walked to the market and bought some bread. "
             "Later we met a friend and talked for an hour.",
    "de": "Das Wetter war heute Morgen schön. Wir gingen zum Markt und kauften Brot. "
          "Später trafen wir einen Freund und redeten eine Stunde lang.",
    "fr": "Le temps était beau ce matin. Nous sommes allés au marché acheter du pain. "
          "Plus tard, nous avons rencontré un ami et parlé pendant une heure.",
    "es": "El tiempo era bueno esta mañana. Fuimos al mercado y compramos pan. "
          "Más tarde vimos a un amigo y hablamos durante una hora.",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "pretrained", "moda-base"))
    ap.add_argument("--image", default=os.path.join(ROOT, "examples", "portrait.png"))
    ap.add_argument("--out", default=os.path.join(ROOT, "outputs", "languages.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from moda_hub import ModaPipeline
    from moda_hub.speech.audio import rms_envelope, synthesize_speech
    from moda_hub.motion.blinks import speech_pauses
    from moda_hub.evaluation import pearson_best_lag
    from moda_hub.face.topology import mouth_aperture

    torch.set_num_threads(1)
    pipe = ModaPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    fps, rows = 25, {}
    for voice, text in SENTENCES.items():
        wav = synthesize_speech(text, voice=voice)
        out = pipe(image=args.image, audio=(16000, wav), fps=fps, output_type="landmarks",
                   generator=torch.Generator().manual_seed(0))
        ap_ = mouth_aperture(out.landmarks).astype(np.float64)
        env = np.asarray(rms_envelope(wav, 16000, fps), np.float64).reshape(-1)[:len(ap_)]
        r, lag = pearson_best_lag(env, ap_[:len(env)], 3)
        pause = np.zeros(len(ap_), bool)
        for a, b in speech_pauses(wav, 16000):
            pause[int(a * fps):int(b * fps)] = True
        rows[voice] = dict(seconds=round(len(wav) / 16000, 2), spread=float(np.subtract(*np.percentile(ap_, [90, 10]))),
                           r_rms=float(r), lag=int(lag), speech_open=float(ap_[~pause].mean()),
                           pause_open=float(ap_[pause].mean()) if pause.any() else float("nan"))
    en = rows["en-us"]["spread"]
    print(f"{'voice':<7}{'sec':>6}{'depth vs en':>12}{'r vs loudness':>15}{'lag':>5}{'open: speech':>14}{'pauses':>8}")
    for voice, r in rows.items():
        r["depth"] = r["spread"] / max(en, 1e-9)
        print(f"{voice:<7}{r['seconds']:>6.1f}{r['depth']:>12.2f}{r['r_rms']:>15.3f}{r['lag']:>5d}"
              f"{r['speech_open']:>14.3f}{r['pause_open']:>8.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(model=args.model, languages=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
