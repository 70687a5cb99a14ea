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

    def big_png(self, side: int) -> str:
        """A side x side gray PNG (a few hundred KB: it compresses to nothing), written row by row
        so this process never holds the image."""
        path = self.path(f"big_{side}.png")
        if not path.exists():
            path.write_bytes(_gray_png(side, side))
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
            from moda_hub.speech.audio import synthesize_speech
            return synthesize_speech("Hello there, friend.", voice="en-us", rate=190)
        return self._once("speech", make)

    def wav_file(self, name: str, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> str:
        import soundfile as sf
        path = self.path(name)
        if not path.exists():
            sf.write(str(path), samples, rate, subtype=subtype)
        return str(path)

    def speech_at(self, rate: int, channels: int = 1) -> np.ndarray:
        from moda_hub.speech.audio import resample
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
    assert not [p for p in Path(out.video_path).parent.iterdir() if p.name.startswith(".moda")]
    assert read_video_info(out.video_path)["codecs"] == ["h264", "aac"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds the first rows only: a decompression
    bomb is decided from its header, so the rest is never needed."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (3 * width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _gray_png(width: int, height: int) -> bytes:
    """A complete, valid width x height gray RGB PNG, compressed row by row (never held whole)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + b"\x80" * (3 * width)
    packer, block = zlib.compressobj(9), row * 100
    data = b"".join(packer.compress(block) for _ in range(height // 100))
    data += packer.compress(row * (height % 100)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _phone_photo(m) -> str:
    """A 4000 x 3000 (12 MP) PNG with the astronaut's face scaled x2 in it, like a phone photo."""
    path = m.path("phone_12mp.png")
    if not path.exists():
        canvas = Image.new("RGB", (4000, 3000), (96, 110, 120))
        canvas.paste(m.astronaut_pil().resize((1024, 1024)), (1500, 900))
        canvas.save(path)
    return str(path)


def _output_is(path: str, audio: bool = False, image: bool = False) -> dict:
    kwargs = {"output_type": "mp4", "output_path": path}
    if audio:
        kwargs["audio"] = path
    if image:
        kwargs["image"] = path
    kwargs["_untouched"] = {path: Path(path).read_bytes()}
    return kwargs


def _hard_link_to_speech(m, t) -> dict:
    speech = m.wav_file("in.wav", m.speech, SR)
    link = t / "another_name.mp4"
    os.link(speech, link)
    return {"output_type": "mp4", "audio": speech, "output_path": str(link),
            "_untouched": {speech: Path(speech).read_bytes()}}


def _inputs_untouched(out, kwargs, media, pipe) -> None:
    for path, data in kwargs["_untouched"].items():
        assert Path(path).read_bytes() == data, f"{path} was changed"
    assert not [p for p in Path(kwargs["output_path"]).parent.iterdir() if p.name.startswith(".moda")]


def _fifo(tmp: Path) -> str:
    path = tmp / "pipe.mp4"
    os.mkfifo(path)
    return str(path)


def _device_node(tmp: Path) -> str:
    """A character device like /dev/null (made with mknod as root, else /dev/null itself)."""
    import stat as stat_module
    path = tmp / "null.mp4"
    try:
        os.mknod(path, 0o666 | stat_module.S_IFCHR, os.makedev(1, 3))
        return str(path)
    except PermissionError:
        return "/dev/null"


def _device_node_untouched(out, kwargs, media, pipe) -> None:
    import stat as stat_module
    assert stat_module.S_ISCHR(os.lstat(kwargs["output_path"]).st_mode)


def _link_elsewhere(tmp: Path) -> str:
    (tmp / "elsewhere").mkdir()
    target = tmp / "elsewhere" / "precious.mp4"
    target.write_bytes(b"precious")
    (tmp / "out").mkdir()
    link = tmp / "out" / "clip.mp4"
    link.symlink_to(target)
    return str(link)


def _link_target_untouched(out, kwargs, media, pipe) -> None:
    link = Path(kwargs["output_path"])
    assert link.is_symlink() and link.resolve().read_bytes() == b"precious"


def _existing(tmp: Path, name: str, data) -> str:
    path = tmp / name
    path.write_bytes(Path(data).read_bytes() if isinstance(data, str) else data)
    return str(path)


def _video_written_at_the_normalised_path(out, kwargs, media, pipe) -> None:
    from moda_hub.video import read_video_info
    normal = os.path.normpath(kwargs["output_path"])
    assert out.video_path == normal and ".." not in out.video_path
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
    Case("image-144-megapixel-png", img(lambda m, t: m.big_png(12000)), ImageDecodeError,
         r"is 12000 x 12000 pixels \(144 megapixels\), more than the 40 megapixels", within=3.0),
    Case("image-400-megapixel-png-bomb", img(lambda m, t: m.raw_file("bomb.png", _png_header_only(20000, 20000))),
         ImageDecodeError,
         r"too large to decode safely", within=3.0),
    Case("image-12-megapixel-png-full-size", lambda m, t: {"image": _phone_photo(m), "output_size": 0}, "valid"),
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
    # ---- parameters of the wrong type (issue 21): numpy scalars are numbers, strings never are
    Case("param-numpy-float32-scales", par(temperature=np.float32(1.0), mouth_scale=np.float32(1.0),
                                           head_motion_scale=np.float64(0.5), blink_rate=np.int64(10)), "valid"),
    Case("param-numpy-int-fps-and-face-index", par(fps=np.int64(25), face_index=np.int32(0)), "valid"),
    Case("param-temperature-string", par(temperature="1.0"), InvalidParameterError,
         r"temperature='1\.0' is a str — pass a number"),
    Case("param-mouth-scale-bool", par(mouth_scale=True), InvalidParameterError, r"mouth_scale=True is a bool"),
    Case("param-still-string-no", par(still="no"), InvalidParameterError, r"still='no' is a str — pass True"),
    Case("param-still-numpy-bool", par(still=np.bool_(True)), "valid"),
    Case("param-face-index-string", par(face_index="0"), InvalidParameterError,
         r"face_index='0' is a str — pass a whole number"),
    Case("param-max-audio-seconds-string", par(max_audio_seconds="600"), InvalidParameterError,
         r"max_audio_seconds='600'.*str given where a number is expected"),
    Case("param-max-audio-seconds-zero", par(max_audio_seconds=0), InvalidParameterError,
         r"max_audio_seconds=0 — pass a positive number"),
    Case("param-fps-string", par(fps="30"), InvalidParameterError, r"fps='30' is not supported.*str given"),
    Case("param-output-size-string", par(output_size="0"), InvalidParameterError, r"output_size='0'.*str given"),
    Case("param-speech-rate-0", txt("Hello.", speech_rate=0), InvalidParameterError,
         r"speech_rate=0 is out of range — use a whole number of words per minute from 80 to 450"),
    Case("param-text-not-a-string", txt(12345), InvalidParameterError, r"text is a int — pass the words"),
    Case("param-generator-int", par(generator=5), InvalidParameterError,
         r"generator=5 is a int — pass a torch\.Generator, e\.g\. torch\.Generator\(\)\.manual_seed\(5\)"),
    Case("param-generator-numpy", par(generator=np.random.default_rng(0)), InvalidParameterError,
         r"is a Generator — pass a torch\.Generator"),
    Case("param-generator-list-of-one", par(generator=[torch.Generator().manual_seed(0)]), "valid"),
    Case("param-generator-list-of-two", par(generator=[torch.Generator(), torch.Generator()]),
         InvalidParameterError, r"generator is a list of 2 — this pipeline makes one video per call"),
    Case("param-sample-rate-string", aud(lambda m, t: m.speech, sample_rate="16000"), InvalidParameterError,
         r"sample_rate='16000'"),
    # ---- outputs that would destroy or mislabel something (issue 21)
    Case("output-is-the-input-speech", lambda m, t: _output_is(m.wav_file("in.wav", m.speech, SR), audio=True),
         OutputPathError, r"is an input of this call and would be destroyed", check=_inputs_untouched, within=2.0),
    Case("output-is-the-input-portrait", lambda m, t: _output_is(m.image_file("face_in.png", m.astronaut_pil()),
                                                                   image=True),
         OutputPathError, r"is an input of this call", check=_inputs_untouched, within=2.0),
    Case("output-is-a-hard-link-to-the-speech", lambda m, t: _hard_link_to_speech(m, t), OutputPathError,
         r"is an input of this call", check=_inputs_untouched),
    Case("output-gif-extension", lambda m, t: {"output_type": "mp4", "output_path": str(t / "clip.gif")},
         OutputPathError, r"ends in '\.gif', but an MP4 video is written — use a path ending in \.mp4"),
    Case("output-no-extension", lambda m, t: {"output_type": "mp4", "output_path": str(t / "clip")},
         OutputPathError, r"ends in 'no extension'"),
    Case("output-a-fifo", lambda m, t: {"output_type": "mp4", "output_path": _fifo(t)}, OutputPathError,
         r"is a FIFO \(named pipe\), which is never replaced", within=2.0),
    Case("output-a-device-node", lambda m, t: {"output_type": "mp4", "output_path": _device_node(t)},
         OutputPathError, r"is a device node, which is never replaced", check=_device_node_untouched, within=2.0),
    Case("output-a-symlink-into-another-folder", lambda m, t: {"output_type": "mp4",
                                                               "output_path": _link_elsewhere(t)},
         OutputPathError, r"symbolic link into another folder", check=_link_target_untouched),
    Case("output-an-existing-text-file", lambda m, t: {"output_type": "mp4",
                                                       "output_path": _existing(t, "notes.mp4", b"my notes")},
         OutputPathError, r"a file that is not an MP4 video is already there.*--overwrite"),
    Case("output-an-existing-text-file-with-overwrite", lambda m, t: {
        "output_type": "mp4", "output_size": 256, "overwrite": True,
        "output_path": _existing(t, "notes.mp4", b"my notes")}, "valid", check=_video_written),
    Case("output-an-existing-video-is-replaced", lambda m, t: {
        "output_type": "mp4", "output_size": 256, "output_path": _existing(t, "old.mp4", m.speech_video())},
         "valid", check=_video_written),
    Case("output-dot-dot-through-missing-folders", lambda m, t: {
        "output_type": "mp4", "output_size": 256, "output_path": str(t / "a" / "b" / ".." / ".." / "c" / "out.mp4")},
         "valid", check=_video_written_at_the_normalised_path),
    Case("output-250-character-name", lambda m, t: {
        "output_type": "mp4", "output_size": 256, "output_path": str(t / ("n" * 246 + ".mp4"))},
         "valid", check=_video_written),
    Case("output-256-character-name", lambda m, t: {"output_type": "mp4", "output_path": str(t / ("n" * 252 + ".mp4"))},
         OutputPathError, r"file name is 256 bytes, more than the 255 this file system allows", within=2.0),
]


@needs_weights
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case: Case, pipe, media, tmp_path):
    kwargs = {"image": media.astronaut, "audio": (SR, media.speech), "output_type": "landmarks",
              "generator": torch.Generator().manual_seed(0)}
    kwargs.update(case.build(media, tmp_path))
    call = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    start = time.perf_counter()
    try:
        if case.expect == "valid":
            out = pipe(**call)
            _valid(out, kwargs)
            if case.check is not None:
                case.check(out, kwargs, media, pipe)
        else:
            assert issubclass(case.expect, ModaError)
            with pytest.raises(case.expect) as info:
                pipe(**call)
            message = str(info.value)
            assert "\n" not in message, "messages are one line"
            assert " — " in message, f"the message does not say what to do: {message}"
            if case.match:
                assert re.search(case.match, message), f"{message!r} does not match {case.match!r}"
            if case.check is not None:
                case.check(None, kwargs, media, pipe)
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


@needs_weights
def test_a_144_megapixel_png_is_refused_from_its_header(pipe, media):
    """0.5 MB of PNG, 144 megapixels: it used to be decoded (CLI peak 1.6 GB); now the header decides."""
    path = media.big_png(12000)
    assert os.path.getsize(path) < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(ImageDecodeError, match="144 megapixels"):
        pipe(image=path, audio=(SR, media.speech), output_type="landmarks")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 50


@needs_weights
def test_full_image_output_of_a_12_megapixel_photo_holds_a_few_frames_at_a_time(pipe, media):
    """Full-image output of a 4000 x 3000 photo: chunks of at most CHUNK_BYTES of frames (2 frames,
    not 32 = 1.2 GB), and the process's peak memory grows by far less than one 32-frame chunk."""
    from moda_hub.pipeline import CHUNK_BYTES

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = []
    for chunk in pipe.stream(image=_phone_photo(media), audio=(SR, media.speech[:SR // 2]), output_size=0,
                             chunk_frames=32, generator=torch.Generator().manual_seed(0)):
        assert chunk.frames.shape[1:] == (3000, 4000, 3)
        sizes.append(len(chunk.frames))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert sum(sizes) == 15 and max(sizes) == CHUNK_BYTES // (3000 * 4000 * 3) == 2, sizes
    assert grown < 700, f"peak memory grew by {grown:.0f} MB (one 32-frame chunk alone is 1150 MB)"


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
    # issue 21: a config asking for a huge model fails from the headers, before anything is built
    "config-asks-for-a-million-layers": (lambda f: _edit_config(f / "moda/config.json", n_layers=10 ** 6),
                                         r"asks for a far larger ModaModel than its weights hold"),
    "config-asks-for-a-huge-width": (lambda f: _edit_config(f / "composer/config.json", hidden=10 ** 7),
                                     r"asks for a far larger FacialComposer than its weights hold"),
    "weights-over-the-size-cap": (lambda f: _huge_header(f / WEIGHTS), r"more than moda-hub loads for one component"),
}


def _edit_config(path: Path, **values) -> None:
    import json
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


def _huge_header(path: Path) -> None:
    """A safetensors file whose header declares a 3-billion-value tensor (the data is not there:
    the size cap must refuse it from the header, before safetensors or torch look at the data)."""
    import json
    import struct
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 10 ** 9], "data_offsets": [0, 12 * 10 ** 9]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 12 * 10 ** 9)          # sparse: no disk used


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


def test_a_config_asking_for_a_million_layers_fails_in_a_second_without_allocating(tiny_pipeline, tmp_path):
    """Issue 21: it used to build the model layer by layer (2.9 GB and rising at 90 s)."""
    import shutil

    from moda_hub import ModaPipeline

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, folder)
    _edit_config(folder / "moda/config.json", n_layers=10 ** 6)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=r"moda/config\.json' asks for a far larger ModaModel"):
        ModaPipeline.from_pretrained(str(folder))
    assert time.perf_counter() - start < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 100


def test_intact_tiny_pipeline_loads(tiny_pipeline):
    from moda_hub import ModaPipeline
    assert type(ModaPipeline.from_pretrained(str(tiny_pipeline)).renderer).__name__ == "WarpRenderer"


@needs_weights
def test_shipped_weights_pass_every_check():
    from moda_hub import ModaPipeline
    from moda_hub.weights import check_pipeline_folder
    assert check_pipeline_folder(MODEL, ModaPipeline) == {"moda": "ModaModel", "composer": "FacialComposer",
                                           "renderer": "WarpRenderer", "audio_encoder": "WhisperTinyEncoder"}


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


# ---------------------------------------------------------------------------------- command line: outputs (issue 21)
def _speech_file(media) -> str:
    return media.wav_file("cli_speech.wav", media.speech, SR)


def test_cli_out_dev_null_and_out_the_input_speech_leave_both_untouched_with_one_line(capsys, tmp_path, media):
    """As root (CI runs as root) --out /dev/null used to replace the system's /dev/null by an MP4, and
    --out <the speech> overwrote the speech. Both must be refused before any work, in one line."""
    import stat as stat_module
    speech = _speech_file(media)
    before = Path(speech).read_bytes()
    image = media.image_file("astronaut.png", media.astronaut_pil())
    model = str(tmp_path / "never-loaded")                  # the refusal comes before the weights load
    code, lines, _ = _cli(["generate", "--image", image, "--audio", speech, "--model", model, "--out", speech], capsys)
    assert code == 2 and len(lines) == 1 and "is an input of this call" in lines[0], lines
    assert Path(speech).read_bytes() == before
    # a private copy of the device first: only when that is refused is the real /dev/null tried
    private = _device_node(tmp_path)
    for node in dict.fromkeys([private, "/dev/null"]):
        device = os.lstat(node)
        code, lines, _ = _cli(["generate", "--image", image, "--audio", speech, "--model", model, "--out", node], capsys)
        assert code == 2 and len(lines) == 1 and "is a device node, which is never replaced" in lines[0], lines
        after = os.lstat(node)
        assert stat_module.S_ISCHR(after.st_mode) and after.st_rdev == device.st_rdev and after.st_ino == device.st_ino
    assert Path(speech).read_bytes() == before
    for flag in ("--out", "--landmarks"):           # --overwrite never makes an input or a device writable
        code, lines, _ = _cli(["generate", "--image", image, "--audio", speech, "--model", model, "--overwrite",
                               flag, speech] + (["--out", str(tmp_path / "o.mp4")] if flag == "--landmarks" else []),
                              capsys)
        assert code == 2 and len(lines) == 1 and ("is an input" in lines[0] or "ends in '.wav'" in lines[0]), lines
    assert Path(speech).read_bytes() == before


def test_cli_outputs_are_checked_together_before_any_work(capsys, tmp_path, media):
    speech = _speech_file(media)
    image = media.image_file("astronaut.png", media.astronaut_pil())
    model = str(tmp_path / "never-loaded")
    cases = [(["--out", str(tmp_path / "same.mp4"), "--landmarks", str(tmp_path / "same.mp4")], "ends in '.mp4'"),
             (["--out", str(tmp_path / "v.mp4"), "--landmarks", str(tmp_path / "lm.json")], "ends in '.json'"),
             (["--out", str(tmp_path / "v.mp4"), "--landmarks", _fifo(tmp_path)], "is a FIFO"),
             (["--out", str(tmp_path / "v.mp4"), "--landmarks", _existing(tmp_path, "notes.npz", b"notes")],
              "a file that is not a landmarks .npz is already there"),
             (["--out", str(tmp_path / "v.mp4"), "--landmarks", m_read_only := _read_only_dir(tmp_path)[:-4] + ".npz"],
              "read-only")]
    try:
        for args, pattern in cases:
            code, lines, elapsed = _cli(["generate", "--image", image, "--audio", speech, "--model", model, *args],
                                        capsys)
            assert code == 2 and len(lines) == 1 and pattern in lines[0] and elapsed < 5, (args, lines)
            assert not (tmp_path / "v.mp4").exists()
    finally:
        Path(m_read_only).parent.chmod(0o755)


@needs_weights
def test_cli_landmarks_into_a_missing_folder_are_written_with_the_video(capsys, tmp_path, media):
    """It used to write the video, then fail on the landmarks (exit 1, a ResourceWarning)."""
    speech = _speech_file(media)
    image = media.image_file("astronaut.png", media.astronaut_pil())
    video, marks = tmp_path / "v" / "clip.mp4", tmp_path / "new" / "deeper" / "clip.npz"
    code, lines, _ = _cli(["generate", "--image", image, "--audio", speech, "--size", "256", "--out",
                           str(tmp_path / "v" / ".." / "v" / "clip.mp4"), "--landmarks", str(marks)], capsys)
    assert code == 0 and lines == [], lines
    with np.load(marks) as data:
        assert data["landmarks"].shape[1:] == (478, 3) and float(data["fps"]) == 30
    assert video.is_file() and sorted(p.name for p in video.parent.iterdir()) == ["clip.mp4"]
    assert sorted(p.name for p in marks.parent.iterdir()) == ["clip.npz"]


@needs_weights
def test_cli_when_the_landmarks_cannot_be_written_neither_output_appears(capsys, tmp_path, media, monkeypatch):
    """Written together or not at all: a failure saving the .npz (here: the disk fills) leaves no video."""
    speech = _speech_file(media)
    image = media.image_file("astronaut.png", media.astronaut_pil())

    def disk_full(*args, **kwargs):
        raise OutputPathError("cannot write the landmarks (No space left on device) — free some space")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    code, lines, _ = _cli(["generate", "--image", image, "--audio", speech, "--size", "256", "--out",
                           str(tmp_path / "out" / "clip.mp4"), "--landmarks", str(tmp_path / "out" / "clip.npz")], capsys)
    assert code == 2 and len(lines) == 1 and "No space left" in lines[0], lines
    assert not (tmp_path / "out").exists(), list((tmp_path / "out").iterdir())


def test_cli_speech_rate_0_names_the_flag_and_what_to_do(capsys, tmp_path):
    code, lines, elapsed = _cli(["generate", "--image", "x.jpg", "--text", "hi", "--speech-rate", "0",
                                 "--model", str(tmp_path / "never-loaded"), "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 2 and lines == ["error: --speech-rate 0 is out of range — use 80 to 450 words per minute "
                                   "(default 165)"] and elapsed < 5


@needs_weights
def test_ctrl_c_during_generate_text_is_one_line(tmp_path, media):
    """A terminal's Ctrl-C reaches the whole process group: the espeak-ng and phone helpers used to
    print their own KeyboardInterrupt tracebacks, interleaved with "error: interrupted"."""
    from ctrl_c import helper_count, interrupt_when_helpers_run

    image = media.image_file("astronaut.png", media.astronaut_pil())
    out = tmp_path / "clip.mp4"
    code, stderr = interrupt_when_helpers_run(
        [os.environ.get("PYTHON", __import__("sys").executable), "-m", "moda_hub.cli", "generate", "--image", image,
         "--text", "Hello there, this sentence keeps the portrait talking for a little while longer.",
         "--out", str(out)], ROOT, writing_into=str(tmp_path), helpers=helper_count(MODEL))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 130 and lines == ["error: interrupted — nothing was written"], stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_staged_outputs_appear_together_or_the_old_files_stay(tmp_path, monkeypatch):
    """StagedOutputs: when moving the second output into place fails, the first is undone and the
    files that were there before come back."""
    from moda_hub.output_paths import StagedOutputs

    video, marks = tmp_path / "clip.mp4", tmp_path / "sub" / "clip.npz"
    video.write_bytes(b"old video")
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst) == str(marks):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    with pytest.raises(OutputPathError, match="nothing was changed"):
        with StagedOutputs() as staged:
            Path(staged.stage(str(video), ".mp4")).write_bytes(b"new video")
            Path(staged.stage(str(marks), ".npz")).write_bytes(b"new marks")
            monkeypatch.setattr(os, "replace", failing_replace)
            staged.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert video.read_bytes() == b"old video" and not marks.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]      # no temp files, no new folder
    with StagedOutputs() as staged:
        Path(staged.stage(str(video), ".mp4")).write_bytes(b"new video")
        Path(staged.stage(str(marks), ".npz")).write_bytes(b"new marks")
        staged.commit()
    assert video.read_bytes() == b"new video" and marks.read_bytes() == b"new marks"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "sub"]
