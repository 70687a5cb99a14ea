"""Stage-1 input features on demand (FeatureTable): equal to speech_features for ordinary clips;
long speech is recognised segment by segment, cut in pauses, only as far as asked."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from moda_hub.speech import features
from moda_hub.speech.audio import synthesize_speech
from moda_hub.speech.features import FeatureTable, phone_segments, speech_features
from moda_hub.speech.phones import phone_stream, phone_viseme_features

SR = 16000


@pytest.fixture(scope="module")
def speech():
    # two sentences with a pause between them, ~5 s
    return synthesize_speech("The boat left the harbour at dawn. Bread was sold in the square by noon.")


def test_a_clip_of_one_segment_gives_exactly_the_features_of_speech_features(speech):
    table = FeatureTable(speech, SR, 30)
    assert len(phone_segments(speech, SR)) == 1
    assert np.array_equal(table.upto(len(table)).numpy(), speech_features(speech, SR, 30))
    assert np.array_equal(FeatureTable(speech, SR, 25, kind="logmel").upto(10).numpy(),
                          speech_features(speech, SR, 25, kind="logmel"))


def test_each_kind_ends_in_its_phone_columns_and_older_kinds_are_a_prefix(speech):
    """Weights trained on "logmel+phones" (93 columns) still get exactly their features: the
    opening column is appended after the 13 classes, never interleaved."""
    full = speech_features(speech, SR, 30)                                  # default kind
    assert full.shape[1] == features.feature_dim("logmel+phones+opening") == 94
    stream = phone_stream(speech, SR, 30)
    assert np.array_equal(full[:, -14:], stream) and np.array_equal(full[:, :80], speech_features(speech, SR, 30, "logmel"))
    old = FeatureTable(speech, SR, 30, kind="logmel+phones").upto(10 ** 6).numpy()
    assert old.shape[1] == 93 and np.array_equal(old, full[:, :93])
    assert np.array_equal(stream[:, :13], phone_viseme_features(speech, SR, 30))


def test_segments_cover_the_clip_are_short_and_cut_at_the_quietest_tenth_of_a_second(speech):
    segments = phone_segments(speech, SR, max_seconds=2.0)
    assert segments[0][0] == 0 and segments[-1][1] == len(speech)
    assert all(b == c for (_, b), (c, _) in zip(segments, segments[1:]))
    assert all(0 < b - a <= 2 * SR for a, b in segments)
    assert all(b % (SR // 10) == 0 for a, b in segments[:-1])
    for a, b in segments[:-1]:     # the cut lies in the quietest 0.1 s of the segment's last third
        lo = a + (2 * (2 * SR) // 3) // (SR // 10) * (SR // 10)
        blocks = speech[lo:a + 2 * SR].reshape(-1, SR // 10)
        assert np.isclose((speech[b - SR // 10:b] ** 2).mean(), (blocks ** 2).mean(1).min())


def test_the_first_two_segments_reach_past_stage_1s_first_window_and_chunk():
    """Stage 1's first chunk (32 frames) reads a 10 s window: its phones are the first two
    segments' (this process's and the phone worker's, recognised at the same time), never a
    third; later segments are up to 30 s. Clips up to 16 s are cut as with one 30 s rest."""
    rng = np.random.default_rng(3)
    envelope = np.repeat(rng.uniform(0.05, 1.0, 900), SR // 10)            # 90 s of uneven loudness
    wav = (rng.standard_normal(len(envelope)) * envelope * 0.1).astype(np.float32)
    config = json.loads((Path(__file__).resolve().parents[1] / "pretrained" / "moda-base" / "moda" / "config.json").read_text())
    window_s = config["window"] / config["fps"]
    for start in range(0, 60 * SR, 7 * SR):                                # different cut positions
        segments = phone_segments(wav[start:], SR)
        assert segments[1][1] >= (window_s + 32 / 30.0) * SR
        assert segments[1][1] - segments[1][0] <= 12 * SR      # short: ready about when the first is
        assert [b - a <= 30 * SR for a, b in segments] == [True] * len(segments)
        assert any(b - a > 12 * SR for a, b in segments[2:])
    short = wav[:16 * SR]
    assert phone_segments(short, SR) == phone_segments(short, SR, second_seconds=30.0)


def test_phones_are_recognised_only_as_far_as_asked(speech, monkeypatch):
    monkeypatch.setattr(features, "PHONE_SEGMENT_SECONDS", 2.0)
    table = FeatureTable(speech, SR, 30)
    segments = phone_segments(speech, SR, max_seconds=2.0)
    assert len(segments) >= 3
    table.upto(10)
    assert table._done == 1                              # only the first segment was recognised
    full = table.upto(len(table)).numpy()
    assert table._done == len(segments)
    expected = np.concatenate([phone_stream(speech[a:b], SR, 30) for a, b in segments])
    assert np.allclose(full[:, -expected.shape[1]:], expected[:len(full)])
    assert np.array_equal(full[:, :80], speech_features(speech, SR, 30)[:, :80])   # log-mel: whole clip


@pytest.fixture(scope="module")
def long_speech():
    # ~11 s: more than the 6 s first segment, so the phone worker recognises the rest
    return synthesize_speech("The boat left the harbour at dawn, and the gulls followed it out. "
                             "Bread was sold in the square by noon. By evening the rain had come, "
                             "and the streets were empty.")


def test_the_phone_worker_recognises_later_segments_with_the_same_rows(long_speech, monkeypatch):
    from moda_hub.speech.phone_worker import shared_worker

    assert len(phone_segments(long_speech, SR)) >= 2
    worker = shared_worker()
    assert worker is not None and worker.alive
    before = worker.answered
    with_worker = FeatureTable(long_speech, SR, 30).upto(10 ** 6).numpy()
    assert worker.answered > before                       # a segment came from the helper process
    monkeypatch.setenv("MODA_PHONE_WORKER", "0")
    alone = FeatureTable(long_speech, SR, 30).upto(10 ** 6).numpy()
    assert np.array_equal(with_worker, alone)
    segments = phone_segments(long_speech, SR)
    expected = np.concatenate([phone_stream(long_speech[a:b], SR, 30) for a, b in segments])
    assert np.array_equal(alone[:, -14:], expected[:len(alone)])


def test_a_phone_worker_that_dies_changes_nothing(long_speech, monkeypatch):
    from moda_hub.speech.phone_worker import shared_worker

    monkeypatch.setenv("MODA_PHONE_WORKER", "0")
    alone = FeatureTable(long_speech, SR, 30).upto(10 ** 6).numpy()
    monkeypatch.delenv("MODA_PHONE_WORKER")
    worker = shared_worker()
    table = FeatureTable(long_speech, SR, 30)             # later segments queued in the helper
    worker._proc.kill()
    worker._proc.wait()
    assert np.array_equal(table.upto(10 ** 6).numpy(), alone)   # recognised here instead
    for _ in range(100):                                  # the reader thread sees the pipe close
        if not worker.alive:
            break
        time.sleep(0.05)
    assert not worker.alive
    fresh = shared_worker()                               # a dead helper is replaced on next use
    assert fresh is not worker and fresh.alive
