"""Lip-sync on real speech, one-to-many and blink checks: a thin wrapper of
:func:`moda_hub.evaluation.main` (see that module for the measures).

    python benchmarks/eval_lipsync.py                                   # baselines (+ model if trained)
    python benchmarks/eval_lipsync.py --model-dir pretrained/moda-base --data data/synthetic

Reads ``../shared/eval/dev`` when present (skips what is missing), caches the real clips'
MediaPipe ground truth in ``outputs/eval_cache/``, prints a table and writes
``outputs/eval.json``. Runs with one torch thread unless ``--threads`` says otherwise.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moda_hub.evaluation import main  # noqa: E402

if __name__ == "__main__":
    main()
