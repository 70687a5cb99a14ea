"""Trainers, one per stage, written on accelerate (`moda train --stage ...`)."""
from __future__ import annotations

from typing import Optional


def train_stage(stage: str, data: str, out: str, minutes: Optional[float] = None, steps: Optional[int] = None,
                seed: int = 0, init: Optional[str] = None, **options):
    """Train one stage ("moda", "composer" or "renderer") on the data in ``data``; save it to ``out``.

    ``options`` go to the renderer trainer (``moda_hub.training.train_renderer.train_renderer``);
    for "moda", ``lip_input`` ("all" | "phones" | "phones+energy" | "phones+bands", see ``ModaModel``)
    sets what a model trained from scratch feeds its lips (the shipped recipe: "phones+bands") and
    ``ema_decay`` whether the saved weights are a moving average (the shipped recipe: 0.998),
    ``features`` what it hears (``moda_hub.speech.kinds.FEATURE_KINDS``; the shipped recipe:
    "whisper-tiny", which needs a corpus with encoder states); ``threads``
    (torch CPU threads, None = the trainer's default) goes to every stage."""
    if stage == "renderer":
        from .train_renderer import train_renderer
        return train_renderer(data, out, minutes=minutes, steps=steps, seed=seed, init=init, **options)
    if stage == "moda":
        from .train_moda import train_moda
        lip_input = options.pop("lip_input", None)
        extra = {"features": options["features"]} if options.get("features") else {}
        return train_moda(data, out, minutes=minutes, steps=steps, seed=seed, init=init, **extra,
                          model_kwargs={"lip_input": lip_input} if lip_input else None,
                          threads=options.get("threads"), ema_decay=options.get("ema_decay"))
    if stage == "composer":
        from .train_composer import train_composer
        return train_composer(data, out, minutes=minutes, steps=steps, seed=seed, init=init,
                              threads=options.get("threads"))
    raise ValueError(f"unknown stage {stage!r} — use moda, composer or renderer")
