"""Plain-text run logs and the end of a training run, shared by the stage trainers."""
from __future__ import annotations

import json
import os


class RunLog:
    """Lines printed and appended to ``<out>.log`` — beside, not inside, the weights folder.

    ``enabled=False`` (non-main processes under accelerate) makes every call a no-op.
    """

    def __init__(self, out: str, enabled: bool = True):
        self.out = os.path.abspath(out)
        self.file = None
        if enabled:
            os.makedirs(os.path.dirname(self.out), exist_ok=True)
            self.file = open(self.out + ".log", "a")

    def line(self, text: str) -> None:
        if self.file is not None:
            print(text, flush=True)
            self.file.write(text + "\n")

    def finish(self, model, metrics: dict) -> None:
        """Log the final metrics, save the model (config + safetensors) to ``out`` and the
        metrics to ``<out>.metrics.json``."""
        if self.file is None:
            return
        self.line("final " + json.dumps(metrics))
        self.file.close()
        model.save_pretrained(self.out)
        with open(self.out + ".metrics.json", "w") as f:
            json.dump(metrics, f, indent=2)
