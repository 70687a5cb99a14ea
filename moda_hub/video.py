"""MP4 writing (H.264 + AAC) and media reading, in process through PyAV (FFmpeg's libraries,
libx264 included, shipped inside the ``av`` wheel): no ffmpeg binary, no pipes, no parsing.

- :func:`probe_media` / :func:`read_video_info`: container and stream facts from the headers.
- :func:`iter_video_frames` / :func:`read_video_frames`: decoded RGB frames in display
  orientation (the display-matrix rotation applied), optionally resampled in time by FFmpeg's
  ``fps`` filter.
- :func:`decode_audio`: any container's first audio track as mono float32 at a chosen rate
  (FFmpeg's swresample).
- :class:`Mp4Writer` / :func:`write_mp4`: streaming H.264 (libx264, yuv420p) + AAC.

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
import queue
import shutil
import tempfile
import threading
import weakref
from fractions import Fraction
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from moda_hub.errors import InvalidParameterError, OutputPathError
from moda_hub.output_paths import temporary_name

__all__ = [
    "Mp4Writer",
    "check_output_path",
    "decode_audio",
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

av.logging.set_level(None)   # FFmpeg's own log lines stay off stderr; errors raise instead


# --- probing -------------------------------------------------------------------------------
class _ProbeError(Exception):
    """FFmpeg could not open the file; ``str()`` says why (turned into a ModaError by callers)."""


def _why(err: BaseException) -> str:
    """FFmpeg's reason without the file name PyAV appends ("Invalid data found ...")."""
    text = getattr(err, "strerror", None) or str(err)
    return str(text).split(": '")[0].strip() or type(err).__name__


def _open(path: str):
    try:
        return av.open(path, "r", metadata_errors="replace")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise _ProbeError(_why(err)) from None


def _rotation(container, stream) -> float:
    """Display rotation of a video stream in degrees (counter-clockwise, as FFmpeg reports
    it), read from the first decoded frame's display matrix; 0 when there is none."""
    try:
        container.seek(0)
        for frame in container.decode(stream):
            return float(frame.rotation or 0)
    except (av.FFmpegError, ValueError):
        pass
    return 0.0


def probe_media(path: str | os.PathLike) -> dict:
    """Facts about any media file (audio or video) from its headers.

    Keys: ``duration`` (container, seconds, None when unknown — e.g. browser webm),
    ``streams``: list of dicts with ``type`` ("video"/"audio"/...), ``codec``, and for video
    ``width``, ``height`` (coded), ``fps``, ``rotation`` (degrees, from the first frame's
    display matrix), ``attached_pic`` (cover art); for audio ``sample_rate`` (Hz),
    ``channels``. Raises ``_ProbeError`` (private) when FFmpeg cannot open the file.
    """
    with _open(os.fspath(path)) as container:
        info: dict = {"duration": None, "streams": []}
        if container.duration is not None and container.duration > 0:
            info["duration"] = container.duration / av.time_base
        for stream in container.streams:
            kind = stream.type
            codec = stream.codec_context.name if stream.codec_context else ""
            entry = {"type": kind, "codec": codec}
            if kind == "video":
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                attached = bool(stream.disposition & av.stream.Disposition.attached_pic)
                entry.update(width=stream.codec_context.width or None,
                             height=stream.codec_context.height or None,
                             fps=float(rate) if rate else None,
                             rotation=0.0 if attached else _rotation(container, stream),
                             attached_pic=attached)
            elif kind == "audio":
                entry.update(sample_rate=stream.codec_context.sample_rate or None,
                             channels=stream.codec_context.channels or None)
            info["streams"].append(entry)
    return info


def _video_stream(info: dict) -> dict | None:
    return next((s for s in info["streams"] if s["type"] == "video" and not s["attached_pic"]),
                None)


def read_video_info(path: str | os.PathLike, exact: bool = False) -> dict:
    """Facts about a video (or audio) file, from its headers.

    Args:
        path: the media file.
        exact (bool, default False): also decode the streams to count video frames and
            audio samples (slower; for tests and dataset checks).

    Returns:
        dict with ``duration`` (container, seconds, or None), ``fps`` (float or None),
        ``width``, ``height`` (display size in pixels, after the rotation applied when
        decoding), ``rotation`` (degrees), ``has_video``, ``has_audio``,
        ``codecs`` (list of codec names in stream order, e.g. ``['h264', 'aac']``),
        ``video_codec``, ``audio_codec``, ``audio_sample_rate``, ``audio_channels``,
        ``streams`` (per-stream dicts). With ``exact``: ``n_frames`` (decoded video frames),
        ``video_duration`` (= n_frames / fps), ``audio_duration`` (decoded samples / rate).

    Raises:
        InvalidParameterError: the file is missing or FFmpeg cannot read it.
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
        with _open(path) as container:
            if video is not None:
                stream = next(s for s in container.streams.video
                              if not s.disposition & av.stream.Disposition.attached_pic)
                out["n_frames"] = sum(1 for _ in container.decode(stream))
                out["video_duration"] = out["n_frames"] / out["fps"] if out["fps"] else None
        if audio is not None:
            rate = audio["sample_rate"] or 48000
            out["audio_duration"] = len(decode_audio(path, rate)) / rate
    return out


# --- decoding ------------------------------------------------------------------------------
def decode_audio(path: str | os.PathLike, sample_rate: int,
                 max_seconds: float | None = None) -> np.ndarray:
    """The first audio track of any media file as (N,) float32 mono at ``sample_rate`` Hz
    (channels mixed down and resampled by FFmpeg's swresample, as ``ffmpeg -ac 1 -ar`` does).

    ``max_seconds`` stops decoding once that much audio is out (for files whose header has
    no duration). Raises ``_ProbeError`` (private) when the file cannot be opened or decoded.
    """
    limit = None if max_seconds is None else int(round(max_seconds * sample_rate))
    with _open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise _ProbeError("no audio track")
        stream = container.streams.audio[0]
        # one buffer sized from the header (grown if the header was short), filled in place:
        # the samples are held once, not once in pieces and again joined
        seconds = container.duration / av.time_base if container.duration else 10.0
        seconds = min(seconds, max_seconds if max_seconds is not None else 4 * 3600.0)
        wav = np.empty(int(seconds * sample_rate) + sample_rate, np.float32)
        got = 0

        def keep(frames) -> None:
            nonlocal wav, got
            for out in frames:
                x = out.to_ndarray().reshape(-1)
                if got + len(x) > len(wav):
                    wav = np.resize(wav, max(2 * len(wav), got + len(x)))
                wav[got:got + len(x)] = x
                got += len(x)

        resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
        try:
            for frame in container.decode(stream):
                frame.pts = None      # timestamps of damaged or concatenated files are ignored
                keep(resampler.resample(frame))
                if limit is not None and got >= limit:
                    break
            else:
                keep(resampler.resample(None))
        except (av.FFmpegError, ValueError) as err:
            if not got:
                raise _ProbeError(_why(err)) from None
            # a damaged tail: keep what decoded, as the ffmpeg command line does
        # An encoder's last frame is whole (AAC: 1024 samples) even when the track ends inside
        # it; the container's stream duration says where it ends: cut there, as ffmpeg does.
        if stream.duration and stream.time_base and limit is None:
            end = int(round(float(stream.duration * stream.time_base) * sample_rate))
            if end < got <= end + 2 * 2048 * sample_rate // 8000:
                got = end
    return wav[:got].copy() if got < 0.9 * len(wav) else wav[:got]


def iter_video_frames(path: str | os.PathLike, fps: float | None = None,
                      max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a video one by one as (H, W, 3) uint8 RGB (display orientation).

    ``fps`` resamples the frame rate (FFmpeg's ``fps`` filter: frames dropped or repeated);
    None keeps the file's frames. ``max_frames`` stops early.
    """
    info = read_video_info(path)
    if not info["has_video"] or not info["width"]:
        raise InvalidParameterError(f"{os.fspath(path)!r} has no video stream — pass a video file")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise InvalidParameterError(f"fps must be positive, got {fps!r}")
    turns = int(round(info["rotation"] / 90.0)) % 4
    count = 0
    with _open(os.fspath(path)) as container:
        stream = next(s for s in container.streams.video
                      if not s.disposition & av.stream.Disposition.attached_pic)
        stream.thread_type = "AUTO"
        graph = sink = None
        if fps is not None:
            graph = av.filter.Graph()
            src = graph.add_buffer(template=stream)
            rate = graph.add("fps", f"fps={_fraction(fps)}")
            sink = graph.add("buffersink")
            src.link_to(rate)
            rate.link_to(sink)
            graph.configure()

        def frames():
            try:
                for frame in container.decode(stream):
                    if graph is None:
                        yield frame
                        continue
                    graph.push(frame)
                    yield from _pull(graph)
            except (av.FFmpegError, ValueError):
                pass            # a damaged tail: the frames so far, as ffmpeg's CLI gives
            if graph is not None:
                graph.push(None)
                yield from _pull(graph)

        for frame in frames():
            if max_frames is not None and count >= max_frames:
                return
            rgb = frame.to_ndarray(format="rgb24")
            if turns:
                rgb = np.ascontiguousarray(np.rot90(rgb, turns))
            count += 1
            yield rgb


def _pull(graph) -> Iterator:
    while True:
        try:
            yield graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return


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


class _EncodeThread:
    """Encodes chunks on a thread of its own, so the caller renders the next chunk while this
    one is converted to yuv420p and handed to x264 (OpenCV's conversion, libx264 and the muxer
    all run without the GIL).

    At most ``depth`` chunks wait; :meth:`put` blocks beyond that, so memory stays bounded. The
    first error (disk full, encoder failure) is kept and raised by the next :meth:`put` or
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
        """Wait until every chunk is encoded; raise the first error."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """End the thread (pending chunks are dropped once an error happened)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _cleanup(state: dict) -> None:
    """Stop the encode thread, close the container, remove the temporary folder (idempotent)."""
    state["dead"] = True
    feeder = state.get("feeder")
    if feeder is not None:
        state["feeder"] = None
        feeder.error = feeder.error or OutputPathError("the encoder was stopped")
        feeder.stop()
    container = state.get("container")
    if container is not None:
        state["container"] = None
        try:
            container.close()
        except Exception:       # a half-written file is deleted below anyway
            pass
    tmpdir = state.get("tmpdir")
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
        state["tmpdir"] = None


#: Frames above this many pixels (a little over 1920 x 1080: full-image output of a large photo)
#: are encoded with x264's lookahead and B-frames off and two frame threads. x264 holds every
#: frame in flight at full size (lookahead, B-frame queue, one per thread, each with its
#: interpolated planes): a 12-MP frame stream took 1378 MB in the encoder with the defaults
#: against 582 MB so (25 frames of 4000 x 3000, 2 cores; encode time 3.4 -> 3.9 s). Smaller
#: frames (every face crop) are encoded exactly as before.
BIG_FRAME_PIXELS = 2_100_000


def _encode_frames(state: dict, arr: np.ndarray, path: str) -> None:
    """Encode (t, H, W, 3) uint8 RGB frames (even H, W) and, alongside, the audio they cover.

    RGB -> planar yuv420p with OpenCV (BT.601 limited range, chroma averaged over 2x2 pixels:
    what FFmpeg's own rgb24 -> yuv420p gives), then libx264 and the MP4 muxer, in process."""
    if state.get("dead") or state.get("container") is None:
        raise OutputPathError(f"the encoder for {path!r} was stopped")
    vstream = state["video"]
    t, h, w = arr.shape[:3]
    yuv = np.empty((h * 3 // 2, w), np.uint8)
    try:
        for k in range(t):
            cv2.cvtColor(arr[k], cv2.COLOR_RGB2YUV_I420, dst=yuv)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = state["frames"]
            state["frames"] += 1
            state["container"].mux(vstream.encode(frame))
        if state["audio_stream"] is not None:
            _encode_audio(state, int(round(state["frames"] / state["fps"] * state["sample_rate"])))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise OutputPathError(f"the encoder stopped while writing {path!r} ({_why(err)}) — "
                              "check free disk space") from None


def _encode_audio(state: dict, until: int) -> None:
    """Encode the AAC track up to sample ``until`` (at the track's rate): the writer's audio,
    then silence beyond its end. Runs on the encode thread, interleaved with the video."""
    astream = state["audio_stream"]
    done, wav = state["audio_done"], state["audio"]
    while done < until:
        n = min(until - done, 1 << 16)
        chunk = wav[done:done + n]
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), np.float32)])
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk)[None], format="fltp",
                                           layout="mono")
        frame.sample_rate = state["sample_rate"]
        frame.pts = done
        frame.time_base = Fraction(1, state["sample_rate"])
        state["container"].mux(astream.encode(frame))
        done += n
    state["audio_done"] = done


class Mp4Writer:
    """Streaming H.264 (libx264, yuv420p) + AAC MP4 writer; a context manager.

    Frames are converted to yuv420p and encoded in process (PyAV) as they are written, so
    memory stays flat; an encode thread does this, so :meth:`write` returns once the chunk is
    queued (at most one chunk waits) and the caller renders the next chunk while x264 encodes.
    The AAC track is encoded alongside, up to the frames written so far. On :meth:`close` the
    video is padded to the audio's length if needed (last frame repeated) and the audio is
    padded with silence or trimmed to exactly ``T / fps`` seconds. The file appears at
    ``path`` only when complete; leaving the ``with`` block by an exception (or :meth:`abort`)
    deletes everything.

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
        self._bit_rate = _bitrate(audio_bitrate)
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
        self._state: dict = {"container": None, "tmpdir": None, "made_dirs": [], "feeder": None}
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
        self._open_encoder(h, w)

    def _open_encoder(self, h: int, w: int) -> None:
        """Open the MP4 muxer on ``self._video_tmp`` with an H.264 and (with audio) an AAC
        stream."""
        st = self._state
        try:
            container = av.open(self._video_tmp, "w", format="mp4",
                                options={"movflags": "+faststart"})
            st["container"] = container
            rate = Fraction(self.fps).limit_denominator(1001)
            options = {"crf": str(self.crf), "preset": self.preset}
            big = w * h > BIG_FRAME_PIXELS
            if big:      # x264's frames in flight scale with the picture: bound them (see BIG_FRAME_PIXELS)
                options.update({"rc-lookahead": "0", "bf": "0"})
            video = container.add_stream("libx264", rate=rate, options=options)
            video.width, video.height, video.pix_fmt = w, h, "yuv420p"
            # x264's own frame threads, as the ffmpeg command line runs it: PyAV's defaults are
            # "as many threads as CPUs" but slice threads, which x264 parallelises worse
            video.codec_context.thread_count = 2 if big else 0
            video.codec_context.thread_type = "AUTO"
            video.codec_context.time_base = 1 / rate
            st.update(video=video, frames=0, fps=float(rate), audio_stream=None)
            if self.audio is not None:
                aac_rate = self.sample_rate if self.sample_rate in _AAC_RATES else 48000
                wav = self.audio
                if aac_rate != self.sample_rate:
                    from moda_hub.speech.resample import resample
                    wav = resample(wav, self.sample_rate, aac_rate)
                astream = container.add_stream("aac", rate=aac_rate, layout="mono")
                astream.bit_rate = self._bit_rate
                st.update(audio_stream=astream, audio=wav, sample_rate=aac_rate, audio_done=0)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise OutputPathError(f"cannot start the encoder for {self.path!r} ({_why(err)}) — "
                                  "reinstall PyAV (`pip install --force-reinstall av`)") from None

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

    def _feed(self, arr: np.ndarray) -> None:
        """Frames to the encode thread; returns once they are queued."""
        feeder = self._state["feeder"]
        if feeder is None:
            path = self.path
            feeder = self._state["feeder"] = _EncodeThread(
                self._state, lambda st, a: _encode_frames(st, a, path))
        feeder.put(arr)

    def _drain(self) -> None:
        """Wait for the encode thread to encode every queued chunk."""
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
            if self._state["container"] is None:
                self._start(*arr.shape[1:3])
            # the caller may reuse its array once write() returns: the thread gets its own copy
            self._feed(arr.copy() if copy and np.shares_memory(arr, np.asarray(frames)) else arr)
        except BaseException:
            self.abort()
            raise
        self.frames_written += len(arr)
        self._last = arr[-1:].copy()

    def abort(self) -> None:
        """Stop without output: stop the encoder, delete every temporary file and the folders
        this writer created (when they are empty)."""
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
            st = self._state
            missing = self.expected_frames - self.frames_written if self.pad_to_audio else 0
            while missing > 0:
                n = min(missing, 64)
                _encode_frames(st, np.repeat(self._last, n, axis=0), self.path)
                self.frames_written += n
                missing -= n
            try:
                container = st["container"]
                container.mux(st["video"].encode(None))
                if st["audio_stream"] is not None:
                    container.mux(st["audio_stream"].encode(None))
                st["container"] = None
                container.close()
            except (av.FFmpegError, OSError, ValueError) as err:
                raise OutputPathError(f"could not finish {self.path!r} ({_why(err)}) — check "
                                      "free disk space") from None
            try:
                os.replace(self._video_tmp, self.path)
            except OSError as err:
                raise OutputPathError(f"cannot write {self.path!r} ({err.strerror}) — choose "
                                      "another output path") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        _cleanup(self._state)
        return self.path


def _bitrate(text) -> int:
    """``"96k"`` / ``"1.5M"`` / ``96000`` -> bits per second."""
    try:
        s = str(text).strip().lower()
        mult = {"k": 1000, "m": 1000_000}.get(s[-1:], 1)
        value = float(s[:-1] if mult > 1 else s) * mult
    except (ValueError, IndexError):
        value = 0
    if not value > 0:
        raise InvalidParameterError(f"audio_bitrate must be like '96k', got {text!r}")
    return int(value)


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
