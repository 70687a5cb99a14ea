"""Evaluation measures and the phone-based lip-sync baseline (no ../shared/eval needed)."""
import json

import numpy as np
import pytest

from moda_hub.evaluation import (evaluate, lipsync_scores, movement_depth, pearson, pearson_best_lag,
                                 smooth_nan)
from moda_hub.speech.phones import (PHONE_STREAM_COLUMNS, PHONES, VISEME_CLASSES, VISEME_OPENING, phone_opening,
                                    phone_opening_curve, phone_stream, phone_viseme_features, recognize_phones)

VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
SENTENCE = "Maybe baby Bob will open a map of the park tomorrow morning."


@pytest.fixture(scope="module")
def speech():
    from moda_hub.speech.audio import synthesize_speech

    return synthesize_speech(SENTENCE, voice="en-us", rate=150)       # (N,) float32, 16 kHz


def _smooth_noise(n, seed=0):
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.random.default_rng(seed).standard_normal(n), 2.0)


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("shift", [-3, -1, 0, 2])
def test_pearson_best_lag_finds_a_known_shift(shift):
    truth = _smooth_noise(200)
    late = np.roll(truth, shift)                     # late[t] = truth[t - shift]: late by `shift`
    r, lag = pearson_best_lag(truth, late, max_lag=3)
    assert lag == shift
    assert r > 0.99


def test_pearson_best_lag_stays_within_max_lag():
    truth = _smooth_noise(200, seed=1)
    r, lag = pearson_best_lag(truth, np.roll(truth, 6), max_lag=3)
    assert abs(lag) <= 3 and r < 0.9


def test_pearson_leaves_out_frames_without_a_face():
    truth = _smooth_noise(100, seed=2)
    with_gaps = truth.copy()
    with_gaps[10:20] = np.nan                        # frames where MediaPipe found no face
    assert pearson(with_gaps, truth) == pytest.approx(1.0)
    assert np.isnan(pearson(np.full(10, np.nan), truth[:10]))
    assert np.isnan(pearson(np.ones(10), truth[:10]))          # constant: undefined


def test_smoothing_keeps_nan_frames_and_lipsync_scores_report_lags():
    truth = _smooth_noise(120, seed=3)
    truth[5] = np.nan
    sm = smooth_nan(truth, 1.0)
    assert np.isnan(sm[5]) and np.isfinite(np.delete(sm, 5)).all()
    s = lipsync_scores(truth, np.roll(np.nan_to_num(truth), 1), max_lag=3)
    assert s["lag"] == 1 and s["r_best"] > 0.95 and s["r_best"] >= s["r0"]


# ----------------------------------------------------------------------------- visemes

def test_movement_depth_measures_what_pearson_r_cannot_see():
    t = np.arange(200) / 25.0
    truth = 0.05 + 0.04 * np.sin(2 * np.pi * 3 * t)
    truth[::7] = np.nan                                  # frames without a face are left out
    damped = 0.2 + 0.01 * np.sin(2 * np.pi * 3 * t)      # same timing, a quarter of the movement
    assert pearson(truth, damped) > 0.99
    assert movement_depth(damped, truth) == pytest.approx(0.25, rel=1e-6)
    assert movement_depth(truth * 2.0, truth) == pytest.approx(2.0, rel=1e-6)
    assert movement_depth(np.full(210, 0.1), truth) == 0.0   # a longer, still prediction


def test_viseme_table_closes_the_mouth_for_bilabials_and_opens_it_for_aa():
    for p in ("B", "M", "P"):
        assert VISEME_OPENING[p] == 0.0
    assert VISEME_OPENING["AA"] == max(VISEME_OPENING.values()) == 1.0
    assert VISEME_OPENING["F"] < 0.2 and VISEME_OPENING["V"] < 0.2
    assert VISEME_OPENING["SIL"] == 0.0
    assert all(p in VISEME_OPENING for p in PHONES)
    assert all(0.0 <= v <= 1.0 for v in VISEME_OPENING.values())
    assert phone_opening("aa1") == 1.0 and phone_opening("???") == 0.0


# ----------------------------------------------------------------------------- recognition

def test_recognize_phones_on_espeak_speech_gives_plausible_timed_phones(speech):
    phones = recognize_phones(speech)
    dur = len(speech) / 16000
    names = [p for p, _, _ in phones]
    assert set(names) <= set(PHONES)
    starts = np.array([s for _, s, _ in phones])
    ends = np.array([e for _, _, e in phones])
    assert (ends > starts).all() and (np.diff(starts) > 0).all()
    assert starts[0] == pytest.approx(0.0, abs=0.02) and ends[-1] == pytest.approx(dur, abs=0.1)
    spoken = [p for p in names if p != "SIL"]
    assert len(spoken) >= 15                          # ~40 phones are said
    assert len(set(spoken) & VOWELS) >= 3
    assert set(spoken) & {"B", "M", "P"}              # "maybe baby Bob ... map"


def test_recognize_phones_is_deterministic(speech):
    first = recognize_phones(speech)
    recognize_phones(np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32))
    assert recognize_phones(speech) == first          # no state carried over between calls


def test_phone_opening_curve_has_one_row_per_video_frame(speech):
    phones = recognize_phones(speech)
    for fps in (25, 30):
        T = round(len(speech) / 16000 * fps)
        curve = phone_opening_curve(speech, 16000, fps, smooth_frames=1.0, phones=phones)
        feats = phone_viseme_features(speech, 16000, fps, phones=phones)
        assert curve.shape == (T,) and curve.dtype == np.float32
        assert curve.min() >= 0.0 and curve.max() <= 1.0 and curve.max() > 0.3
        assert feats.shape == (T, len(VISEME_CLASSES))
        np.testing.assert_allclose(feats.sum(1), 1.0, atol=1e-5)


def test_opening_curve_is_closed_on_bilabials_and_open_on_vowels():
    wav = np.zeros(16000, np.float32)                 # 1 s; the phones are given
    phones = [("SIL", 0.0, 0.2), ("M", 0.2, 0.4), ("AA", 0.4, 0.8), ("SIL", 0.8, 1.0)]
    curve = phone_opening_curve(wav, 16000, 25, smooth_frames=0, phones=phones)
    assert curve.shape == (25,)
    assert np.all(curve[5:10] == 0.0) and np.all(curve[10:20] == 1.0)
    onehot = phone_viseme_features(wav, 16000, 25, phones=phones)
    assert onehot[7, VISEME_CLASSES.index("bilabial")] == 1.0
    assert onehot[15, VISEME_CLASSES.index("open_vowel")] == 1.0


def test_phone_stream_keeps_the_opening_the_classes_lump_together():
    """AA and AH are one class ("open_vowel"), +SPN+ (unintelligible speech) counts as silence:
    only the 14th column tells them apart (the stage-1 input of moda-base)."""
    wav = np.zeros(16000, np.float32)
    phones = [("SIL", 0.0, 0.2), ("AA", 0.2, 0.4), ("AH", 0.4, 0.6), ("+SPN+", 0.6, 0.8), ("SIL", 0.8, 1.0)]
    stream = phone_stream(wav, 16000, 25, phones=phones)
    assert stream.shape == (25, len(PHONE_STREAM_COLUMNS)) == (25, 14) and stream.dtype == np.float32
    np.testing.assert_array_equal(stream[:, :13], phone_viseme_features(wav, 16000, 25, phones=phones))
    cls, opening = stream[:, :13].argmax(1), stream[:, 13]
    assert cls[7] == cls[12] == VISEME_CLASSES.index("open_vowel") and cls[17] == cls[2] == 0
    assert opening[7] == 1.0 and opening[12] == np.float32(0.7) and opening[17] == np.float32(0.3)
    assert opening[2] == opening[22] == 0.0
    np.testing.assert_allclose(opening, phone_opening_curve(wav, 16000, 25, smooth_frames=0, phones=phones))


# ----------------------------------------------------------------------------- driver

def test_evaluate_skips_everything_it_has_no_inputs_for(tmp_path):
    out = tmp_path / "eval.json"
    report = evaluate(model_dir=str(tmp_path / "no-weights"), data=None,
                      eval_dir=str(tmp_path / "no-eval"), out=str(out), log=lambda *a: None)
    saved = json.loads(out.read_text())
    for section in ("real_lipsync", "synthetic", "one_to_many", "blinks"):
        assert "skipped" in saved[section], section
    assert report["model"].startswith("no trained weights")
