"""MP4 writing (H.264 + AAC) and reading, through the ffmpeg binary that imageio-ffmpeg ships.

Everything goes through ``imageio_ffmpeg.get_ffmpeg_exe()`` run as a subprocess with an
argument list (no shell). There is no ffprobe: stream information is parsed from
``ffmpeg -i`` (see :func:`read_video_info`).

Writing is atomic: every file is made in a hidden temporary folder next to the destination
and ``os.replace``'d into place at the end; on any failure the temporary folder is removed
and nothing appears at ``path``.

Timing contract of the writer: with ``audio`` of duration ``D`` s, the video gets
``T = max(frames written, round(D * fps))`` frames (missing frames repeat the last one) and the
audio track is padded with silence or trimmed to exactly ``T / fps`` s, so video and audio
durations agree to the sample (up to AAC's 1-sample rounding) — never more than a frame apart.

Example::

    >>> import numpy as np
    >>> from moda_hub.video import write_mp4, read_video_info
    >>> frames = np.zeros((30, 64, 64, 3), np.uint8)
    >>> wav = np.zeros(16000, np.float32)
    >>> write_mp4(frames, 30, wav, 16000, "out.mp4")
    >>> read_video_info("out.mp4")["codecs"]      # ['h264', 'aac']
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import queue
import tempfile
import threading
import weakref
from fractions import Fraction
from typing import Iterable, Iterator

import cv2
import numpy as np

from moda_hub.errors import InvalidParameterError, OutputPathError
from moda_hub.output_paths import temporary_name

__all__ = [
    "Mp4Writer",
    "check_output_path",
    "ffmpeg_exe",
    "iter_video_frames",
    "probe_media",
    "read_video_frames",
    "read_video_info",
    "write_mp4",
]

# Sample rates AAC-LC supports directly; others are resampled to 48 kHz for the AAC track.
_AAC_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000}
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
            "veryslow")


def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's ffmpeg binary (``IMAGEIO_FFMPEG_EXE`` overrides it)."""
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - a declared dependency
        raise OutputPathError("imageio-ffmpeg is not installed — `pip install imageio-ffmpeg`")
    return imageio_ffmpeg.get_ffmpeg_exe()


# --- probing (``ffmpeg -i``) ---------------------------------------------------------------
class _ProbeError(Exception):
    """ffmpeg could not open the file; ``str()`` says why (turned into a ModaError by callers)."""


def _seconds(hms: str) -> float | None:
    m = re.match(r"(\d+):(\d+):(\d+(?:\.\d+)?)", hms)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _number(text: str) -> float:
    text = text.strip()
    mult = 1.0
    if text.endswith("k"):
        text, mult = text[:-1], 1000.0
    return float(text) * mult


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if "output file" not in ln.lower()] or lines
    return lines[-1] if lines else "unknown error"


def probe_media(path: str | os.PathLike) -> dict:
    """Parse ``ffmpeg -i path`` into a dict (any media file: audio or video).

    Keys: ``duration`` (container, seconds, None when unknown — e.g. browser webm),
    ``streams``: list of dicts with ``type`` ("video"/"audio"/...), ``codec``, and for video
    ``width``, ``height`` (coded), ``fps``, ``rotation`` (degrees), ``attached_pic`` (cover art);
    for audio ``sample_rate`` (Hz), ``channels``. Raises ``_ProbeError`` (private) when ffmpeg
    cannot open the file.
    """
    path = os.fspath(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in err:
        raise _ProbeError(_last_error_line(err))
    text = err.split("Input #0", 1)[1]
    text = re.split(r"\nInput #1|\nOutput #0|\nStream mapping", text)[0]
    info: dict = {"duration": None, "streams": []}
    m = re.search(r"Duration:\s*([0-9:.]+|N/A)", text)
    if m and m.group(1) != "N/A":
        info["duration"] = _seconds(m.group(1))
    last_video = None
    for line in text.splitlines():
        sm = re.search(r"Stream #0:\d+\S*: (\w+): (.*)$", line)
        if sm:
            kind, rest = sm.group(1).lower(), sm.group(2)
            flat = rest
            for _ in range(3):  # drop parenthesised groups, nested ones too
                flat = re.sub(r"\([^()]*\)", "", flat)
            items = [it.strip() for it in flat.split(",")]
            stream = {"type": kind, "codec": items[0].split()[0] if items[0] else ""}
            if kind == "video":
                stream.update(width=None, height=None, fps=None, rotation=0.0,
                              attached_pic="attached pic" in rest)
                tbr = None
                for it in items[1:]:
                    size = re.match(r"(\d+)x(\d+)\b", it)
                    if size and stream["width"] is None:
                        stream["width"], stream["height"] = int(size.group(1)), int(size.group(2))
                    fm = re.match(r"([\d.]+k?) fps$", it)
                    if fm:
                        stream["fps"] = _number(fm.group(1))
                    tm = re.match(r"([\d.]+k?) tbr$", it)
                    if tm:
                        tbr = _number(tm.group(1))
                if stream["fps"] is None:
                    stream["fps"] = tbr
                last_video = stream
            elif kind == "audio":
                stream.update(sample_rate=None, channels=None)
                for it in items[1:]:
                    hz = re.match(r"(\d+) Hz$", it)
                    if hz:
                        stream["sample_rate"] = int(hz.group(1))
                    ch = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6,
                          "octagonal": 8, "hexadecagonal": 16}.get(it)
                    lm = re.match(r"(\d+)\.(\d+)$", it)  # "5.1" -> 6 channels
                    cm = re.match(r"(\d+) channels", it)
                    if ch is None and lm:
                        ch = int(lm.group(1)) + int(lm.group(2))
                    elif ch is None and cm:
                        ch = int(cm.group(1))
                    if ch is not None and stream["channels"] is None:
                        stream["channels"] = ch
            info["streams"].append(stream)
            continue
        rm = re.search(r"rotation of (-?[\d.]+) degrees", line)
        if rm and last_video is not None:
            last_video["rotation"] = float(rm.group(1))
    return info


def _video_stream(info: dict) -> dict | None:
    return next((s for s in info["streams"] if s["type"] == "video" and not s["attached_pic"]),
                None)


def read_video_info(path: str | os.PathLike, exact: bool = False) -> dict:
    """Facts about a video (or audio) file, from ``ffmpeg -i`` (no ffprobe needed).

    Args:
        path: the media file.
        exact (bool, default False): also decode the streams to count video frames and
            audio samples (slower; for tests and dataset checks).

    Returns:
        dict with ``duration`` (container, seconds, or None), ``fps`` (float or None),
        ``width``, ``height`` (display size in pixels, after the rotation ffmpeg applies
        when decoding), ``rotation`` (degrees), ``has_video``, ``has_audio``,
        ``codecs`` (list of codec names in stream order, e.g. ``['h264', 'aac']``),
        ``video_codec``, ``audio_codec``, ``audio_sample_rate``, ``audio_channels``,
        ``streams`` (per-stream dicts). With ``exact``: ``n_frames`` (decoded video frames),
        ``video_duration`` (= n_frames / fps), ``audio_duration`` (decoded samples / rate).

    Raises:
        InvalidParameterError: the file is missing or ffmpeg cannot read it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidParameterError(f"video file {path!r} does not exist — check the path")
    try:
        info = probe_media(path)
    except _ProbeError as err:
        raise InvalidParameterError(f"cannot read {path!r} as a video ({err}) — use an MP4, "
                                    "MOV, MKV, WEBM or AVI file") from None
    video = _video_stream(info)
    audio = next((s for s in info["streams"] if s["type"] == "audio"), None)
    width = height = None
    rotation = 0.0
    if video is not None:
        width, height, rotation = video["width"], video["height"], video["rotation"]
        if width and height and round(abs(rotation)) % 180 == 90:
            width, height = height, width
    out = {
        "duration": info["duration"],
        "fps": video["fps"] if video else None,
        "width": width,
        "height": height,
        "rotation": rotation,
        "has_video": video is not None,
        "has_audio": audio is not None,
        "codecs": [s["codec"] for s in info["streams"] if s["type"] in ("video", "audio")],
        "video_codec": video["codec"] if video else None,
        "audio_codec": audio["codec"] if audio else None,
        "audio_sample_rate": audio["sample_rate"] if audio else None,
        "audio_channels": audio["channels"] if audio else None,
        "streams": info["streams"],
    }
    if exact:
        if video is not None:
            proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path,
                                   "-map", "0:v:0", "-f", "null", "-"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
            counts = re.findall(r"frame=\s*(\d+)", proc.stderr.decode("utf-8", "replace"))
            out["n_frames"] = int(counts[-1]) if counts else 0
            out["video_duration"] = out["n_frames"] / out["fps"] if out["fps"] else None
        if audio is not None:
            rate = audio["sample_rate"] or 48000
            proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
                                   "-i", path, "-map", "0:a:0", "-ac", "1", "-f", "f32le", "-"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
            out["audio_duration"] = len(proc.stdout) / 4 / rate
    return out


def iter_video_frames(path: str | os.PathLike, fps: float | None = None,
                      max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a video one by one as (H, W, 3) uint8 RGB (display orientation).

    ``fps`` resamples the frame rate (ffmpeg's ``fps`` filter: frames dropped or repeated);
    None keeps the file's frames. ``max_frames`` stops early.
    """
    info = read_video_info(path)
    if not info["has_video"] or not info["width"]:
        raise InvalidParameterError(f"{os.fspath(path)!r} has no video stream — pass a video file")
    w, h = info["width"], info["height"]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", os.fspath(path),
           "-map", "0:v:0", "-an", "-sn"]
    filters = []
    if fps is not None:
        if not fps > 0:
            raise InvalidParameterError(f"fps must be positive, got {fps!r}")
        filters.append(f"fps={_fraction(fps)}")
    filters.append(f"scale={w}:{h}")  # guards against any size the parse got wrong
    cmd += ["-vf", ",".join(filters)]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = w * h * 3
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
        try:
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def read_video_frames(path: str | os.PathLike, fps: float | None = None,
                      max_frames: int | None = None) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8 RGB. See :func:`iter_video_frames`."""
    frames = list(iter_video_frames(path, fps=fps, max_frames=max_frames))
    if not frames:
        raise InvalidParameterError(f"no frames could be decoded from {os.fspath(path)!r} — "
                                    "the video is empty or damaged")
    return np.stack(frames)


# --- writing -------------------------------------------------------------------------------
def check_output_path(path: str | os.PathLike) -> str:
    """Check, before any work, that an MP4 can be written at ``path``; return it normalised and
    absolute. The rules (extension .mp4/.m4v, never a device, FIFO, folder or a link into another
    folder, a writable folder) are those of :func:`moda_hub.output_paths.check_output_file`; an
    existing regular file is replaced (callers that must not replace other kinds of file check
    with ``overwrite=False`` first, as the pipeline does).

    Raises:
        OutputPathError: saying what is wrong and what to do.
    """
    from moda_hub.output_paths import VIDEO, check_output_file

    return check_output_file(path, VIDEO, overwrite=True)


def _fraction(fps: float) -> str:
    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


class _PipeFeeder:
    """Writes chunks into the encoder's stdin on a thread of its own, so the caller renders the
    next chunk while x264 drains this one (a blocked pipe write releases the GIL).

    At most ``depth`` chunks wait; :meth:`put` blocks beyond that, so memory stays bounded. The
    first error (ffmpeg gone, disk full) is kept and raised by the next :meth:`put` or
    :meth:`finish`. Holds the writer's ``state`` dict, never the writer (so an abandoned writer
    is still collected and its finaliser stops this thread).
    """

    def __init__(self, state: dict, send, depth: int = 1):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._send = send
        self._state = state
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="moda-mp4-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            arr = self._queue.get()
            if arr is None:
                return
            if self.error is None:
                try:
                    self._send(self._state, arr)
                except BaseException as err:       # kept for the caller's thread
                    self.error = err

    def put(self, arr: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(arr)

    def finish(self) -> None:
        """Wait until every chunk is in the pipe; raise the first error."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """End the thread (pending chunks are dropped once an error or kill happened)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _cleanup(state: dict) -> None:
    """Kill a running encoder, stop its feeder thread, remove the temporary folder (idempotent)."""
    proc = state.get("proc")
    if proc is not None:
        if state.get("feeder") is not None and proc.poll() is None:
            proc.kill()            # first: the feeder thread may be blocked writing into the pipe
        try:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        state["proc"] = None
    feeder = state.get("feeder")
    if feeder is not None:
        state["feeder"] = None
        feeder.error = feeder.error or OutputPathError("the encoder was stopped")
        feeder.stop()
    errf = state.get("errf")
    if errf is not None:
        errf.close()
        state["errf"] = None
    tmpdir = state.get("tmpdir")
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
        state["tmpdir"] = None


def _send_frames(state: dict, arr: np.ndarray, path: str) -> None:
    """Write (t, H, W, 3) uint8 RGB frames (even H, W) into the running encoder's stdin as planar
    yuv420p (blocks while the pipe is full).

    The conversion (OpenCV's BT.601 limited-range I420, what ffmpeg's own rgb24 -> yuv420p gives;
    chroma averaged over 2x2 pixels) runs here, so x264's process only encodes, and half the bytes
    go through the pipe."""
    proc = state["proc"]
    if proc is None:
        raise OutputPathError(f"the encoder for {path!r} was stopped")
    t, h, w = arr.shape[:3]
    yuv = np.empty((t, h * 3 // 2, w), np.uint8)
    for k in range(t):
        cv2.cvtColor(arr[k], cv2.COLOR_RGB2YUV_I420, dst=yuv[k])
    try:
        proc.stdin.write(memoryview(yuv).cast("B"))
    except (BrokenPipeError, OSError, ValueError):
        proc.wait()
        raise OutputPathError(f"ffmpeg stopped while writing {path!r}: "
                              f"{_ffmpeg_log_error(state)} — check free disk space") from None


def _ffmpeg_log_error(state: dict) -> str:
    """The last error line ffmpeg wrote to its log, or "unknown error"."""
    errf = state.get("errf")
    if errf is None:
        return "unknown error"
    errf.flush()
    errf.seek(0)
    return _last_error_line(errf.read().decode("utf-8", "replace"))


class Mp4Writer:
    """Streaming H.264 (libx264, yuv420p) + AAC MP4 writer; a context manager.

    Frames go to ffmpeg's stdin as raw yuv420p (converted from RGB here) as they are written,
    so memory stays flat; a feeder thread does the conversion and the (blocking) pipe writes, so
    :meth:`write` returns once the chunk is queued (at most one chunk waits) and the caller
    renders the next chunk while x264 encodes. On
    :meth:`close` the video is padded to the audio's length if needed (last frame repeated)
    and the audio is muxed, padded with silence or trimmed to exactly ``T / fps`` seconds
    (the video stream is copied, not re-encoded). The file appears at ``path`` only when
    complete; leaving the ``with`` block by an exception (or :meth:`abort`) deletes everything.

    Args:
        path: destination ``.mp4``; missing parent folders are created.
        fps (float): frame rate.
        audio ((N,) float32 in [-1, 1] | None): mono speech; None writes a
            video-only MP4.
        sample_rate (int, default 16000): Hz of ``audio``.
        crf (int, default 20): x264 quality, 0 (lossless) .. 51 (worst); 18-23 is typical.
        preset (str, default "veryfast"): x264 speed/size trade-off ("ultrafast" .. "veryslow").
        audio_bitrate (str, default "96k"): AAC bitrate.
        odd_size (str, default "pad"): "pad" repeats the last row/column to make odd
            width/height even (yuv420p needs even sizes); "error" raises instead.
        pad_to_audio (bool, default True): repeat the last frame until the video is as long
            as the audio (``round(duration * fps)`` frames).

    Example::

        >>> with Mp4Writer("out.mp4", fps=30, audio=wav, sample_rate=16000) as w:
        ...     for chunk in chunks:            # (t, H, W, 3) uint8
        ...         w.write(chunk)
    """

    def __init__(self, path: str | os.PathLike, fps: float, audio: np.ndarray | None = None,
                 sample_rate: int = 16000, *, crf: int = 20, preset: str = "veryfast",
                 audio_bitrate: str = "96k", odd_size: str = "pad", pad_to_audio: bool = True):
        self.path = check_output_path(path)   # before any encoding work
        try:
            self.fps = float(fps)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"fps must be a positive number, got {fps!r}")
        if not (np.isfinite(self.fps) and 0 < self.fps <= 240):
            raise InvalidParameterError(f"fps must be in (0, 240], got {fps!r}")
        if not (isinstance(crf, (int, np.integer)) and 0 <= crf <= 51):
            raise InvalidParameterError(f"crf must be an integer in [0, 51], got {crf!r}")
        if preset not in _PRESETS:
            raise InvalidParameterError(f"preset {preset!r} is not an x264 preset — use one of "
                                        f"{', '.join(_PRESETS)}")
        if odd_size not in ("pad", "error"):
            raise InvalidParameterError(f"odd_size must be 'pad' or 'error', got {odd_size!r}")
        self.crf, self.preset, self.audio_bitrate = int(crf), preset, audio_bitrate
        self.odd_size, self.pad_to_audio = odd_size, pad_to_audio
        self.sample_rate = int(sample_rate)
        self.audio = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim == 2 and 1 in audio.shape:
                audio = audio.reshape(-1)
            if audio.ndim != 1:
                raise InvalidParameterError(f"audio must be mono (N,) samples, got shape "
                                            f"{audio.shape} — mix channels down first")
            if not np.all(np.isfinite(audio)):
                raise InvalidParameterError("audio contains NaN or infinite samples — clean it "
                                            "(e.g. np.nan_to_num) before writing")
            if self.sample_rate <= 0:
                raise InvalidParameterError(f"sample_rate must be positive, got {sample_rate!r}")
            self.audio = audio
        self.frames_written = 0
        self._size = None  # (H, W) of the frames given
        self._last = None  # last frame written (after padding to even size)
        self._closed = False
        self._aborted = False
        self._state: dict = {"proc": None, "errf": None, "tmpdir": None, "made_dirs": [], "feeder": None}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)

    # context manager
    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def expected_frames(self) -> int:
        """``round(audio duration * fps)``: frames that match the audio (0 without audio)."""
        if self.audio is None:
            return 0
        return int(round(len(self.audio) / self.sample_rate * self.fps))

    def _start(self, h: int, w: int) -> None:
        folder = os.path.dirname(self.path)
        missing, d = [], folder
        while not os.path.exists(d):   # folders made here are removed again on abort
            missing.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(folder, exist_ok=True)
            self._state["made_dirs"] = missing
            self._state["tmpdir"] = temporary_name(self.path)     # short: any legal file name fits
            os.mkdir(self._state["tmpdir"])
        except OSError as err:
            raise OutputPathError(f"cannot write the video to {self.path!r} ({err.strerror}) — "
                                  "choose a folder you can write to") from None
        self._video_tmp = os.path.join(self._state["tmpdir"], "video.mp4")
        self._state["errf"] = open(os.path.join(self._state["tmpdir"], "ffmpeg.log"), "w+b")
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}",     # see _send_frames
               "-framerate", _fraction(self.fps), "-i", "pipe:0",
               "-map", "0:v:0", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
               "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", self._video_tmp]
        try:
            self._state["proc"] = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                                   stdout=subprocess.DEVNULL,
                                                   stderr=self._state["errf"])
        except OSError as err:
            raise OutputPathError(f"cannot start ffmpeg ({err}) — reinstall imageio-ffmpeg")

    def _ffmpeg_error(self) -> str:
        return _ffmpeg_log_error(self._state)

    def _check_chunk(self, frames) -> np.ndarray:
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InvalidParameterError(f"frames must be (H, W, 3) or (t, H, W, 3) RGB, got shape "
                                        f"{arr.shape}")
        if arr.dtype != np.uint8:
            raise InvalidParameterError(f"frames must be uint8 (0..255), got {arr.dtype} — "
                                        "convert with np.clip(x * 255, 0, 255).astype(np.uint8)")
        h, w = arr.shape[1:3]
        if h < 2 or w < 2:
            raise InvalidParameterError(f"frames of {w}x{h} pixels are too small to encode")
        if self._size is None:
            if (h % 2 or w % 2) and self.odd_size == "error":
                raise InvalidParameterError(f"frames are {w}x{h}; H.264 yuv420p needs an even "
                                            "width and height — crop or pad by one pixel")
            self._size = (h, w)
        elif (h, w) != self._size:
            raise InvalidParameterError(f"all frames must have one size: got {w}x{h} after "
                                        f"{self._size[1]}x{self._size[0]}")
        if h % 2 or w % 2:  # repeat the last row / column
            arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        return np.ascontiguousarray(arr)

    def _send(self, arr: np.ndarray) -> None:
        """Frames into the encoder now, on this thread (see also :class:`_PipeFeeder`)."""
        _send_frames(self._state, arr, self.path)

    def _feed(self, arr: np.ndarray) -> None:
        """Frames into the encoder from the feeder thread; returns once they are queued."""
        feeder = self._state["feeder"]
        if feeder is None:
            path = self.path
            feeder = self._state["feeder"] = _PipeFeeder(self._state, lambda st, a: _send_frames(st, a, path))
        feeder.put(arr)

    def _drain(self) -> None:
        """Wait for the feeder thread to put every queued chunk into the pipe."""
        feeder = self._state["feeder"]
        if feeder is not None:
            self._state["feeder"] = None
            feeder.finish()

    def write(self, frames, copy: bool = True) -> None:
        """Append frames: one (H, W, 3) uint8 RGB frame or a chunk (t, H, W, 3).

        copy (bool, default True): the frames are encoded after this returns, so the writer
        keeps a copy; ``copy=False`` skips it when the caller will not modify ``frames`` again."""
        if self._closed:
            raise InvalidParameterError("this Mp4Writer is closed — open a new one")
        try:
            arr = self._check_chunk(frames)
            if len(arr) == 0:
                return
            if self._state["proc"] is None:
                self._start(*arr.shape[1:3])
            # the caller may reuse its array once write() returns: the feeder gets its own copy
            self._feed(arr.copy() if copy and np.shares_memory(arr, np.asarray(frames)) else arr)
        except BaseException:
            self.abort()
            raise
        self.frames_written += len(arr)
        self._last = arr[-1:].copy()

    def abort(self) -> None:
        """Stop without output: kill ffmpeg, delete every temporary file and the folders this
        writer created (when they are empty)."""
        self._closed = self._aborted = True
        _cleanup(self._state)
        for d in self._state.get("made_dirs") or []:   # deepest first
            try:
                os.rmdir(d)
            except OSError:
                break
        self._state["made_dirs"] = []

    def close(self) -> str:
        """Finish the file and move it into place. Returns the path."""
        if self._aborted:
            raise OutputPathError(f"writing {self.path!r} was aborted after an error — "
                                  "nothing was written; start a new Mp4Writer")
        if self._closed:
            return self.path
        try:
            if self.frames_written == 0:
                raise InvalidParameterError("no frames were written — nothing to encode")
            self._drain()
            missing = self.expected_frames - self.frames_written if self.pad_to_audio else 0
            while missing > 0:
                n = min(missing, 64)
                self._send(np.repeat(self._last, n, axis=0))
                self.frames_written += n
                missing -= n
            proc = self._state["proc"]
            proc.stdin.close()
            rc = proc.wait()
            self._state["proc"] = None
            if rc != 0:
                raise OutputPathError(f"ffmpeg could not encode {self.path!r}: "
                                      f"{self._ffmpeg_error()}")
            final_tmp = self._video_tmp
            if self.audio is not None:
                final_tmp = self._mux_audio()
            try:
                os.replace(final_tmp, self.path)
            except OSError as err:
                raise OutputPathError(f"cannot write {self.path!r} ({err.strerror}) — choose "
                                      "another output path") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        _cleanup(self._state)
        return self.path

    def _mux_audio(self) -> str:
        """Second pass: copy the H.264 stream, add AAC audio of exactly T / fps seconds."""
        tmpdir = self._state["tmpdir"]
        n_target = int(round(self.frames_written / self.fps * self.sample_rate))
        audio = self.audio[:n_target]
        if len(audio) < n_target:
            audio = np.concatenate([audio, np.zeros(n_target - len(audio), np.float32)])
        raw = os.path.join(tmpdir, "audio.f32")
        np.asarray(audio, "<f4").tofile(raw)        # no copy of what is already float32 (600 s: 38 MB)
        out = os.path.join(tmpdir, "final.mp4")
        aac_rate = self.sample_rate if self.sample_rate in _AAC_RATES else 48000
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-i", self._video_tmp,
               "-f", "f32le", "-ar", str(self.sample_rate), "-ac", "1", "-i", raw,
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
               "-c:a", "aac", "-b:a", str(self.audio_bitrate), "-ar", str(aac_rate),
               "-movflags", "+faststart", "-f", "mp4", out]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise OutputPathError(f"ffmpeg could not add the audio to {self.path!r}: "
                                  f"{_last_error_line(proc.stderr.decode('utf-8', 'replace'))}")
        return out


def write_mp4(frames: Iterable[np.ndarray] | np.ndarray, fps: float, audio: np.ndarray | None,
              sample_rate: int, path: str | os.PathLike, **encoder) -> str:
    """Write frames + speech to an MP4 (H.264 yuv420p + AAC), atomically.

    Args:
        frames: (T, H, W, 3) uint8 RGB array, or any iterable of (H, W, 3) frames or
            (t, H, W, 3) chunks (a generator is consumed lazily).
        fps (float): frame rate.
        audio ((N,) float32 | None): mono samples in [-1, 1]; None for a video-only file.
        sample_rate (int): Hz of ``audio``.
        path: destination; created atomically (temp file + ``os.replace``).
        **encoder: :class:`Mp4Writer` options (``crf``, ``preset``, ``audio_bitrate``,
            ``odd_size``, ``pad_to_audio``).

    Returns:
        str: the absolute path written.

    Raises:
        InvalidParameterError: bad frames (dtype, shape, sizes differ) or parameters.
        OutputPathError: the file cannot be written.
        Anything the ``frames`` iterable raises — after removing every temporary file.
    """
    with Mp4Writer(path, fps, audio=audio, sample_rate=sample_rate, **encoder) as writer:
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            for i in range(0, len(frames), 64):
                writer.write(frames[i:i + 64])
        else:
            for frame in frames:
                writer.write(frame)
    return writer.path
