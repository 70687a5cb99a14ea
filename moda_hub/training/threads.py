"""Torch CPU threads for a trainer (one rule for every stage)."""
from __future__ import annotations

import os
from typing import Optional

import torch


def set_cpu_threads(accelerator, threads: Optional[int] = None) -> None:
    """On a CPU run, set torch's intra-op threads: ``threads``, or by default the machine's cores
    divided over the ``accelerate`` processes (right on an idle machine; on a shared one fewer
    threads than cores avoid oversubscription). GPU runs are left as they are."""
    if accelerator.device.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
