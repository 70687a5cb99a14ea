"""Trainers, one per stage, written on accelerate (`moda train --stage ...`)."""
from __future__ import annotations

from typing import Optional


def train_stage(stage: str, data: str, out: str, minutes: Optional[float] = None, steps: Optional[int] = None,
                seed: int = 0, init: Optional[str] = None):
    """Train one stage ("moda" or "composer") on the corpus in ``data`` and save it to ``out``."""
    if stage == "moda":
        from .train_moda import train_moda
        return train_moda(data, out, minutes=minutes, steps=steps, seed=seed, init=init)
    if stage == "composer":
        from .train_composer import train_composer
        return train_composer(data, out, minutes=minutes, steps=steps, seed=seed, init=init)
    raise ValueError(f"unknown stage {stage!r} — use moda or composer")
