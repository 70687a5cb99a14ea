"""Bad input gets a clear error (or a defined valid result) — never a crash.

One matrix, ``test_bad_input_matrix``: each case names an input (image, audio, text,
parameter), the pipeline call it makes, and what must come out — a ``ModaError`` subclass
whose message matches a pattern, or a valid result (finite landmarks, one row per frame).
The real shipped pipeline runs on small inputs with ``output_type="landmarks"`` (no rendering)
unless rendering is the point. Broken weights and the command line have matrices of their own.

Decisions this file documents (README "Limits" says the same):

- a face smaller than 64 px (``MIN_FACE_PX``, the longer side of its landmark box) ->
  NoFaceFoundError ("only N px across");
- a strongly turned face (profile-like, synthesised by turning the astronaut 70 degrees
  with the warp renderer), a half-hidden face and a face rolled by 90 degrees are accepted:
  MediaPipe fits the whole mesh (guessing the hidden half) and the result is a valid,
  finite animation — quality drops with the angle, there is no yaw limit;
- images longer than 4096 px (``MAX_IMAGE_SIDE``) are downscaled on load (JPEGs decoded at
  reduced scale: a 10000 x 10000 photo costs well under 600 MB); landmarks then refer to the
  downscaled image;
- speech longer than ``max_audio_seconds`` (default 600 s) -> InputTooLongError before any
  work (from the file header); the 10 000 characters espeak-ng accepts take about 11 minutes
  to say at the default rate, so 10 000 characters -> InputTooLongError (speech too long), and
  10 001 characters -> InputTooLongError (too many characters) before any synthesis;
- 10 s of silence (nothing above -60 dBFS) -> a valid video whose mouth keeps the portrait's
  shape (closed stays closed, an open smile stays as it is); music ->
  a valid video; a video file as audio -> its sound track; any sample rate / channel count;
- non-Latin scripts and emoji are spoken (espeak-ng reads emoji names) -> valid.
"""
from __future__ import annotations

import io
import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from moda_hub.errors import (AudioDecodeError, FaceIndexError, ImageDecodeError, InputTooLongError,
                             InvalidParameterError, ModaError, NoFaceFoundError, OutputPathError,
                             TextToSpeechError, WeightsError)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "moda-base"
SR = 16000

# a 100-megapixel test image is the point of one case: PIL's warning about it is expected
pytestmark = pytest.mark.filterwarnings("ignore:Image size .* could be decompression bomb")

needs_weights = pytest.mark.skipif(
    not (MODEL / "model_index.json").is_file(),
    reason="no trained pipeline at pretrained/moda-base (model_index.json missing) — run `make train`")


# ---------------------------------------------------------------------------------- media
class Media:
    """Test inputs, made on first use and cached in one folder for the whole module."""

    def __init__(self, folder: Path):
        self.dir = folder
        self._cache: dict = {}

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def path(self, name: str) -> Path:
        return self.dir / name

    # images ------------------------------------------------------------------------------
    @property
    def astronaut(self) -> np.ndarray:
        return self._once("astronaut", skimage.data.astronaut)

    @property
    def grace(self) -> np.ndarray:
        def make():
            import matplotlib.cbook
            with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
                return np.asarray(Image.open(f).convert("RGB"))
        return self._once("grace", make)

    def image_file(self, name: str, image: Image.Image, **save) -> str:
        path = self.path(name)
        if not path.exists():
            image.save(path, **save)
        return str(path)

    def astronaut_pil(self) -> Image.Image:
        return Image.fromarray(self.astronaut)

    def two_faces(self) -> np.ndarray:
        def make():
            h = self.astronaut.shape[0]
            g = np.asarray(Image.fromarray(self.grace).resize(
                (round(self.grace.shape[1] * h / self.grace.shape[0]), h)))
            return np.ascontiguousarray(np.hstack([self.astronaut, g]))
        return self._once("two_faces", make)

    def turned_face(self, yaw_degrees: float) -> np.ndarray:
        """The astronaut with her head turned by ``yaw_degrees`` (warp renderer, no weights)."""
        def make():
            from moda_hub.face.landmarks import detect_faces
            from moda_hub.face.pose import estimate_pose, from_canonical, to_canonical
            from moda_hub.render.warp import WarpRenderer

            lm = detect_faces(self.astronaut)[0]
            pose = estimate_pose(lm)
            canon = to_canonical(lm, pose)
            turned = pose.copy()
            turned[1] += yaw_degrees
            target = from_canonical(canon[None], turned[None]).astype(np.float32)
            renderer = WarpRenderer()
            prepared = renderer.prepare(self.astronaut, lm, output_size=0)
            return renderer.render(prepared, target, None)[0]
        return self._once(("turned", yaw_degrees), make)

    def exif_rotated(self) -> str:
        """A JPEG whose pixels lie on their side with EXIF orientation 6 ("rotate 90 CW")."""
        path = self.path("exif_rotated.jpg")
        if not path.exists():
            sideways = Image.fromarray(np.ascontiguousarray(np.rot90(self.astronaut, 1)))  # CCW
            exif = Image.Exif()
            exif[0x0112] = 6
            sideways.save(path, quality=92, exif=exif.tobytes())
        return str(path)

    def huge_jpeg(self) -> str:
        """10000 x 10000 px JPEG with the astronaut (scaled x4) in it, made by ffmpeg in its own
        process so this process never holds the full-size image."""
        path = self.path("huge_10000.jpg")
        if not path.exists():
            from imageio_ffmpeg import get_ffmpeg_exe as ffmpeg_exe
            src = self.image_file("astronaut.png", self.astronaut_pil())
            subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                            "-i", "color=c=gray:s=10000x10000", "-i", src, "-filter_complex",
                            "[1:v]scale=2048:2048[f];[0:v][f]overlay=4000:3000", "-frames:v", "1",
                            "-q:v", "8", str(path)], check=True, timeout=120)
        return str(path)

    def jpeg_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.astronaut_pil().save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def raw_file(self, name: str, data: bytes) -> str:
        path = self.path(name)
        path.write_bytes(data)
        return str(path)

    # audio -------------------------------------------------------------------------------
    @property
    def speech(self) -> np.ndarray:
        """About 1 s of espeak-ng speech, (N,) float32 at 16 kHz."""
        def make():
            from moda_hub.audio import synthesize_speech
            return synthesize_speech("Hello there, friend.", voice="en-us", rate=190)
        return self._once("speech", make)

    def wav_file(self, name: str, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> str:
        import soundfile as sf
        path = self.path(name)
        if not path.exists():
            sf.write(str(path), samples, rate, subtype=subtype)
        return str(path)

    def speech_at(self, rate: int, channels: int = 1) -> np.ndarray:
        from moda_hub.audio import resample
        x = resample(self.speech, SR, rate)
        return np.repeat(x[:, None], channels, axis=1) * np.linspace(1.0, 0.5, channels) if channels > 1 else x

    def chords(self, seconds: float = 3.0) -> np.ndarray:
        """Synthetic music: C, F, G major chords with harmonics, 16 kHz."""
        t = np.arange(int(seconds * SR)) / SR
        out = np.zeros_like(t)
        for k, root in enumerate((261.63, 349.23, 392.0)):
            seg = (t >= k * seconds / 3) & (t < (k + 1) * seconds / 3)
            for ratio in (1.0, 1.26, 1.5):
                for h in (1, 2, 3):
                    out[seg] += np.sin(2 * np.pi * root * ratio * h * t[seg]) / h
        return (0.2 * out / np.abs(out).max()).astype(np.float32)

    def speech_video(self) -> str:
        """An MP4 (H.264 + AAC) whose sound track is the speech."""
        path = self.path("speech_video.mp4")
        if not path.exists():
            from moda_hub.video import write_mp4
            frames = np.zeros((25, 64, 64, 3), np.uint8)
            write_mp4(frames, 25, self.speech, SR, str(path), preset="ultrafast")
        return str(path)

    def speech_mp3(self) -> str:
        path = self.path("speech.mp3")
        if not path.exists():
            from imageio_ffmpeg import get_ffmpeg_exe as ffmpeg_exe
            wav = self.wav_file("speech16k.wav", self.speech, SR)
            subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", wav,
                            "-c:a", "libmp3lame", "-b:a", "64k", str(path)], check=True, timeout=60)
        return str(path)

    def corrupt_mp3(self) -> str:
        """An ID3 header followed by noise: no decodable MP3 frame."""
        noise = np.random.default_rng(0).bytes(4000)
        return self.raw_file("corrupt.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + noise)

    def truncated_mp3(self) -> str:
        """The first 400 bytes of a real MP3: at most one frame of sound."""
        return self.raw_file("truncated.mp3", Path(self.speech_mp3()).read_bytes()[:400])


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return Media(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def pipe(shipped_pipe):
    return shipped_pipe


# ---------------------------------------------------------------------------------- checks
def _valid(out, kwargs) -> None:
    """A valid result: finite landmarks (T, 478, 3), one per frame of the speech; finite motion."""
    fps = kwargs.get("fps", 30)
    T = len(out.landmarks)
    assert T >= 1 and out.landmarks.shape == (T, 478, 3) and out.landmarks.dtype == np.float32
    assert np.isfinite(out.landmarks).all()
    assert T == max(1, round(len(out.audio) / SR * fps))
    assert np.isfinite(out.audio).all() and np.abs(out.audio).max() <= 1.0
    for name, value in out.motion.items():
        assert len(value) == T and np.isfinite(value).all(), name


def _mouth_keeps_the_portraits_shape(out, kwargs, media, pipe) -> None:
    """Silence: the mouth aperture stays at the portrait's (closed stays closed, no talking)."""
    from moda_hub.face.subject import prepare_subject
    from moda_hub.face.topology import mouth_aperture

    ref = float(mouth_aperture(prepare_subject(kwargs["image"]).landmarks_px))
    aperture = mouth_aperture(out.landmarks)
    assert np.isfinite(aperture).all()
    assert np.abs(aperture - ref).max() < 0.02, (float(aperture.min()), float(aperture.max()), ref)


def _audio_is_the_track(out, kwargs, media, pipe) -> None:
    assert abs(len(out.audio) / SR - len(media.speech) / SR) < 0.1


def _upright_and_where_the_plain_image_puts_it(out, kwargs, media, pipe) -> None:
    from moda_hub.face.topology import MOUTH_INNER_TOP
    lm = out.landmarks[0]
    eyes_y = 0.5 * (lm[33, 1] + lm[263, 1])
    assert eyes_y < lm[MOUTH_INNER_TOP, 1], "face upside down or on its side: EXIF orientation ignored"
    plain = pipe(image=media.astronaut, audio=kwargs["audio"], output_type="landmarks",
                 generator=torch.Generator().manual_seed(0)).landmarks[0]
    assert np.abs(lm[:, :2].mean(0) - plain[:, :2].mean(0)).max() < 12.0


def _huge_image_is_downscaled(out, kwargs, media, pipe) -> None:
    from moda_hub.face.subject import MAX_IMAGE_SIDE
    assert out.landmarks[..., :2].max() <= MAX_IMAGE_SIDE
    # the face (scaled x4 then x0.41) lies around (4000..6048) * 0.4096 px
    centre = out.landmarks[0, :, :2].mean(0)
    assert 1500 < centre[0] < 2600 and 1100 < centre[1] < 2200, centre


def _right_face(out, kwargs, media, pipe) -> None:
    assert out.landmarks[0, :, 0].mean() > media.astronaut.shape[1]


def _video_written(out, kwargs, media, pipe) -> None:
    from moda_hub.video import read_video_info
    assert out.video_path == kwargs["output_path"] and os.path.isfile(out.video_path)
    assert read_video_info(out.video_path)["codecs"] == ["h264", "aac"]


# ---------------------------------------------------------------------------------- the matrix
@dataclass
class Case:
    """One bad input: ``build(media, tmp)`` gives the pipeline's keyword arguments (defaults:
    the astronaut, 1 s of speech, landmarks only, seed 0); ``expect`` is an error class or
    "valid"; ``match`` a regex the message must contain; ``check`` more checks on a valid
    output; ``within`` seconds the call must take at most."""
    id: str
    build: Callable
    expect: object
    match: Optional[str] = None
    check: Optional[Callable] = None
    within: Optional[float] = None


def img(build_image):
    return lambda m, tmp: {"image": build_image(m, tmp)}


def aud(build_audio, **extra):
    return lambda m, tmp: {"audio": build_audio(m, tmp), **extra}


def txt(text, **extra):
    return lambda m, tmp: {"audio": None, "text": text, **extra}


def par(**kwargs):
    return lambda m, tmp: dict(kwargs)


def _read_only_dir(tmp: Path) -> str:
    folder = tmp / "read_only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return str(folder / "out.mp4")


LONG_TEXT = ("The quick brown fox jumps over the lazy dog. " * 223)[:10_000]

CASES = [
    # ---- images
    Case("image-no-face", img(lambda m, t: m.image_file("wall.png", Image.new("RGB", (320, 240), (128, 128, 128)))),
         NoFaceFoundError, r"no face found in '.*wall\.png'.*frontal portrait"),
    Case("image-several-faces-largest", img(lambda m, t: m.two_faces()), "valid"),
    Case("image-several-faces-index-1", lambda m, t: {"image": m.two_faces(), "face_index": 1}, "valid",
         check=_right_face),
    Case("image-several-faces-index-out-of-range", lambda m, t: {"image": m.two_faces(), "face_index": 5},
         FaceIndexError, r"face_index=5 but 2 faces found.*#0 box .*#1 box .*from 0 to 1"),
    Case("image-tiny-face", img(lambda m, t: np.asarray(m.astronaut_pil().resize((200, 200)))),
         NoFaceFoundError, r"only \d+ px across.*at least 64 px|no face found"),
    Case("image-profile-turned-70-degrees", img(lambda m, t: m.turned_face(70.0)), "valid"),
    Case("image-half-face-hidden", img(lambda m, t: np.where(
        np.arange(512)[None, :, None] > 225, np.uint8(128), m.astronaut).astype(np.uint8)), "valid"),
    Case("image-rolled-90-degrees", img(lambda m, t: np.ascontiguousarray(np.rot90(m.astronaut))), "valid"),
    Case("image-rgba-png", img(lambda m, t: m.image_file("rgba.png", Image.fromarray(np.dstack(
        [m.astronaut, np.where(np.arange(512)[:, None] < 40, 0, 255).astype(np.uint8).repeat(512, 1)]))
    )), "valid"),
    Case("image-palette-png", img(lambda m, t: m.image_file(
        "palette.png", m.astronaut_pil().convert("P", palette=Image.Palette.ADAPTIVE, colors=256))), "valid"),
    Case("image-grayscale-jpeg", img(lambda m, t: m.image_file("gray.jpg", m.astronaut_pil().convert("L"))),
         "valid"),
    Case("image-cmyk-jpeg", img(lambda m, t: m.image_file("cmyk.jpg", m.astronaut_pil().convert("CMYK"),
                                                          quality=92)), "valid"),
    Case("image-16-bit-png", img(lambda m, t: m.image_file("sixteen.png", Image.fromarray(
        (np.asarray(m.astronaut_pil().convert("L"), np.uint16) * 257).astype(np.uint16)))), "valid"),
    Case("image-exif-rotated", lambda m, t: {"image": m.exif_rotated(), "audio": (SR, m.speech)}, "valid",
         check=_upright_and_where_the_plain_image_puts_it),
    Case("image-10000x10000-jpeg", img(lambda m, t: m.huge_jpeg()), "valid", check=_huge_image_is_downscaled),
    Case("image-truncated-jpeg", img(lambda m, t: m.raw_file("truncated.jpg", m.jpeg_bytes()[:20000])),
         ImageDecodeError, r"'.*truncated\.jpg' is truncated or corrupt"),
    Case("image-text-named-jpg", img(lambda m, t: m.raw_file("notes.jpg", b"these are notes, not a photo\n" * 50)),
         ImageDecodeError, r"'.*notes\.jpg' is not an image file"),
    Case("image-zero-bytes", img(lambda m, t: m.raw_file("empty.jpg", b"")), ImageDecodeError,
         r"'.*empty\.jpg' is empty \(0 bytes\)"),
    Case("image-missing-file", img(lambda m, t: str(t / "no_such_photo.jpg")), ImageDecodeError, "does not exist"),
    # ---- audio
    Case("audio-zero-byte-file", aud(lambda m, t: m.raw_file("empty.wav", b"")), AudioDecodeError,
         r"empty \(0 bytes\)"),
    Case("audio-empty-array", aud(lambda m, t: (SR, np.zeros(0, np.float32))), AudioDecodeError, "empty"),
    Case("audio-0.1-seconds", aud(lambda m, t: m.wav_file("short.wav", m.speech[:1600], SR)), AudioDecodeError,
         r"only 0\.10 s long.*at least 0\.2 s"),
    Case("audio-10-seconds-of-silence", aud(lambda m, t: m.wav_file("silence.wav", np.zeros(10 * SR), SR)),
         "valid", check=_mouth_keeps_the_portraits_shape),
    Case("audio-10-seconds-of-silence-closed-mouth", lambda m, t: {
        "image": m.grace, "audio": m.wav_file("silence.wav", np.zeros(10 * SR), SR)},
         "valid", check=_mouth_keeps_the_portraits_shape),
    Case("audio-music-chords", aud(lambda m, t: m.wav_file("chords.wav", m.chords(), SR)), "valid"),
    Case("audio-60-minutes-file", aud(lambda m, t: m.wav_file("hour.wav", np.zeros(3600 * 8000, np.int16), 8000)),
         InputTooLongError, r"3600\.0 s long, more than the limit of 600 s", within=5.0),
    Case("audio-60-minutes-array", aud(lambda m, t: (8000, np.zeros(3600 * 8000, np.int16))),
         InputTooLongError, r"3600\.0 s long, more than the limit of 600 s", within=5.0),
    Case("audio-over-a-lower-limit", aud(lambda m, t: (SR, m.speech), max_audio_seconds=0.5),
         InputTooLongError, r"limit of 0\.5 s"),
    Case("audio-corrupt-mp3", aud(lambda m, t: m.corrupt_mp3()), AudioDecodeError, r"corrupt\.mp3"),
    Case("audio-truncated-mp3", aud(lambda m, t: m.truncated_mp3()), AudioDecodeError, r"truncated\.mp3"),
    Case("audio-mp3", aud(lambda m, t: m.speech_mp3()), "valid"),
    Case("audio-video-file-uses-its-sound", aud(lambda m, t: m.speech_video()), "valid",
         check=_audio_is_the_track),
    Case("audio-image-file-given-as-audio", aud(lambda m, t: m.image_file("astronaut.png", m.astronaut_pil())),
         AudioDecodeError, r"astronaut\.png"),
    Case("audio-8-khz", aud(lambda m, t: m.wav_file("speech8k.wav", m.speech_at(8000), 8000)), "valid"),
    Case("audio-96-khz", aud(lambda m, t: m.wav_file("speech96k.wav", m.speech_at(96000), 96000, "FLOAT")),
         "valid"),
    Case("audio-6-channels", aud(lambda m, t: m.wav_file("speech6ch.wav", m.speech_at(SR, 6), SR)), "valid"),
    Case("audio-array-with-nan", aud(lambda m, t: (SR, np.where(np.arange(len(m.speech)) == 500, np.nan,
                                                                 m.speech))), AudioDecodeError, "NaN"),
    Case("audio-array-with-inf", aud(lambda m, t: (SR, np.where(np.arange(len(m.speech)) == 9, np.inf,
                                                                 m.speech))), AudioDecodeError, "infinite"),
    Case("audio-int16-array", lambda m, t: {"audio": (m.speech * 32767).astype(np.int16), "sample_rate": SR},
         "valid"),
    Case("audio-array-without-rate", aud(lambda m, t: m.speech), AudioDecodeError, "without a sample rate"),
    Case("audio-gradio-tuple-stereo-int16-44k", aud(lambda m, t: (
        44100, (m.speech_at(44100, 2) * 32767).astype(np.int16))), "valid"),
    # ---- text
    Case("text-empty", txt(""), TextToSpeechError, "type something"),
    Case("text-whitespace", txt("  \n\t "), TextToSpeechError, "type something"),
    Case("text-10000-characters", txt(LONG_TEXT), InputTooLongError, r"takes \d+\.\d s to say.*limit of 600 s",
         within=60.0),
    Case("text-10001-characters", txt(LONG_TEXT + "x"), InputTooLongError, "10001 characters", within=5.0),
    Case("text-russian", txt("Привет, как дела?", voice="ru"), "valid"),
    Case("text-chinese", txt("你好，世界", voice="cmn"), "valid"),
    Case("text-chinese-with-english-voice", txt("你好，世界"), "valid"),
    Case("text-emoji", txt("😀👍"), "valid"),
    Case("text-unknown-voice", txt("Hello.", voice="klingon-xx"), InvalidParameterError, "klingon"),
    # ---- parameters
    Case("param-fps-0", par(fps=0), InvalidParameterError, r"fps=0 is not supported"),
    Case("param-fps-1000", par(fps=1000), InvalidParameterError, r"fps=1000 is not supported"),
    Case("param-fps-25", par(fps=25), "valid"),
    Case("param-negative-mouth-scale", par(mouth_scale=-1.0), InvalidParameterError, "mouth_scale=-1.0"),
    Case("param-negative-head-motion-scale", par(head_motion_scale=-0.5), InvalidParameterError,
         "head_motion_scale"),
    Case("param-nan-temperature", par(temperature=float("nan")), InvalidParameterError, "temperature"),
    Case("param-negative-blink-rate", par(blink_rate=-3.0), InvalidParameterError, "blink_rate"),
    Case("param-output-size-300", par(output_size=300), InvalidParameterError, "output_size=300"),
    Case("param-output-type-gif", par(output_type="gif"), InvalidParameterError, "output_type='gif'"),
    Case("param-face-index-negative", par(face_index=-1), FaceIndexError, r"face_index=-1 but 1 face found"),
    Case("param-audio-and-text", lambda m, t: {"text": "hello"}, InvalidParameterError,
         "both `audio` and `text` were given"),
    Case("param-no-speech", lambda m, t: {"audio": None}, InvalidParameterError, "no speech given"),
    Case("output-in-a-missing-folder", lambda m, t: {
        "output_type": "mp4", "output_size": 256, "output_path": str(t / "new" / "deeper" / "out.mp4")},
         "valid", check=_video_written),
    Case("output-in-a-read-only-folder", lambda m, t: {
        "output_type": "mp4", "output_path": _read_only_dir(t)}, OutputPathError, "read-only", within=1.0),
    Case("output-path-is-a-folder", lambda m, t: {"output_type": "mp4", "output_path": str(t)},
         OutputPathError, "is a folder"),
    Case("output-under-a-file", lambda m, t: {
        "output_type": "mp4", "output_path": m.raw_file("plain.txt", b"x") + "/out.mp4"},
         OutputPathError, "is a file, not a folder"),
]


@needs_weights
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case: Case, pipe, media, tmp_path):
    kwargs = {"image": media.astronaut, "audio": (SR, media.speech), "output_type": "landmarks",
              "generator": torch.Generator().manual_seed(0)}
    kwargs.update(case.build(media, tmp_path))
    start = time.perf_counter()
    try:
        if case.expect == "valid":
            out = pipe(**kwargs)
            _valid(out, kwargs)
            if case.check is not None:
                case.check(out, kwargs, media, pipe)
        else:
            assert issubclass(case.expect, ModaError)
            with pytest.raises(case.expect) as info:
                pipe(**kwargs)
            message = str(info.value)
            assert "\n" not in message, "messages are one line"
            assert " — " in message, f"the message does not say what to do: {message}"
            if case.match:
                assert re.search(case.match, message), f"{message!r} does not match {case.match!r}"
    finally:
        for p in tmp_path.rglob("*"):                 # let pytest remove read-only folders
            if p.is_dir():
                p.chmod(0o755)
    elapsed = time.perf_counter() - start
    if case.within is not None:
        assert elapsed < case.within, f"took {elapsed:.1f} s, more than {case.within} s"


def test_the_matrix_has_at_least_thirty_cases_of_every_kind():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 30 and {"image", "audio", "text", "param", "output"} <= kinds


@needs_weights
def test_too_long_speech_is_refused_before_the_portrait_is_even_read(pipe, media, monkeypatch):
    import moda_hub.pipeline as pipeline_module

    def portrait_work(*args, **kwargs):
        raise AssertionError("the portrait was processed before the speech length was checked")

    monkeypatch.setattr(pipeline_module, "prepare_subject", portrait_work)
    path = media.wav_file("hour.wav", np.zeros(3600 * 8000, np.int16), 8000)
    with pytest.raises(InputTooLongError):
        pipe(image=media.astronaut, audio=path, output_type="landmarks")


@needs_weights
def test_read_only_output_fails_before_any_work(pipe, media, tmp_path, monkeypatch):
    import moda_hub.pipeline as pipeline_module

    def work(*args, **kwargs):
        raise AssertionError("work started although the output cannot be written")

    monkeypatch.setattr(pipeline_module, "prepare_subject", work)
    monkeypatch.setattr(pipeline_module, "load_audio", work)
    try:
        with pytest.raises(OutputPathError, match="read-only"):
            pipe(image=media.astronaut, audio=(SR, media.speech), output_path=_read_only_dir(tmp_path))
        with pytest.raises(OutputPathError, match="read-only"):
            next(pipe.stream(image=media.astronaut, audio=(SR, media.speech),
                             output_path=_read_only_dir(tmp_path)))
    finally:
        (tmp_path / "read_only").chmod(0o755)


@needs_weights
def test_huge_image_keeps_memory_bounded(pipe, media):
    """A 10000 x 10000 JPEG (300 MB as RGB) is decoded at reduced scale: the process's peak
    memory grows by far less than the full image would take."""
    path = media.huge_jpeg()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # MB (Linux: KiB)
    out = pipe(image=path, audio=(SR, media.speech), output_type="landmarks")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert np.isfinite(out.landmarks).all()
    assert grown < 400, f"peak memory grew by {grown:.0f} MB for a 10000 x 10000 JPEG"


# ---------------------------------------------------------------------------------- weights
def _tiny_pipeline(folder: Path) -> Path:
    from moda_hub import FacialComposer, ModaModel, ModaPipeline, WarpRenderer

    torch.manual_seed(0)
    ModaPipeline(moda=ModaModel(dim=16, n_heads=2, n_layers=1),
                 composer=FacialComposer(hidden=16, n_layers=1),
                 renderer=WarpRenderer()).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A small but complete pipeline folder (random weights, saved properly)."""
    return _tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")


WEIGHTS = "composer/diffusion_pytorch_model.safetensors"


def _edit_tensors(edit):
    def mutate(folder: Path):
        import safetensors.torch
        path = folder / WEIGHTS
        tensors = safetensors.torch.load_file(str(path))
        edit(tensors)
        safetensors.torch.save_file(tensors, str(path))
    return mutate


def _first_matrix(tensors):
    return next(k for k in sorted(tensors) if tensors[k].ndim == 2)


def _set(key_fn, value_fn):
    def edit(tensors):
        k = key_fn(tensors)
        tensors[k] = value_fn(tensors[k])
    return edit


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


WEIGHT_CASES = {
    "missing-component-folder": (lambda f: __import__("shutil").rmtree(f / "composer"),
                                 r"component folder '.*composer' is missing"),
    "missing-weights-file": (lambda f: (f / WEIGHTS).unlink(), r"composer weights '.*safetensors' are missing"),
    "missing-config": (lambda f: (f / "moda/config.json").unlink(), r"moda config '.*config\.json' is missing"),
    "missing-model-index": (lambda f: (f / "model_index.json").unlink(), r"model_index\.json' is missing"),
    "config-not-json": (lambda f: (f / "moda/config.json").write_text("{oops"), r"config\.json' is not valid JSON"),
    "zero-byte-weights": (lambda f: (f / WEIGHTS).write_bytes(b""), r"safetensors' is empty"),
    "truncated-weights": (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:5000]),
                          r"safetensors' is corrupted or truncated"),
    "garbage-weights": (lambda f: (f / WEIGHTS).write_bytes(os.urandom(4096)),
                        r"safetensors' is corrupted or truncated"),
    "missing-tensor": (_edit_tensors(lambda t: t.pop(sorted(t)[0])), r"lacks 1 tensor\(s\).*would be random"),
    "extra-tensor": (_edit_tensors(lambda t: t.update(extra=torch.zeros(3))), r"holds 1 tensor\(s\).*does not have"),
    "wrong-shape": (_edit_tensors(_set(_first_matrix, lambda t: torch.zeros(t.shape[0] + 1, t.shape[1]))),
                    r"wrong shape"),
    "config-does-not-fit-weights": (lambda f: (f / "composer/config.json").write_text(
        (f / "composer/config.json").read_text().replace('"hidden": 16', '"hidden": 32')), r"wrong shape"),
    "nan-weights": (_edit_tensors(_set(_first_matrix, _nan)), r"NaN or infinite"),
    "pickle-weights-only": (lambda f: (torch.save({}, f / "composer/diffusion_pytorch_model.bin"),
                                       (f / WEIGHTS).unlink()), r"only pickle weights .*never loaded"),
    "foreign-component-library": (lambda f: (f / "model_index.json").write_text(
        (f / "model_index.json").read_text().replace('"moda_hub.render.warp"', '"os"')), r"only moda_hub"),
    "custom-pipeline-class": (lambda f: (f / "model_index.json").write_text(
        (f / "model_index.json").read_text().replace('"ModaPipeline"', '["pipeline", "Evil"]')),
                              r"custom pipeline code is never loaded"),
    "no-such-folder": (lambda f: __import__("shutil").rmtree(f), r"no pipeline folder"),
}


@pytest.mark.parametrize("name", list(WEIGHT_CASES))
def test_broken_weights_raise_weights_error_naming_the_file(name, tiny_pipeline, tmp_path):
    import shutil

    from moda_hub import ModaPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, folder)
    mutate, pattern = WEIGHT_CASES[name]
    mutate(folder)
    with pytest.raises(WeightsError) as info:
        ModaPipeline.from_pretrained(str(folder))
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "make train" in message and "re-download" in message and "\n" not in message


def test_intact_tiny_pipeline_loads(tiny_pipeline):
    from moda_hub import ModaPipeline
    assert type(ModaPipeline.from_pretrained(str(tiny_pipeline)).renderer).__name__ == "WarpRenderer"


@needs_weights
def test_shipped_weights_pass_every_check():
    from moda_hub.weights import check_pipeline_folder
    assert check_pipeline_folder(MODEL) == {"moda": "ModaModel", "composer": "FacialComposer",
                                           "renderer": "WarpRenderer"}


# ---------------------------------------------------------------------------------- command line
def _cli(argv, capsys):
    from moda_hub.cli import main
    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()], time.perf_counter() - start


@pytest.mark.parametrize("seed", [str(2 ** 64 + 1), "-1", str(2 ** 63)])
def test_cli_refuses_seeds_torch_cannot_take_before_loading_weights(seed, capsys, tmp_path):
    code, lines, elapsed = _cli(["generate", "--image", "x.jpg", "--text", "hi", "--seed", seed,
                                 "--model", str(tmp_path / "not-loaded"), "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 2 and lines == [f"error: --seed {seed} is out of range — use 0 .. 2**63-1"]
    assert elapsed < 5


def test_cli_read_only_output_is_one_line_before_loading_weights(capsys, tmp_path):
    code, lines, _ = _cli(["generate", "--image", "x.jpg", "--text", "hi", "--model", str(tmp_path / "nope"),
                           "--out", _read_only_dir(tmp_path)], capsys)
    (tmp_path / "read_only").chmod(0o755)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "read-only" in lines[0]


def test_cli_broken_weights_is_one_line(capsys, tmp_path, tiny_pipeline):
    import shutil
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, folder)
    (folder / WEIGHTS).write_bytes(b"not safetensors at all")
    code, lines, _ = _cli(["generate", "--image", "x.jpg", "--text", "hi", "--model", str(folder),
                           "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 2 and len(lines) == 1 and "corrupted or truncated" in lines[0] and "make train" in lines[0]


@needs_weights
@pytest.mark.parametrize("args,pattern", [
    (["--fps", "1000"], "fps=1000 is not supported"),
    (["--mouth-scale", "-2"], "mouth_scale=-2.0 is out of range"),
    (["--size", "300"], "output_size=300"),
])
def test_cli_bad_parameters_are_one_line(args, pattern, capsys, tmp_path, media):
    image = media.image_file("astronaut.png", media.astronaut_pil())
    code, lines, _ = _cli(["generate", "--image", image, "--text", "hi", "--out", str(tmp_path / "o.mp4"), *args],
                          capsys)
    assert code == 2 and len(lines) == 1 and pattern in lines[0], lines
    assert not (tmp_path / "o.mp4").exists()
