"""The MP4 writer moda-hub used before PyAV, kept only as the benchmark's A/B baseline.

``FfmpegPipeMp4Writer`` is :class:`moda_hub.video.Mp4Writer` (same checks, temp folder, padding
and timing contract) with the old encoder path: raw yuv420p frames (converted by OpenCV) piped
by a feeder thread into an ``ffmpeg`` process (imageio-ffmpeg's binary, a test/benchmark
dependency) running libx264 into a video-only MP4, then a second ``ffmpeg`` run that copies the
H.264 stream and adds the AAC track of exactly ``T / fps`` seconds. Same settings as the new
writer: libx264 ``veryfast`` crf 20 yuv420p, AAC 96k, ``+faststart``.
"""
from __future__ import annotations

import os
import subprocess
import tempfile

import cv2
import numpy as np

from moda_hub.errors import OutputPathError
from moda_hub.video import _AAC_RATES, Mp4Writer, _EncodeThread, _fraction


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_version() -> str:
    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0].replace("ffmpeg version ", "").split(" Copyright")[0]


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def _send(state: dict, arr: np.ndarray, path: str) -> None:
    """(t, H, W, 3) RGB -> planar yuv420p -> ffmpeg's stdin (blocks while the pipe is full)."""
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
        raise OutputPathError(f"ffmpeg stopped while writing {path!r}") from None


class FfmpegPipeMp4Writer(Mp4Writer):
    """:class:`moda_hub.video.Mp4Writer` with the pre-PyAV encoder: an ffmpeg process fed
    through a pipe, then a second ffmpeg run that muxes the AAC track."""

    def _open_encoder(self, h: int, w: int) -> None:
        self._state["errf"] = tempfile.TemporaryFile(dir=self._state["tmpdir"])
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}",
               "-framerate", _fraction(self.fps), "-i", "pipe:0",
               "-map", "0:v:0", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
               "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", self._video_tmp]
        self._state["proc"] = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                               stdout=subprocess.DEVNULL,
                                               stderr=self._state["errf"])
        self._state["container"] = self._state["proc"]     # "started", for Mp4Writer.write

    def _feed(self, arr: np.ndarray) -> None:
        if self._state["feeder"] is None:
            path = self.path
            self._state["feeder"] = _EncodeThread(self._state, lambda st, a: _send(st, a, path))
        self._state["feeder"].put(arr)

    def abort(self) -> None:
        proc = self._state.get("proc")
        if proc is not None and proc.poll() is None:
            proc.kill()                     # first: the feeder may be blocked on the pipe
        self._state["container"] = None
        if self._state.get("errf") is not None:
            self._state.pop("errf").close()
        super().abort()
        if proc is not None:
            proc.wait()
            self._state["proc"] = None

    def close(self) -> str:
        if self._closed:
            return self.path
        try:
            self._drain()
            missing = self.expected_frames - self.frames_written if self.pad_to_audio else 0
            while missing > 0:
                n = min(missing, 64)
                _send(self._state, np.repeat(self._last, n, axis=0), self.path)
                self.frames_written += n
                missing -= n
            proc = self._state["proc"]
            proc.stdin.close()
            if proc.wait() != 0:
                self._state["errf"].seek(0)
                raise OutputPathError(f"ffmpeg failed: {_last_line(self._state['errf'].read())}")
            self._state["proc"] = self._state["container"] = None
            final = self._mux_audio() if self.audio is not None else self._video_tmp
            os.replace(final, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._state["made_dirs"] = []   # they hold the file now
        super().abort()             # removes the temporary folder (the file is in place)
        self._aborted = False
        return self.path

    def _mux_audio(self) -> str:
        tmpdir = self._state["tmpdir"]
        n_target = int(round(self.frames_written / self.fps * self.sample_rate))
        audio = self.audio[:n_target]
        if len(audio) < n_target:
            audio = np.concatenate([audio, np.zeros(n_target - len(audio), np.float32)])
        raw = os.path.join(tmpdir, "audio.f32")
        np.asarray(audio, "<f4").tofile(raw)
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
            raise OutputPathError(f"ffmpeg could not add the audio: {_last_line(proc.stderr)}")
        return out
