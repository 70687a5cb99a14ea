"""No partial outputs and no temporary files after any failure.

Each test points ``tempfile`` (and ``TMPDIR`` of child processes such as ffmpeg) at a private
folder standing in for the system temp dir, makes the pipeline fail at one stage — decoding,
stage 1, mid-render, encoding, an abandoned stream, Ctrl-C — and then checks that the output
folder holds exactly what it held before (not even a created sub-folder) and the temp folder
holds nothing. ffmpeg children must be gone too.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from moda_hub.errors import AudioDecodeError, ImageDecodeError, ModaError, OutputPathError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "moda-base"
SR = 16000


@pytest.fixture(scope="module")
def pipe(shipped_pipe):
    return shipped_pipe


@pytest.fixture(scope="module")
def speech():
    """About 2.5 s of speech: at 25 fps that is 3 chunks of the one-shot call (32 frames each)."""
    from moda_hub.speech.audio import synthesize_speech
    return synthesize_speech("Hello there, my friend. How are you today?", voice="en-us", rate=175)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


def _snapshot(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _ffmpeg_children() -> list:
    try:
        import psutil
    except ImportError:
        return []
    return [c for c in psutil.Process().children(recursive=True)
            if "ffmpeg" in (c.name() or "").lower() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """(output folder with one pre-existing file, private temp dir); after the test both are
    checked: nothing new in either, no ffmpeg left running."""
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("was here before")
    tmp = tmp_path / "system-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    before = _snapshot(out_dir)
    yield out_dir, tmp
    assert _snapshot(out_dir) == before, f"left in the output folder: {_snapshot(out_dir) - before}"
    assert _snapshot(tmp) == set(), f"left in the temp dir: {_snapshot(tmp)}"
    assert _ffmpeg_children() == [], "ffmpeg still running"
    import threading
    assert not [t for t in threading.enumerate() if t.name == "moda-mp4-feeder"], "encoder still running"


def _call(pipe, astronaut, speech, out_dir, **kwargs):
    kwargs.setdefault("image", astronaut)
    kwargs.setdefault("audio", (SR, speech))
    return pipe(output_path=str(out_dir / "new" / "deeper" / "video.mp4"), output_size=256, fps=25,
                generator=torch.Generator().manual_seed(0), **kwargs)


class Boom(RuntimeError):
    """An injected failure (not a ModaError: a bug or a crash somewhere inside)."""


def test_failure_decoding_the_image_leaves_nothing(pipe, astronaut, speech, sandbox, tmp_path):
    out_dir, _ = sandbox
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError):
        _call(pipe, astronaut, speech, out_dir, image=str(broken))


def test_failure_decoding_audio_bytes_leaves_nothing(pipe, astronaut, speech, sandbox):
    out_dir, _ = sandbox
    with pytest.raises(AudioDecodeError):                  # bytes go through a temp file
        _call(pipe, astronaut, speech, out_dir, audio=b"RIFF\x00\x00\x00\x00WAVEjunk" * 40)


def test_failure_in_stage_1_leaves_nothing(pipe, astronaut, speech, sandbox, monkeypatch):
    out_dir, _ = sandbox

    def broken(*args, **kwargs):
        raise Boom("stage 1 failed")

    monkeypatch.setattr(pipe.moda, "generate", broken)
    with pytest.raises(Boom):
        _call(pipe, astronaut, speech, out_dir)


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_failure_mid_render_leaves_nothing(pipe, astronaut, speech, sandbox, monkeypatch, error):
    out_dir, _ = sandbox
    render = pipe.renderer.render
    calls = []

    def fails_on_the_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            # the first chunk is in ffmpeg by now: a temporary folder sits next to the output
            assert any(p.name.endswith(".part") for p in (out_dir / "new" / "deeper").iterdir())
            raise error("render failed")
        return render(*args, **kwargs)

    monkeypatch.setattr(pipe.renderer, "render", fails_on_the_second_chunk)
    with pytest.raises(error):
        _call(pipe, astronaut, speech, out_dir)
    assert len(calls) == 2


def test_failure_encoding_the_audio_leaves_nothing(pipe, astronaut, speech, sandbox, monkeypatch):
    out_dir, _ = sandbox
    import moda_hub.video as video

    def audio_fails(state, until):      # on the encode thread, mid-stream
        raise OutputPathError("the AAC encoder failed (injected) — check free disk space")

    monkeypatch.setattr(video, "_encode_audio", audio_fails)
    with pytest.raises(OutputPathError, match="injected"):
        _call(pipe, astronaut, speech, out_dir)


def test_failure_moving_the_finished_file_into_place_leaves_nothing(pipe, astronaut, speech, sandbox,
                                                                     monkeypatch):
    out_dir, _ = sandbox
    import moda_hub.video as video

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video.os, "replace", disk_full)
    with pytest.raises(OutputPathError, match="No space left"):
        _call(pipe, astronaut, speech, out_dir)


def test_abandoned_or_failing_stream_leaves_nothing(pipe, astronaut, speech, sandbox, monkeypatch):
    out_dir, _ = sandbox
    target = out_dir / "new" / "live.mp4"
    chunks = pipe.stream(image=astronaut, audio=(SR, speech), output_path=str(target), chunk_frames=8,
                         output_size=256, fps=25, generator=torch.Generator().manual_seed(0))
    next(chunks)
    next(chunks)
    chunks.close()                                         # the viewer went away
    assert not target.exists()

    calls = []
    motion_chunk = pipe.motion_chunk

    def fails_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Boom("stage 2 failed")
        return motion_chunk(*args, **kwargs)

    monkeypatch.setattr(pipe, "motion_chunk", fails_later)
    with pytest.raises(Boom):
        for _ in pipe.stream(image=astronaut, audio=(SR, speech), output_path=str(target), chunk_frames=8,
                             output_size=256, fps=25):
            pass


def test_a_good_run_leaves_only_the_video(pipe, astronaut, speech, tmp_path, monkeypatch):
    """The control: the same call without a failure leaves exactly the MP4 (and the folders
    leading to it), nothing in the temp dir."""
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    tmp = tmp_path / "system-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    out = _call(pipe, astronaut, speech, out_dir)
    assert _snapshot(out_dir) == {"new", "new/deeper", "new/deeper/video.mp4"}
    assert out.video_path == str(out_dir / "new" / "deeper" / "video.mp4")
    assert _snapshot(tmp) == set()


def test_cli_failure_leaves_no_video_and_no_landmarks(sandbox, tmp_path, capsys):
    """`moda generate` stopped by a bad image: no MP4, no .npz, one error line."""
    if not (MODEL / "model_index.json").is_file():
        pytest.skip("no trained pipeline at pretrained/moda-base — run `make train`")
    out_dir, _ = sandbox
    from moda_hub.cli import main

    gray = tmp_path / "gray.png"
    from PIL import Image
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(gray)
    code = main(["generate", "--image", str(gray), "--text", "Hello.", "--out", str(out_dir / "a" / "v.mp4"),
                 "--landmarks", str(out_dir / "a" / "v.npz")])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "no face found" in errors[0]


def test_every_failure_above_is_a_moda_error_or_an_injected_one():
    """The injected failures are not ModaErrors, so the tests above prove that cleanup does
    not depend on the error being one of ours."""
    assert not issubclass(Boom, ModaError)
