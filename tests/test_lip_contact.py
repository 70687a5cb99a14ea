"""Lips meet but never cross: face/lip_contact.keep_lips_apart, alone and inside the pipeline."""
import numpy as np
import torch

from conftest import ROOT
from moda_hub.face.lip_contact import LIP_PAIRS, keep_lips_apart
from moda_hub.face.subject import prepare_subject
from moda_hub.face.template import canonical_template
from moda_hub.face.topology import LIPS


def test_crossed_pairs_meet_halfway_and_nothing_else_moves():
    c = canonical_template()
    mesh = np.repeat(c[None], 4, axis=0).copy()
    mesh[1, 13, 1] = c[14, 1] + 0.05               # upper inner lip 0.05 below the lower one
    mesh[2, 87, 1] = c[82, 1] - 0.02               # lower lip raised above its upper partner
    out = keep_lips_apart(mesh)
    gaps = out[:, LIP_PAIRS[:, 1], 1] - out[:, LIP_PAIRS[:, 0], 1]
    assert (gaps >= 0).all()
    assert np.isclose(out[1, 13, 1], out[1, 14, 1]) and np.isclose(out[1, 13, 1], c[14, 1] + 0.025)
    assert np.isclose(out[2, 82, 1], c[82, 1] - 0.01)
    moved = np.abs(out - mesh).sum(axis=-1) > 0
    assert moved.sum() == 4 and moved[1, [13, 14]].all() and moved[2, [82, 87]].all()
    assert np.array_equal(out[[0, 3]], mesh[[0, 3]])


def test_open_or_touching_lips_come_back_untouched():
    c = canonical_template()
    assert keep_lips_apart(c) is c
    touching = c.copy()
    touching[LIP_PAIRS[:, 0], 1] = touching[LIP_PAIRS[:, 1], 1]
    assert keep_lips_apart(touching) is touching


def test_pipeline_never_draws_crossed_lips(shipped_pipe):
    """A lip motion that pushes the upper lip far below the lower one (what a strong closing
    offset does on an open-mouth portrait) gives landmarks whose inner lips meet, not cross."""
    t = 6
    lip = np.zeros((t, len(LIPS), 3), np.float32)
    upper = np.isin(LIPS, LIP_PAIRS[:, 0])
    lip[:, upper, 1] = np.linspace(0.0, 0.3, t)[:, None]     # canonical units, y down
    motion = dict(lip=lip, eye=np.zeros((t, 60, 3), np.float32), head=np.zeros((t, 7), np.float32),
                  torso=np.zeros((t, 2), np.float32))
    with torch.no_grad():
        lm = shipped_pipe.compose_landmarks(prepare_subject(str(ROOT / "examples" / "portrait.png")), motion)    # (t, 478, 3) image px
    gap_px = lm[:, LIP_PAIRS[:, 1], 1] - lm[:, LIP_PAIRS[:, 0], 1]
    assert (gap_px > -0.5).all(), gap_px.min()                # a near-frontal face: image y ~ canonical y
    assert gap_px[-1].max() < 0.5                            # pushed hard: the lips meet
