"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "moda-base"


@pytest.fixture(scope="module")
def shipped_pipe():
    """The shipped pipeline (pretrained/moda-base), one torch thread, no progress bars."""
    if not (MODEL / "model_index.json").is_file():
        pytest.skip("no trained pipeline at pretrained/moda-base — run `make train`")
    torch.set_num_threads(1)
    from moda_hub import ModaPipeline
    p = ModaPipeline.from_pretrained(str(MODEL))
    p.set_progress_bar_config(disable=True)
    return p
