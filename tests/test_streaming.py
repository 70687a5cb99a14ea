"""Streaming: chunks equal the one-shot call, no seams at chunk or stage-1 window borders,
progressive MP4 writing that leaves nothing behind on failure. Uses pretrained/moda-base."""
from __future__ import annotations

import os

import numpy as np
import pytest
import skimage.data
import torch

from moda_hub.models.audio_encoder import MAX_WINDOW_SECONDS
from moda_hub.video import read_video_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "pretrained", "moda-base")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(MODEL, "model_index.json")),
                                reason="pretrained/moda-base is missing — build it with `make train`")

# About 15 s of espeak-ng speech at 165 words/min: longer than one stage-1 window (300 frames
# at 30 fps), so the clip is made of two overlapping windows and has window borders inside.
LONG_TEXT = ("The harbour was quiet in the early morning, and the boats rocked slowly on the grey water. "
             "A man with a blue coat walked along the wall, counting the ropes and the nets. "
             "Later the sun came out, the market opened, and everybody talked about the weather again.")


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    from moda_hub import ModaPipeline
    p = ModaPipeline.from_pretrained(MODEL)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def long_clip(pipe, astronaut):
    """LONG_TEXT, seed 0: streamed landmarks (T, 478, 3) in chunks of 45 frames, the chunk starts, the
    one-shot call's landmarks (chunks of 32 inside), the same clip made as ONE stage-1 window and
    ONE audio-encoder window (no window borders at all), and seed 1's landmarks."""
    from moda_hub.speech import speech_states

    kw = dict(image=astronaut, text=LONG_TEXT)
    chunks = list(pipe.stream(generator=gen(0), chunk_frames=45, render=False, **kw))
    call = pipe(generator=gen(0), output_type="landmarks", **kw).landmarks
    window, hop, enc_window = pipe.moda.config.window, pipe.moda.config.hop, speech_states.WINDOW_SECONDS
    try:
        pipe.moda.register_to_config(window=100_000, hop=90_000)
        speech_states.WINDOW_SECONDS = MAX_WINDOW_SECONDS
        single = pipe(generator=gen(0), output_type="landmarks", **kw).landmarks
    finally:
        pipe.moda.register_to_config(window=window, hop=hop)
        speech_states.WINDOW_SECONDS = enc_window
    other = pipe(generator=gen(1), output_type="landmarks", **kw).landmarks
    return dict(streamed=np.concatenate([c.landmarks for c in chunks]), starts=[c.start for c in chunks],
                call=call, single=single, other=other)


def frame_jumps(landmarks_px: np.ndarray) -> np.ndarray:
    """(T - 1,) mean distance in pixels that the 478 points move (x, y) from frame t - 1 to frame t;
    element t - 1 is the jump INTO frame t."""
    return np.linalg.norm(np.diff(landmarks_px[:, :, :2], axis=0), axis=-1).mean(axis=1)


def window_borders(num_frames: int, window: int, hop: int) -> list:
    """Frames where stage-1 windowing changes what is blended: every window's first and last frame
    and the ends of its cross-fade ramps (``window - hop`` frames), inside the clip."""
    from moda_hub.models.moda import window_plan
    overlap = window - hop
    borders = set()
    for w0, w1 in window_plan(num_frames, window, hop):
        borders |= {w0, w0 + overlap, w1 - overlap, w1}
    return sorted(b for b in borders if 0 < b < num_frames)


def seam_steps(landmarks_px: np.ndarray, reference_px: np.ndarray) -> np.ndarray:
    """(T - 1,) the jump a clip makes INTO frame t beyond what a border-free reference of the same
    clip makes: the frame-to-frame jump of (clip - reference), mean over the points, pixels."""
    return frame_jumps(landmarks_px - reference_px)


def seam_spikes(steps: np.ndarray) -> np.ndarray:
    """(T - 1,) how far each :func:`seam_steps` value stands above the larger of its two neighbours
    (0 where it does not). A seam is a step into ONE frame; two windows that disagree blend into each
    other over many frames, and where the head nods fast that disagreement changes by ~0.1 px a
    frame for a dozen frames running (moda-base, LONG_TEXT: 0.10-0.18 px into frames 199-219 of
    the cross-fade, the largest at 202, no border there) — a smooth change, not a seam."""
    padded = np.concatenate([[0.0], steps, [0.0]])
    return np.maximum(steps - np.maximum(padded[:-2], padded[2:]), 0.0)


def seam_bound(landmarks_px: np.ndarray) -> float:
    """What a border may add to the jump into a frame: a quarter of the clip's median frame-to-frame
    motion (about 0.1 px for a talking head at this size).

    Why not "border jump <= p99 of all jumps": the p99 of 457 jumps is topped by 5 frames, and the
    clip's own fast moments (blinks, plosives) land on some of the ~15 borders by chance — during
    development the jump into chunk border 315 was 1.02 px against a p99 of 0.98 px, and the
    border-free clip made the same jump there; the window border at frame 300 sits at 1.30 px
    against a p99 of 1.42 px for the same reason (1.26 px without windows). A seam is what
    windowing or chunking ADDS, so it is measured against the same clip made without that border;
    what it adds must stay a small fraction of ordinary motion. The bound can fail: splicing two
    seeds at one frame adds several pixels (``test_seam_measure_flags_a_spliced_clip``).
    """
    return 0.25 * float(np.median(frame_jumps(landmarks_px)))


def test_stream_chunks_equal_the_one_shot_call_for_the_same_seed(pipe, astronaut):
    kw = dict(text="Streaming gives the very same frames.", output_size=256)
    full = pipe(image=astronaut, generator=gen(5), output_type="np", **kw)
    chunks = list(pipe.stream(image=astronaut, generator=gen(5), chunk_frames=7, **kw))
    assert [c.start for c in chunks] == list(range(0, len(full.frames), 7))
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), full.frames)
    np.testing.assert_array_equal(np.concatenate([c.landmarks for c in chunks]), full.landmarks)
    for part, value in full.motion.items():
        np.testing.assert_array_equal(np.concatenate([c.motion[part] for c in chunks]), value)


def test_no_seams_at_chunk_borders(long_clip):
    # the reference is the one-shot call, chunked by 32 inside: no border of one chunking is a border
    # of the other (45 and 32 meet only at multiples of 1440), so a seam would show as a step
    streamed, starts = long_clip["streamed"], long_clip["starts"]
    assert len(starts) >= 8
    steps = seam_steps(streamed, long_clip["call"])
    bound = seam_bound(streamed)
    at = {b: float(steps[b - 1]) for b in starts[1:]}
    assert max(at.values()) <= bound, f"chunk borders add jumps beyond {bound:.3f} px: {at}"
    np.testing.assert_array_equal(streamed, long_clip["call"])       # in fact: no difference at all


def test_no_seams_at_stage1_window_borders(pipe, long_clip):
    streamed = long_clip["streamed"]
    cfg = pipe.moda.config
    assert cfg.fps == 30
    T = len(streamed)
    assert T > cfg.window, f"the clip ({T} frames) must be longer than one stage-1 window ({cfg.window})"
    borders = window_borders(T, cfg.window, cfg.hop)
    assert len(borders) >= 4
    steps = seam_spikes(seam_steps(streamed, long_clip["single"]))
    jumps = frame_jumps(streamed)
    bound = seam_bound(streamed)
    at = {b: round(float(steps[b - 1]), 4) for b in borders}
    worst = max(at, key=at.get)
    assert at[worst] <= bound, (
        f"stage-1 window border at frame {worst} adds a {at[worst]:.3f} px step (beyond its neighbours'; bound {bound:.3f} px = a quarter "
        f"of the median frame-to-frame motion {np.median(jumps):.3f} px; the jump there is {jumps[worst - 1]:.3f} px "
        f"against {frame_jumps(long_clip['single'])[worst - 1]:.3f} px without windows): {at}")


def test_no_seams_at_audio_encoder_window_borders(pipe, long_clip):
    """Whisper hears 10 s windows, 2 s cross-fades (moda_hub.speech.speech_states): where one window hands
    over to the next, the landmarks take no step beyond what the same clip made in one encoder
    window (and one stage-1 window) takes."""
    from moda_hub.speech import speech_states

    assert pipe.moda.config.features == "whisper-tiny"
    streamed = long_clip["streamed"]
    T = len(streamed)
    from moda_hub.speech.audio import synthesize_speech

    n_states = (len(synthesize_speech(LONG_TEXT)) // 160 + 1) // 2
    overlap = int(round(speech_states.OVERLAP_SECONDS * speech_states.STATE_RATE))
    borders = sorted({int(round(s / speech_states.STATE_RATE * 30)) for a, b in speech_states.state_windows(n_states)
                      for s in (a, a + overlap, b - overlap, b) if 0 < s < n_states})
    borders = [b for b in borders if 0 < b < T]
    assert len(borders) >= 3, borders
    steps = seam_spikes(seam_steps(streamed, long_clip["single"]))
    bound = seam_bound(streamed)
    at = {b: round(float(steps[b - 1]), 4) for b in borders}
    assert max(at.values()) <= bound, f"encoder window borders add steps beyond {bound:.3f} px: {at}"


def test_seam_measure_flags_a_spliced_clip(long_clip):
    """The bound can fail: the clips of two seeds (same lips, other head motion and blinks) spliced
    at one frame give a step far beyond it."""
    streamed, other = long_clip["streamed"], long_clip["other"]
    b = len(streamed) // 2
    spliced = np.concatenate([streamed[:b], other[b:]])
    steps = seam_steps(spliced, streamed)
    assert steps[b - 1] > 4 * seam_bound(spliced), steps[b - 1]
    assert seam_spikes(steps)[b - 1] > 4 * seam_bound(spliced), seam_spikes(steps)[b - 1]


def test_stream_writes_the_mp4_progressively_and_finalises_it_after_the_last_chunk(pipe, astronaut, tmp_path):
    path = tmp_path / "live.mp4"
    chunks = pipe.stream(image=astronaut, text="Writing while streaming.", generator=gen(1), output_size=256,
                         chunk_frames=10, output_path=str(path))
    first = next(chunks)
    assert len(first.frames) == 10
    assert not path.exists(), "the MP4 must appear only when complete"
    partial = [p for p in os.listdir(tmp_path) if p.endswith(".part")]
    assert len(partial) == 1, "the encoder should be running (temporary folder) from the first chunk on"
    rest = list(chunks)
    total = len(first.frames) + sum(len(c.frames) for c in rest)
    assert sorted(os.listdir(tmp_path)) == ["live.mp4"], "temporary files left behind"
    info = read_video_info(path, exact=True)
    assert sorted(info["codecs"]) == ["aac", "h264"]
    assert (info["width"], info["height"]) == (256, 256)
    assert info["n_frames"] == total
    assert abs(info["audio_duration"] - total / 30) <= 1 / 30


def test_stream_leaves_nothing_when_abandoned_or_failing(pipe, astronaut, tmp_path, monkeypatch):
    kw = dict(image=astronaut, text="This stream will not finish.", generator=gen(2), output_size=256,
              chunk_frames=8)
    chunks = pipe.stream(output_path=str(tmp_path / "abandoned.mp4"), **kw)
    next(chunks), next(chunks)
    chunks.close()
    assert os.listdir(tmp_path) == []

    render, calls = pipe.renderer.render, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("renderer broke")
        return render(*args, **kwargs)

    monkeypatch.setattr(pipe.renderer, "render", failing)
    with pytest.raises(RuntimeError, match="renderer broke"):
        for _ in pipe.stream(output_path=str(tmp_path / "failed.mp4"), **kw):
            pass
    assert os.listdir(tmp_path) == []
