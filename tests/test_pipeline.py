"""ModaPipeline end to end with the shipped weights: Hub round trip, MP4 output, seeds, errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch

from moda_hub import ModaPipeline, NoFaceFoundError
from moda_hub.video import read_video_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "pretrained", "moda-base")


@pytest.fixture(scope="module")
def pipe():
    return ModaPipeline.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


def landmarks(pipe, image, seed, **kw):
    kw.setdefault("text", "Hello, this is a short test.")
    return pipe(image=image, generator=torch.Generator().manual_seed(seed), output_type="landmarks", **kw)


def test_save_pretrained_from_pretrained_round_trip_same_landmarks(pipe, astronaut, tmp_path):
    """Round trip through a folder; the folder holds no local paths."""
    pipe.save_pretrained(tmp_path)
    files = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert all(f.endswith((".json", ".safetensors")) or f == "README.md" for f in files), files
    assert {"model_index.json", "moda/config.json", "composer/config.json"} <= set(files)
    for f in files:        # no path of the machine that saved it (diffusers records where it loaded from)
        if f.endswith(".json"):
            assert ROOT not in (tmp_path / f).read_text(), f
    again = ModaPipeline.from_pretrained(tmp_path)
    a = landmarks(pipe, astronaut, 3).landmarks
    b = landmarks(again, astronaut, 3).landmarks
    np.testing.assert_array_equal(a, b)


def test_diffusion_pipeline_from_pretrained_after_import(pipe):
    from diffusers import DiffusionPipeline
    loaded = DiffusionPipeline.from_pretrained(MODEL)
    assert isinstance(loaded, ModaPipeline)
    assert type(loaded.renderer).__name__ == "WarpRenderer"
    placed = ModaPipeline.from_pretrained(MODEL, device_map="cpu")
    assert placed.moda.device.type == "cpu" and placed.model_card.startswith("---")


def test_astronaut_with_espeak_speech_gives_h264_aac_mp4_of_audio_length(pipe, astronaut, tmp_path):
    path = tmp_path / "out.mp4"
    out = pipe(image=astronaut, text="Good morning. Moda turns one photo into a talking video.",
               generator=torch.Generator().manual_seed(0), fps=25, output_size=256,
               output_path=str(path))
    assert out.video_path == str(path) and path.exists()
    info = read_video_info(path, exact=True)
    assert sorted(info["codecs"]) == ["aac", "h264"]
    duration = len(out.audio) / 16000
    assert abs(info["video_duration"] - duration) <= 1 / 25 + 1e-6
    assert out.landmarks.shape == (round(duration * 25), 478, 3)
    assert out.landmarks.dtype == np.float32
    assert not [p for p in os.listdir(tmp_path) if p != "out.mp4"], "temporary files left behind"


def test_same_seed_same_video_frames(pipe, astronaut):
    kw = dict(text="Same seed, same frames.", output_type="np", output_size=256)
    a = pipe(image=astronaut, generator=torch.Generator().manual_seed(7), **kw)
    b = pipe(image=astronaut, generator=torch.Generator().manual_seed(7), **kw)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.shape[1:] == (256, 256, 3)


def test_lips_follow_audio_while_head_motion_varies_with_seed(pipe, astronaut):
    from moda_hub.face.topology import mouth_aperture
    text = "We were away a year ago, when the blue boat sailed past the old harbour wall."
    a = landmarks(pipe, astronaut, 0, text=text)
    b = landmarks(pipe, astronaut, 1, text=text)
    r = np.corrcoef(mouth_aperture(a.landmarks), mouth_aperture(b.landmarks))[0, 1]
    assert r >= 0.95
    head_diff = np.abs(a.motion["head"][:, :3] - b.motion["head"][:, :3]).mean()
    assert head_diff >= 1.0, f"head poses differ by only {head_diff:.2f} degrees on average"


def test_image_without_a_face_names_the_file(pipe, tmp_path):
    import PIL.Image
    path = tmp_path / "wall.png"
    PIL.Image.fromarray(np.full((320, 320, 3), 128, np.uint8)).save(path)
    with pytest.raises(NoFaceFoundError, match="wall.png"):
        pipe(image=str(path), text="hello", output_type="landmarks")


def test_cli_prints_one_line_and_exits_nonzero_without_a_face(tmp_path):
    import PIL.Image
    path = tmp_path / "blank.jpg"
    PIL.Image.fromarray(np.full((200, 200, 3), 30, np.uint8)).save(path)
    proc = subprocess.run([sys.executable, "-m", "moda_hub.cli", "generate", "--image", str(path),
                           "--text", "hello", "--out", str(tmp_path / "o.mp4"), "--model", MODEL],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "blank.jpg" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_blink_rate_control_sets_blinks_per_minute(pipe, astronaut):
    from moda_hub.face.topology import eye_openness
    from moda_hub.motion.blinks import count_blinks
    wav = pipe.prepare(astronaut, text="The quick brown fox jumps over the lazy dog, again and again. " * 6).wav
    per_min = {}
    for rate in (0, 25):
        out = pipe(image=astronaut, audio=wav, sample_rate=16000, blink_rate=rate, output_type="landmarks",
                   generator=torch.Generator().manual_seed(0))
        minutes = len(out.landmarks) / out.fps / 60
        per_min[rate] = count_blinks(eye_openness(out.landmarks), out.fps) / minutes
    assert per_min[0] == 0
    assert 12 <= per_min[25] <= 40, per_min


def test_still_mode_keeps_head_fixed_and_blinks(pipe, astronaut):
    out = pipe(image=astronaut, text="Still mode keeps the head where it is.", still=True, blink_rate=40,
               output_type="landmarks", generator=torch.Generator().manual_seed(2))
    assert np.abs(out.motion["head"]).max() == 0 and np.abs(out.motion["torso"]).max() == 0
    assert np.ptp(out.motion["lip"][:, :, 1], axis=0).max() > 0.02, "lips must still move"
