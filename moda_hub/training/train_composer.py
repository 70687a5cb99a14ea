"""Stage-2 trainer: FacialComposer on (lip, eye, subject) -> dense mesh offset frames.

Written on accelerate like the stage-1 trainer; seeded; safetensors through save_pretrained.
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..models.composer import FacialComposer
from .corpus import DenseFrames
from .runlog import RunLog
from .threads import set_cpu_threads


def train_composer(data: str, out: str, minutes: Optional[float] = None, steps: Optional[int] = None,
                   seed: int = 0, init: Optional[str] = None, batch_size: int = 256, lr: float = 1e-3,
                   log_every: int = 100, threads: Optional[int] = None) -> FacialComposer:
    """Train stage 2 on the dense frames of the corpus in ``data``; save to ``out``.

    threads: torch CPU threads (:func:`~moda_hub.training.threads.set_cpu_threads`)."""
    if minutes is None and steps is None:
        raise ValueError("give --minutes or --steps")
    accelerator = Accelerator()
    set_seed(seed)
    set_cpu_threads(accelerator, threads)
    train, val = DenseFrames(data, "train"), DenseFrames(data, "val")
    if init:
        sub = os.path.join(init, "composer")
        model = FacialComposer.from_pretrained(sub if os.path.isdir(sub) else init)
    else:
        model = FacialComposer()
        model.cond_mean.copy_(torch.from_numpy(train.subjects.reshape(len(train.subjects), -1).mean(0)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model, opt = accelerator.prepare(model, opt)
    rng = np.random.default_rng(seed + accelerator.process_index)
    total = steps or 10 ** 9
    budget = minutes * 60 if minutes else float("inf")
    start, est = time.time(), total
    log = RunLog(out, accelerator.is_main_process)
    step = 0
    for step in range(1, total + 1):
        elapsed = time.time() - start
        if elapsed > budget:
            break
        if minutes and step > 20:
            est = min(total, int(step * budget / max(elapsed, 1e-6)))
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 100) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / est))))
        lip, eye, cond, dense = (t.to(accelerator.device) for t in train.batch(rng, batch_size))
        loss = accelerator.unwrap_model(model).loss(lip, eye, cond, dense)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        if step % log_every == 0:
            log.line(f"step {step} t {elapsed:.0f}s loss {loss.item():.5f}")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model).eval()
        log.finish(model, {"val_dense_l2": validate_composer(model, val), "steps": step,
                           "seconds": round(time.time() - start, 1)})
    return model


@torch.no_grad()
def validate_composer(model: FacialComposer, frames: DenseFrames) -> float:
    """Mean per-vertex L2 error of the dense mesh offsets over ``frames`` (canonical units)."""
    lip, eye, cond, dense = frames.all()
    return float((model(lip, eye, cond) - dense).norm(dim=-1).mean())
