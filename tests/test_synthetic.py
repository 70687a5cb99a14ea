"""The synthetic speech-motion corpus: visemes, face rig, motion processes, corpus builder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from moda_hub.data import motion
from moda_hub.face.rig import BLINK_L, BLINK_R, P_ALL, FaceRig
from moda_hub.data.synthetic import CorpusConfig, build_corpus, load_utterances, voices
from moda_hub.data.visemes import MOUTH_PARAMS, viseme_curves
from moda_hub.motion.blinks import blink_track
from moda_hub.speech.espeak import speak
from moda_hub.face import topology as topo
from moda_hub.face.template import canonical_template

FPS = 30
ROUND = MOUTH_PARAMS.index("lip_round")
TINY = CorpusConfig(num_subjects=200, utterance_seconds=(2.0, 3.5), val_fraction=0.5,
                    utterances_per_shard=3)


@pytest.fixture(scope="module")
def rig():
    return FaceRig(canonical_template())


def _faces(rig, phonemes, num_frames):
    params = np.zeros((num_frames, P_ALL), np.float32)
    params[:, :len(MOUTH_PARAMS)] = viseme_curves(phonemes, num_frames, FPS)
    return params, rig.meshes(params)


def _speech(rig, text, rate=170):
    res = speak(text, voice="en-us", rate=rate)
    T = int(round(res.duration * FPS))
    params, meshes = _faces(rig, res.phonemes, T)
    return res.phonemes, params, topo.mouth_aperture(meshes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(out, hours=0.004, seed=5, workers=1, config=TINY, progress=False)
    return out, manifest


def test_bilabials_close_the_mouth(rig):
    phonemes, _, ap = _speech(rig, "A map, a baby, and my mum Bob.")
    centres = (np.arange(len(ap)) + 0.5) / FPS
    bilabial = [(s, e) for ph, s, e in phonemes if ph in ("p", "b", "m")]
    assert len(bilabial) >= 8
    for s, e in bilabial:
        near = np.abs(centres - 0.5 * (s + e)) <= max(0.5 * (e - s), 0.5 / FPS)
        assert ap[near].min() < 0.02, f"mouth not closed at the bilabial at {s:.2f}-{e:.2f} s"
    assert ap.max() > 0.12                     # and the vowels between them open it


def test_open_vowels_open_the_jaw_more_than_close_vowels(rig):
    def peak(vowel):
        timeline = [("_", 0.0, 0.3), ("h", 0.3, 0.38), (vowel, 0.38, 0.62), ("_", 0.62, 1.0)]
        _, meshes = _faces(rig, timeline, 30)
        return topo.mouth_aperture(meshes).max()

    open_, close = [peak(v) for v in ("A:", "a", "aa")], [peak(v) for v in ("i:", "u:", "I")]
    assert min(open_) > 1.8 * max(close)
    assert 0.18 < max(open_) < 0.4             # wide "a": a quarter to a third of the IOD
    assert 0.02 < min(close)


def test_rounding_narrows_the_mouth_and_reaches_back_over_consonants(rig):
    def run(vowel):
        timeline = [("_", 0.0, 0.3), ("s", 0.3, 0.42), (vowel, 0.42, 0.7), ("n", 0.7, 0.78),
                    ("_", 0.78, 1.1)]
        params, meshes = _faces(rig, timeline, 33)
        width = np.linalg.norm(meshes[:, 61, :2] - meshes[:, 291, :2], axis=-1)
        return params, width

    p_soon, w_soon = run("u:")
    p_seen, w_seen = run("i:")
    k_vowel, k_s = int(0.56 * FPS), int(0.38 * FPS)
    assert w_soon[k_vowel] < 0.85 * w_seen[k_vowel]
    assert p_soon[k_s, ROUND] > p_seen[k_s, ROUND] + 0.2   # the "s" of "soon" is rounded


def test_coarticulation_is_smooth(rig):
    for rate in (130, 230):
        _, params, ap = _speech(rig, "Bob, mop the floor; we'll buy a map of Paris, maybe.",
                                rate=rate)
        mouth = params[:, :len(MOUTH_PARAMS)]
        assert np.abs(np.diff(mouth, axis=0)).max() < 0.6     # params span 0..1
        assert np.abs(np.diff(ap)).max() < 0.2                # IOD units per 1/30 s
        # no step functions: the jaw passes through intermediate values
        jaw = mouth[:, 0]
        assert np.sum((jaw > 0.25 * jaw.max()) & (jaw < 0.75 * jaw.max())) >= 4


def test_blink_rate_in_range(rig):
    rng = np.random.default_rng(0)
    minutes = 10.0
    spans = [(s, s + 0.5) for s in np.arange(2.0, 60 * minutes, 4.0)]
    events = motion.blink_events(60 * minutes, rng, spans)
    rate = len(events) / minutes
    assert 12 <= rate <= 22, rate
    lengths = np.array([length for _, length, _ in events])
    assert lengths.min() >= 0.1 and lengths.max() <= 0.4
    starts = np.array([s for s, _, _ in events])
    assert np.diff(starts).min() > 0.3
    near_pause = np.mean([min(abs(s - p) for p, _ in spans) < 0.3 for s in starts])
    assert near_pause > 0.3                    # more than chance (0.15): blinks prefer pauses
    # a blink closes the eyelids of the mesh
    track = blink_track(events, int(60 * FPS), FPS, rng)
    params = np.zeros((len(track), P_ALL), np.float32)
    params[:, [BLINK_L, BLINK_R]] = track
    eyes = topo.eye_openness(rig.meshes(params))
    assert eyes.max() > 0.05 and eyes.min() < 0.02


def test_corpus_is_deterministic_for_a_seed(corpus, tmp_path):
    out1, m1 = corpus
    m2 = build_corpus(tmp_path, hours=0.004, seed=5, workers=2, config=TINY, progress=False)

    def strip(m):
        return {k: v for k, v in m.items() if k not in ("build_seconds", "workers")}

    assert strip(m1) == strip(m2)
    for shard in m1["shards"]:
        with np.load(out1 / shard["file"]) as a, np.load(tmp_path / shard["file"]) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                assert np.array_equal(a[key], b[key]), key


def test_validation_voices_unseen_in_training(corpus):
    out, manifest = corpus
    train, val = set(voices("train")), set(voices("val"))
    assert train and val and not train & val
    by_split = {"train": [], "val": []}
    for u in manifest["utterances"]:
        by_split[u["split"]].append(u)
    assert by_split["train"] and by_split["val"]
    for split, utts in by_split.items():
        for u in utts:
            assert u["voice"] in (train if split == "train" else val)
    subjects = np.load(out / "subjects.npz")
    for u in by_split["val"]:
        assert subjects["split"][u["subject"]] == "val"
    splits = manifest["splits"]
    assert set(splits["val"]["voices"]).isdisjoint(splits["train"]["voices"])


def test_features_one_row_per_frame(corpus):
    out, manifest = corpus
    assert manifest["hours"] >= 0.004
    meshes = np.load(out / "subjects.npz")["meshes"]
    assert meshes.shape[1:] == (478, 3)
    for u in load_utterances(out):
        T = u["meta"]["frames"]
        assert T == int(round(u["meta"]["seconds"] * FPS))
        assert u["features"].shape == (T, 80) and u["features"].dtype == np.float16
        assert u["lip"].shape == (T, 40, 3) and u["eye"].shape == (T, 60, 3)
        assert u["head"].shape == (T, 7) and u["torso"].shape == (T, 2)
        assert u["params"].shape == (T, P_ALL)
        assert np.isfinite(u["features"].astype(np.float32)).all()
        # the stage-2 samples match the stage-1 targets of their frames
        assert len(u["dense_frames"]) >= T // 6
        assert np.array_equal(u["dense"][:, topo.LIPS], u["lip"][u["dense_frames"]])
        assert np.array_equal(u["dense"][:, topo.EYES], u["eye"][u["dense_frames"]])
        assert isinstance(u["timeline"], list) and u["timeline"][0][1] >= 0.0
    assert json.loads((out / "manifest.json").read_text())["fps"] == FPS


def test_pauses_inside_speech_take_the_speakers_style():
    """Short gaps keep the lips apart, phrase pauses close or breathe, the rest is per speaker."""
    from moda_hub.data.visemes import BREATH_JAW, ArticulationStyle

    jaw, press = MOUTH_PARAMS.index("jaw_open"), MOUTH_PARAMS.index("lip_press")
    # "a" (0.2-0.5 s), a 0.1 s gap, "a", a 0.6 s pause, "a"; silence before and after
    timeline = [("a", 0.2, 0.5), ("a", 0.6, 0.9), ("a", 1.5, 1.8)]
    T = int(2.4 * FPS)
    t = (np.arange(T) + 0.5) / FPS
    gap, pause, lead, tail = (np.abs(t - c) < 0.02 for c in (0.55, 1.2, 0.03, 2.35))

    def curves(**style):
        return viseme_curves(timeline, T, FPS, style=ArticulationStyle(**style), rng=np.random.default_rng(0))

    plain = curves()                                     # the table: every silence closes
    assert plain[pause, press].min() > 0.6 and plain[pause, jaw].max() < 0.02
    assert plain[gap, jaw].max() < 0.5 * plain[:, jaw].max()
    held = curves(hold_gap=0.3)                          # a 0.1 s gap stays open, the pause closes
    assert held[gap, press].max() < 0.05 and held[gap, jaw].min() > 0.5 * held[:, jaw].max()
    assert held[pause, press].min() > 0.6
    breath = curves(hold_gap=0.3, breath=1.0)            # the pause is an inhalation
    assert breath[pause, press].max() < 0.05 and breath[pause, jaw].min() > 0.9 * BREATH_JAW[0]
    for c in (plain, held, breath):                      # before the first / after the last sound
        assert c[lead, press].min() > 0.6 and c[tail, press].min() > 0.6
    apart = curves(rest_part=1.0)                        # a speaker whose lips rest apart
    part = MOUTH_PARAMS.index("lip_part")
    assert apart[lead, press].max() < 0.05 and apart[lead, part].min() > 0.3
