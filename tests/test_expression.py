"""expression_scale: how much of the portrait's own mouth and brow expression the speaking face
keeps. 0 moves a smiling portrait's mouth corners towards the neutral template, 1 gives the
frames of a call without the option, 1.5 goes the other way; out-of-range values are refused."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from moda_hub.speech.audio import load_audio
from moda_hub.errors import InvalidParameterError
from moda_hub.face import topology as topo
from moda_hub.face.expression import _closed_lips, neutral_offsets, relax_expression
from moda_hub.face.pose import POSE_POINTS, to_canonical
from moda_hub.face.subject import prepare_subject
from moda_hub.face.template import canonical_template

from conftest import ROOT

CORNERS = [61, 291]
CENTRE = [0, 13, 14, 17]


@pytest.fixture(scope="module")
def smiling():
    """The astronaut smiles broadly, showing her teeth."""
    return skimage.data.astronaut()[40:260, 120:330]


@pytest.fixture(scope="module")
def speech():
    return load_audio(str(ROOT / "examples" / "speech.wav"), 16000)[4000:13600]


def corner_error(canonical_frames: np.ndarray) -> np.ndarray:
    """(T,) distance of the mouth corners, relative to the mouth centre, from the neutral template's
    (closed lips), canonical units."""
    t = canonical_template()
    neutral = _closed_lips(t)[[list(topo.LIPS).index(i) for i in CORNERS]] - t[CENTRE].mean(0)
    rel = canonical_frames[:, CORNERS] - canonical_frames[:, CENTRE].mean(1, keepdims=True)
    return np.linalg.norm(rel[..., :2] - neutral[None, :, :2], axis=-1).mean(1)


def test_relax_expression_leaves_the_mesh_alone_at_1_and_never_moves_skull_or_eyes(smiling):
    c = prepare_subject(smiling).canonical
    assert relax_expression(c, 1.0) is c
    d = neutral_offsets(c)
    fixed = np.concatenate([POSE_POINTS, topo.LEFT_EYE, topo.RIGHT_EYE, np.arange(468, 478)])
    assert np.abs(d[fixed]).max() == 0.0
    assert np.abs(d[topo.LIPS]).max() > 0.02                       # the smile is really changed
    half = relax_expression(c, 0.5)
    np.testing.assert_allclose(half, c + 0.5 * d, atol=1e-6)


def test_expression_scale_0_moves_a_smiles_mouth_corners_towards_the_neutral_template(shipped_pipe, smiling, speech):
    subject = prepare_subject(smiling)
    errors = {}
    for scale in (0.0, 1.0, 1.5):
        out = shipped_pipe(image=smiling, audio=(16000, speech), fps=25, output_type="landmarks", still=True,
                           mouth_scale=0.0, expression_scale=scale, generator=torch.Generator().manual_seed(0))
        canon = np.stack([to_canonical(lm, subject.pose) for lm in out.landmarks])
        errors[scale] = float(corner_error(canon).mean())
    portrait = float(corner_error(subject.canonical[None])[0])
    assert errors[0.0] < 0.5 * errors[1.0], errors
    assert errors[1.0] == pytest.approx(portrait, rel=0.35), (errors, portrait)
    assert errors[1.5] > errors[1.0], errors


def test_expression_scale_1_gives_the_frames_of_a_call_without_it(shipped_pipe, smiling, speech):
    kwargs = dict(image=smiling, audio=(16000, speech), fps=25, output_size=256, output_type="np")
    plain = shipped_pipe(**kwargs, generator=torch.Generator().manual_seed(3)).frames
    same = shipped_pipe(**kwargs, expression_scale=1.0, generator=torch.Generator().manual_seed(3)).frames
    relaxed = shipped_pipe(**kwargs, expression_scale=0.0, generator=torch.Generator().manual_seed(3)).frames
    assert np.array_equal(plain, same)
    assert not np.array_equal(plain, relaxed)


@pytest.mark.parametrize("value", [-0.1, 1.6, float("nan")])
def test_expression_scale_out_of_range_is_refused(shipped_pipe, smiling, speech, value):
    with pytest.raises(InvalidParameterError, match="expression_scale"):
        shipped_pipe(image=smiling, audio=(16000, speech), expression_scale=value, output_type="landmarks")


def test_expression_scale_is_a_cli_flag_a_batch_column_and_a_space_option(tmp_path):
    from moda_hub.batch import read_manifest
    from moda_hub.cli import build_parser
    from moda_hub.space.animate import AnimateOptions

    args = build_parser().parse_args(["generate", "--image", "a.png", "--text", "hi", "--expression-scale", "0.3"])
    assert args.expression_scale == 0.3
    assert build_parser().parse_args(["generate", "--image", "a.png", "--text", "hi"]).expression_scale == 1.0
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("image,text,expression_scale\na.png,hello,0.25\na.png,hello,\n")
    rows = read_manifest(manifest)
    assert rows[0].controls["expression_scale"] == 0.25 and "expression_scale" not in rows[1].controls
    assert AnimateOptions().expression_scale == 1.0


def test_lip_amplitude_scales_the_opening_from_closed_lips(smiling):
    """ModaModel.config.lip_amplitude A (apply_controls): lip offsets d become
    A * d - (A - 1) * closure, the opening measured from the portrait's closed lips scaled: a
    motion that closes the lips still closes them exactly (no crossing on a portrait taken with the
    lips apart), the portrait's own pose (d = 0) opens A times as far from closed, A = 1 changes
    nothing, and mouth_scale 0 still keeps the lips as in the portrait."""
    from moda_hub.face.expression import lip_closure
    from moda_hub.motion.controls import apply_controls
    smiling = prepare_subject(smiling).canonical                             # (478, 3) canonical units
    closure = lip_closure(smiling)
    gap = lambda lips: lips[..., 2, 1] - lips[..., 1, 1]                      # noqa: E731  14 below 13 (LIPS 1, 2)
    assert (topo.LIPS[1], topo.LIPS[2]) == (topo.MOUTH_INNER_TOP, topo.MOUTH_INNER_BOTTOM)
    rest_gap = smiling[topo.MOUTH_INNER_BOTTOM, 1] - smiling[topo.MOUTH_INNER_TOP, 1]
    assert rest_gap > 0.02 and abs(gap(smiling[topo.LIPS] + closure)) < 1e-6   # open portrait; closed lips meet
    rng = np.random.default_rng(0)
    d = np.stack([closure, np.zeros_like(closure), rng.normal(0, 0.01, closure.shape).astype(np.float32)])
    motion = {"lip": d, "eye": np.zeros((3, 60, 3), np.float32), "head": np.zeros((3, 7), np.float32),
              "torso": np.zeros((3, 2), np.float32)}
    out = apply_controls(motion, lip_amplitude=1.6, lip_closure=closure)["lip"]
    np.testing.assert_allclose(out[0], closure, atol=1e-6)                    # closed stays closed
    np.testing.assert_allclose(gap(smiling[topo.LIPS] + out[1]), 1.6 * rest_gap, rtol=1e-5)
    np.testing.assert_allclose(out[2], 1.6 * d[2] - 0.6 * closure, atol=1e-6)
    assert np.array_equal(apply_controls(motion, lip_closure=closure)["lip"], d)           # A = 1
    assert not apply_controls(motion, mouth_scale=0.0, lip_amplitude=1.6, lip_closure=closure)["lip"].any()
    closed = np.zeros_like(closure)                                           # a closed portrait: A * d
    np.testing.assert_allclose(apply_controls(motion, lip_amplitude=1.6, lip_closure=closed)["lip"], 1.6 * d)
