"""MP4 writing and reading: H.264 + AAC, audio/video durations, atomic output, streaming.

Uses the real FFmpeg libraries through PyAV (fixtures made by the ffmpeg binary of
imageio-ffmpeg, a test dependency); frames are tiny.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from moda_hub.speech.audio import load_audio
from moda_hub.errors import InvalidParameterError, OutputPathError
from imageio_ffmpeg import get_ffmpeg_exe as ffmpeg_exe   # test fixtures only

from moda_hub.video import (Mp4Writer, iter_video_frames, read_video_frames, read_video_info,
                            write_mp4)

SR = 16000


def tone(seconds, rate=SR, freq=440.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def colour_frames(n, h=48, w=64):
    """Frame i is a flat colour that encodes i, so decoded frames can be identified."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = (np.arange(n) * 37 % 256)[:, None, None]
    frames[..., 1] = 128
    frames[..., 2] = (255 - np.arange(n) * 11 % 256)[:, None, None]
    return frames


def leftovers(folder):
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("seconds", [1.0, 1.37])
def test_mp4_has_one_h264_and_one_aac_stream_and_lasts_as_long_as_the_audio(tmp_path, fps,
                                                                             seconds):
    audio = tone(seconds)
    n = round(seconds * fps)
    path = write_mp4(colour_frames(n), fps, audio, SR, tmp_path / "out.mp4")
    info = read_video_info(path, exact=True)
    assert info["codecs"] == ["h264", "aac"]
    assert info["width"] == 64 and info["height"] == 48 and info["fps"] == fps
    assert info["n_frames"] == n
    assert abs(info["video_duration"] - seconds) <= 1 / fps
    assert abs(info["audio_duration"] - seconds) <= 1 / fps
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / fps
    assert leftovers(tmp_path) == []


def test_the_audio_track_carries_the_input_audio(tmp_path):
    audio = np.concatenate([np.zeros(SR // 2, np.float32), tone(0.5, freq=1000)])
    path = write_mp4(colour_frames(30), 30, audio, SR, tmp_path / "a.mp4")
    decoded = load_audio(path)
    first, second = decoded[: SR // 2 - 800], decoded[SR // 2 + 800: SR - 800]
    assert np.sqrt(np.mean(first ** 2)) < 0.01
    assert 0.18 < np.sqrt(np.mean(second ** 2)) < 0.24  # 0.3 / sqrt(2)
    spectrum = np.abs(np.fft.rfft(second))
    assert abs(np.argmax(spectrum) * SR / len(second) - 1000) < 10


def test_frames_come_back_in_order_with_their_colours(tmp_path):
    frames = colour_frames(20)
    path = write_mp4(frames, 25, tone(0.8), SR, tmp_path / "c.mp4", crf=10)
    decoded = read_video_frames(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    err = np.abs(decoded.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert np.all(err < 4)
    assert read_video_frames(path, fps=12.5).shape[0] == 10
    assert len(list(iter_video_frames(path, max_frames=5))) == 5


def test_too_few_frames_are_padded_with_the_last_frame_to_the_audio_length(tmp_path):
    frames = colour_frames(10)
    path = write_mp4(frames, 30, tone(1.0), SR, tmp_path / "short.mp4")
    info = read_video_info(path, exact=True)
    assert info["n_frames"] == 30
    tail = read_video_frames(path)[10:]
    assert np.abs(tail.astype(int) - frames[-1].astype(int)).mean() < 4


def test_extra_frames_get_silence_so_both_streams_end_together(tmp_path):
    path = write_mp4(colour_frames(45), 30, tone(1.0), SR, tmp_path / "long.mp4")
    info = read_video_info(path, exact=True)
    assert info["n_frames"] == 45
    assert abs(info["audio_duration"] - 1.5) <= 1 / 30
    decoded = load_audio(path)
    assert np.sqrt(np.mean(decoded[int(1.1 * SR):] ** 2)) < 0.01


def test_odd_sizes_are_padded_to_even_or_rejected_on_request(tmp_path):
    frames = colour_frames(5, h=47, w=63)
    info = read_video_info(write_mp4(frames, 25, None, SR, tmp_path / "odd.mp4"))
    assert (info["width"], info["height"]) == (64, 48) and info["codecs"] == ["h264"]
    with pytest.raises(InvalidParameterError, match="even"):
        write_mp4(frames, 25, None, SR, tmp_path / "odd2.mp4", odd_size="error")
    assert not (tmp_path / "odd2.mp4").exists() and leftovers(tmp_path) == []


def test_a_generator_failing_midway_leaves_no_file_and_no_temporaries(tmp_path):
    def frames():
        yield from colour_frames(5)
        raise RuntimeError("renderer exploded")

    with pytest.raises(RuntimeError, match="renderer exploded"):
        write_mp4(frames(), 25, tone(1.0), SR, tmp_path / "broken.mp4")
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file_untouched(tmp_path):
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous video")

    def frames():
        yield colour_frames(1)[0]
        yield np.zeros((10, 10, 3), np.uint8)  # wrong size

    with pytest.raises(InvalidParameterError, match="one size"):
        write_mp4(frames(), 25, tone(0.5), SR, path)
    assert path.read_bytes() == b"previous video"
    assert leftovers(tmp_path) == []


def test_streaming_writer_takes_chunks_and_cleans_up_on_exception(tmp_path):
    frames = colour_frames(30)
    with Mp4Writer(tmp_path / "stream.mp4", fps=30, audio=tone(1.0), sample_rate=SR,
                   preset="ultrafast") as writer:
        for i in range(0, 30, 7):
            writer.write(frames[i:i + 7])  # (t, H, W, 3) chunks
    assert read_video_info(tmp_path / "stream.mp4", exact=True)["n_frames"] == 30

    with pytest.raises(KeyError):
        with Mp4Writer(tmp_path / "aborted.mp4", fps=30, audio=tone(1.0)) as writer:
            writer.write(frames[:10])
            raise KeyError("stop")
    assert sorted(os.listdir(tmp_path)) == ["stream.mp4"]
    with pytest.raises(OutputPathError, match="aborted"):
        writer.close()  # nothing to finalise after an abort: say so, do not pretend


def test_writer_encodes_in_the_background_and_reports_a_dead_encoder(tmp_path):
    import threading
    frames = colour_frames(40)
    writer = Mp4Writer(tmp_path / "bg.mp4", fps=30, audio=tone(40 / 30), preset="ultrafast")
    chunk = frames[:20].copy()
    writer.write(chunk)
    chunk[...] = 0                      # the caller may reuse its buffer once write() returned
    writer.write(frames[20:])
    writer.close()
    decoded = read_video_frames(tmp_path / "bg.mp4")
    assert len(decoded) == 40 and abs(int(decoded[5, 4, 4, 0]) - int(frames[5, 4, 4, 0])) <= 3

    assert not [t for t in threading.enumerate() if t.name == "moda-mp4-feeder"]


_DISK_FULL = """
import os, resource, signal, sys, numpy as np
from moda_hub.errors import OutputPathError
from moda_hub.video import Mp4Writer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
rng = np.random.default_rng(0)
writer = Mp4Writer(sys.argv[1], fps=30, audio=np.zeros(16000 * 4, np.float32), preset="ultrafast")
try:
    for _ in range(40):
        writer.write(rng.integers(0, 256, (3, 96, 128, 3), dtype=np.uint8))   # noise: big frames
    writer.close()
except OutputPathError as err:
    print("refused:", err)
"""


def test_a_full_disk_mid_stream_is_one_clear_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "full" / "v.mp4"
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL, str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:") and "disk space" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "full")        # no file, no temporaries, no folder


def test_writer_creates_missing_folders_and_reports_unwritable_paths(tmp_path):
    path = write_mp4(colour_frames(3), 25, None, SR, tmp_path / "a" / "b" / "v.mp4")
    assert os.path.isfile(path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputPathError, match="cannot write"):
        write_mp4(colour_frames(3), 25, None, SR, blocker / "v.mp4")


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 48, 64, 3), np.float32), "uint8"),
    (np.zeros((4, 48, 64), np.uint8), "RGB"),
    (np.zeros((4, 48, 64, 4), np.uint8), "RGB"),
])
def test_bad_frames_are_rejected_with_what_to_do(tmp_path, bad, match):
    with pytest.raises(InvalidParameterError, match=match):
        write_mp4(bad, 25, None, SR, tmp_path / "bad.mp4")
    assert os.listdir(tmp_path) == []


def test_no_frames_and_bad_settings_are_rejected(tmp_path):
    with pytest.raises(InvalidParameterError, match="no frames"):
        write_mp4([], 25, tone(0.5), SR, tmp_path / "empty.mp4")
    with pytest.raises(InvalidParameterError, match="preset"):
        Mp4Writer(tmp_path / "x.mp4", fps=25, preset="warp-speed")
    with pytest.raises(InvalidParameterError, match="fps"):
        Mp4Writer(tmp_path / "x.mp4", fps=0)
    with pytest.raises(InvalidParameterError, match="NaN"):
        Mp4Writer(tmp_path / "x.mp4", fps=25, audio=np.full(100, np.nan, np.float32))
    assert os.listdir(tmp_path) == []


def test_video_info_reads_rotation_and_audio_only_files(tmp_path):
    plain = write_mp4(colour_frames(12, h=48, w=64), 25, tone(0.5), SR, tmp_path / "p.mp4")
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
                    "-display_rotation", "90", "-i", plain, "-c", "copy", str(rotated)],
                   check=True)
    info = read_video_info(rotated)
    assert info["rotation"] in (90.0, -90.0)
    assert (info["width"], info["height"]) == (48, 64)  # display orientation
    assert read_video_frames(rotated).shape == (12, 64, 48, 3)

    wav = tmp_path / "speech.m4a"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi",
                    "-i", "sine=frequency=300:duration=0.5", "-c:a", "aac", str(wav)], check=True)
    info = read_video_info(wav)
    assert not info["has_video"] and info["has_audio"] and info["codecs"] == ["aac"]
    with pytest.raises(InvalidParameterError, match="no video stream"):
        read_video_frames(wav)


def test_video_info_on_missing_or_corrupt_files_says_what_is_wrong(tmp_path):
    with pytest.raises(InvalidParameterError, match="does not exist"):
        read_video_info(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(InvalidParameterError, match="cannot read"):
        read_video_info(bad)


def test_big_frames_are_encoded_without_lookahead_or_b_frames_and_small_ones_as_before(tmp_path):
    """Full-image output of a large photo: x264 holds fewer full-size frames in flight above
    BIG_FRAME_PIXELS (no B-frames, no lookahead); face crops keep the default settings."""
    import av
    from av.video.frame import PictureType
    from moda_hub.video import BIG_FRAME_PIXELS

    def b_frames(path, size, n=12):
        h, w = size
        y, x = np.mgrid[0:h, 0:w]
        frames = np.stack([((x + 9 * k) % 64 * 4 + (y % 7)).astype(np.uint8) for k in range(n)])
        with Mp4Writer(path, fps=30) as writer:                 # the default preset (veryfast)
            writer.write(np.repeat(frames[..., None], 3, axis=-1))
        with av.open(str(path)) as c:
            types = [PictureType(int(f.pict_type)) for f in c.decode(video=0)]
        assert len(types) == n
        return types.count(PictureType.B)

    assert b_frames(tmp_path / "big.mp4", (1088, 1936)) == 0          # 2.1 MP
    assert b_frames(tmp_path / "small.mp4", (128, 160)) > 0           # the default settings
