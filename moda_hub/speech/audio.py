"""Audio front-end: decode any speech input to 16 kHz mono, per-video-frame features, and
text-to-speech through espeak-ng.

Frame convention (used by every per-frame function here): a clip of ``N`` samples at
``sample_rate`` Hz has ``T = num_frames(N, sample_rate, fps) = round(N / sample_rate * fps)``
video frames (Python's ``round``); frame ``i`` is shown during ``[i / fps, (i + 1) / fps)`` s and
its features describe the audio centred on ``frame_times(T, fps)[i] = (i + 0.5) / fps`` s.

Example::

    >>> from moda_hub.speech.audio import load_audio, audio_features
    >>> wav = load_audio("speech.mp3")                 # (N,) float32, 16 kHz mono
    >>> feats = audio_features(wav, 16000, fps=30)     # (round(N / 16000 * 30), 80) float32
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np

from moda_hub.errors import AudioDecodeError, InputTooLongError, InvalidParameterError
from moda_hub.options import SAMPLE_RATE, GenerateOptions
from moda_hub.speech.espeak import speak
from moda_hub.speech.resample import resample
from moda_hub.video import _ProbeError, decode_audio, probe_media

DEFAULTS = GenerateOptions()

__all__ = [
    "MIN_SECONDS",
    "audio_features",
    "frame_times",
    "load_audio",
    "mel_filterbank",
    "num_frames",
    "resample",
    "rms_envelope",
    "synthesize_speech",
]

#: Shortest speech accepted by :func:`load_audio`, in seconds.
MIN_SECONDS = 0.2


# --- frame convention ----------------------------------------------------------------------
def num_frames(n_samples: int, sample_rate: float, fps: float) -> int:
    """Video frames for ``n_samples`` of audio: ``round(n_samples / sample_rate * fps)``."""
    return int(round(n_samples / float(sample_rate) * fps))


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """(T,) float64 seconds: the centre ``(i + 0.5) / fps`` of each frame's display interval."""
    return (np.arange(n_frames, dtype=np.float64) + 0.5) / float(fps)


# --- decoding ------------------------------------------------------------------------------


def _finish(wav: np.ndarray, what: str, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    """Shared checks on decoded mono audio at ``sample_rate``."""
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if len(wav) == 0:
        raise AudioDecodeError(f"{what} contains no audio samples — use a recording with speech")
    duration = len(wav) / sample_rate
    if max_seconds is not None and duration > max_seconds + 0.05:
        raise InputTooLongError(f"{what} is {duration:.1f} s long, more than the limit of "
                                f"{max_seconds:g} s — trim it or raise max_seconds")
    if duration < MIN_SECONDS:
        raise AudioDecodeError(f"{what} is only {duration:.2f} s long — use at least "
                               f"{MIN_SECONDS:g} s of speech")
    peak = float(np.max(np.abs(wav)))
    if peak > 1.0:  # float sources may exceed full scale: scale down rather than clip
        wav = wav / peak
    return wav


def _array_to_float(arr: np.ndarray) -> np.ndarray:
    """Integer PCM -> float in [-1, 1]; float passes through. Keeps the shape."""
    kind, bits = arr.dtype.kind, arr.dtype.itemsize * 8
    if kind == "f":
        return arr.astype(np.float32)
    if kind == "i":
        if bits == 64:  # ambiguous width: judge by the values
            bits = 16 if np.max(np.abs(arr), initial=0) <= 32768 else 32
        return (arr.astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)
    if kind == "u":
        half = float(2 ** (bits - 1))
        return ((arr.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioDecodeError(f"audio samples of type {arr.dtype} cannot be speech — pass int16, "
                           "int32, uint8 or float samples")


def _from_array(arr, input_rate, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    if hasattr(arr, "detach"):  # torch tensor
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise AudioDecodeError("audio array holds Python objects — pass numeric samples")
    if input_rate is None:
        raise AudioDecodeError("audio given as samples without a sample rate — pass "
                               "input_sample_rate=<Hz>, or a (sample_rate, samples) tuple")
    try:
        input_rate = float(input_rate)
    except (TypeError, ValueError):
        raise AudioDecodeError(f"sample rate {input_rate!r} is not a number — pass it in Hz")
    if not 1000 <= input_rate <= 768000:
        raise AudioDecodeError(f"sample rate {input_rate:g} Hz is not plausible — pass the rate "
                               "of the samples in Hz (e.g. 16000, 44100, 48000)")
    if arr.ndim > 2:
        arr = arr.squeeze()
    if arr.ndim == 0 or arr.size == 0:
        raise AudioDecodeError("the audio array is empty — record or choose some speech")
    if arr.ndim > 2:
        raise AudioDecodeError(f"audio array of shape {arr.shape} — pass (N,), (N, channels) "
                               "or (channels, N) samples")
    duration = max(arr.shape) / input_rate  # the longer axis is time; checked before any copy
    if max_seconds is not None and duration > max_seconds + 0.05:
        raise InputTooLongError(f"the audio is {duration:.1f} s long, more than the limit of "
                                f"{max_seconds:g} s — trim it or raise max_seconds")
    x = _array_to_float(arr)
    if x.ndim == 2:  # the shorter axis is the channel axis: (N, C) or (C, N)
        if x.shape[0] < x.shape[1]:
            x = x.T
        if x.shape[1] > 64:
            raise AudioDecodeError(f"audio array of shape {arr.shape} does not look like sound "
                                   "(more than 64 channels) — pass (N,) or (N, channels)")
        if not np.all(np.isfinite(x)):
            raise AudioDecodeError("the audio contains NaN or infinite samples — fix the "
                                   "recording (e.g. np.nan_to_num) before passing it")
        x = x.mean(axis=1)
    elif not np.all(np.isfinite(x)):
        raise AudioDecodeError("the audio contains NaN or infinite samples — fix the recording "
                               "(e.g. np.nan_to_num) before passing it")
    duration = len(x) / input_rate
    if max_seconds is not None and duration > max_seconds + 0.05:
        raise InputTooLongError(f"the audio is {duration:.1f} s long, more than the limit of "
                                f"{max_seconds:g} s — trim it or raise max_seconds")
    x = resample(x, input_rate, sample_rate)
    return _finish(x, "the audio", sample_rate, max_seconds)


def _from_file(path: str, sample_rate: int, max_seconds: float | None, name: str) -> np.ndarray:
    if not os.path.exists(path):
        raise AudioDecodeError(f"audio file {name!r} does not exist — check the path")
    if os.path.isdir(path):
        raise AudioDecodeError(f"{name!r} is a folder — pass an audio file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"audio file {name!r} is empty (0 bytes) — record or upload the "
                               "speech again")
    try:
        info = probe_media(path)
    except _ProbeError as err:
        raise AudioDecodeError(f"cannot decode {name!r} as audio ({err}) — use a WAV, MP3, M4A, "
                               "FLAC, OGG or WEBM file, or a video with sound") from None
    if not any(s["type"] == "audio" for s in info["streams"]):
        raise AudioDecodeError(f"{name!r} has no audio track — use a file with sound (speech)")
    if max_seconds is not None and info["duration"] is not None \
            and info["duration"] > max_seconds + 0.05:
        raise InputTooLongError(f"{name!r} is {info['duration']:.1f} s long, more than the limit "
                                f"of {max_seconds:g} s — trim it or raise max_seconds")
    try:
        wav = decode_audio(path, int(sample_rate),
                           None if max_seconds is None else max_seconds + 1.0)
    except _ProbeError as err:
        raise AudioDecodeError(f"cannot decode the audio of {name!r} ({err}) — the file may be "
                               "damaged; export it again as WAV or MP3") from None
    if len(wav) == 0:
        raise AudioDecodeError(f"cannot decode the audio of {name!r} (no samples decoded) — the "
                               "file may be damaged; export it again as WAV or MP3")
    if not np.all(np.isfinite(wav)):
        raise AudioDecodeError(f"the audio of {name!r} decodes to NaN/infinite samples — export "
                               "it again as WAV or MP3")
    return _finish(wav, repr(name), sample_rate, max_seconds)


def load_audio(src, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None, *,
               input_sample_rate: float | None = None) -> np.ndarray:
    """Decode speech from any usual source into (N,) float32 mono samples in [-1, 1].

    Args:
        src: one of
            - a path (str / ``os.PathLike``) to anything FFmpeg (PyAV) decodes: wav, mp3, m4a, flac,
              ogg, opus, webm, or a video's first audio track (mp4, mov, mkv ...);
            - ``bytes`` holding such a file;
            - a numpy array / torch tensor of samples: (N,), (N, C) or (C, N) (the shorter
              axis is taken as channels and averaged), int16 / int32 / uint8 / float;
              needs ``input_sample_rate``;
            - a ``(sample_rate, samples)`` tuple as Gradio's ``Audio(type="numpy")`` gives
              (``(samples, sample_rate)`` as librosa returns works too);
            - a dict with a ``"path"`` key (Gradio ``FileData``).
        sample_rate (int, default 16000): rate of the result, Hz.
        max_seconds (float | None): longest accepted duration; checked from the file header
            before decoding (and decoding stops just past the limit when the header has no
            duration).
        input_sample_rate (float | None): Hz of array input.

    Returns:
        (N,) float32 mono at ``sample_rate``. Float input louder than full scale is scaled down
        to peak 1.0 (not clipped).

    Raises:
        AudioDecodeError: missing/empty/corrupt file, no audio track, NaN/inf samples,
            shorter than :data:`MIN_SECONDS`.
        InputTooLongError: longer than ``max_seconds``.

    Example::

        >>> wav = load_audio((44100, int16_samples))            # from gr.Audio
        >>> wav = load_audio("interview.mp4", max_seconds=60)   # the video's sound
    """
    if not (isinstance(sample_rate, (int, np.integer)) and 1000 <= sample_rate <= 384000):
        raise InvalidParameterError(f"sample_rate must be an integer number of Hz, got "
                                    f"{sample_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise InvalidParameterError(f"max_seconds must be positive or None, got {max_seconds!r}")
    if src is None:
        raise AudioDecodeError("no audio given — upload or record speech, or type text instead")
    if isinstance(src, dict):
        path = src.get("path") or src.get("name")
        if not path:
            raise AudioDecodeError("audio dict has no 'path' — pass a file path or samples")
        src = path
    if isinstance(src, tuple) and len(src) == 2:
        a, b = src
        if np.isscalar(a) and not np.isscalar(b):
            return _from_array(b, a, sample_rate, max_seconds)
        if np.isscalar(b) and not np.isscalar(a):
            return _from_array(a, b, sample_rate, max_seconds)
        raise AudioDecodeError("audio tuple must be (sample_rate, samples) — as gr.Audio gives")
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        return _from_file(path, sample_rate, max_seconds, path)
    if isinstance(src, (bytes, bytearray, memoryview)) or isinstance(src, io.IOBase):
        data = bytes(src.read() if isinstance(src, io.IOBase) else src)
        if not data:
            raise AudioDecodeError("the audio data is empty — record or upload the speech again")
        with tempfile.TemporaryDirectory(prefix="moda-audio-") as tmp:
            path = os.path.join(tmp, "input")
            with open(path, "wb") as f:
                f.write(data)
            return _from_file(path, sample_rate, max_seconds, "the uploaded audio")
    return _from_array(src, input_sample_rate, sample_rate, max_seconds)


# --- features ------------------------------------------------------------------------------
def _hz_to_mel(f):
    """Slaney mel scale (librosa's default, ``htk=False``)."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 80, fmin: float = 20.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular Slaney-normalised mel filters
    (the same as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    freqs = np.linspace(0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


def _check_wav(wav, sample_rate, fps) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise InvalidParameterError(f"wav must be mono (N,) samples, got shape {wav.shape} — "
                                    "use load_audio() first")
    if not (sample_rate > 0 and fps > 0):
        raise InvalidParameterError(f"sample_rate and fps must be positive, got {sample_rate!r}, "
                                    f"{fps!r}")
    return wav


def _frame_windows(wav: np.ndarray, sample_rate: float, fps: float, win: int, T: int):
    """Yield (start_row, (t, win) float32 window matrix) blocks, windows centred on frames
    (samples outside the clip are zeros).

    Blocks of ~1 MB of windows, cut from the clip block by block (zero-padded only where a block
    reaches past an end): a 600 s clip then never holds a padded copy of itself or 16 MB blocks,
    which the allocator kept after use (~40 MB of peak memory at 600 s)."""
    centres = np.round(frame_times(T, fps) * sample_rate).astype(np.int64)
    starts = centres - win // 2
    n = len(wav)
    block = max(1, (1 << 18) // win)  # ~1 MB of float32 windows per block
    for i in range(0, T, block):
        s = starts[i:i + block]
        a, b = int(s[0]), int(s[-1]) + win                     # the samples this block covers
        seg = wav[max(a, 0):min(b, n)]
        if a < 0 or b > n:
            seg = np.pad(seg, (max(0, -a), max(0, b - n)))
        view = np.lib.stride_tricks.sliding_window_view(seg, win)
        yield i, view[s - a]


def audio_features(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, fps: float = 30, n_mels: int = 80,
                   *, win_seconds: float = 0.064, fmin: float = 20.0, fmax: float | None = 8000.0,
                   top_db: float = 80.0, normalize: bool = True) -> np.ndarray:
    """Log-mel spectrogram with exactly one row per video frame.

    Row ``i`` is the mel power spectrum of a Hann window of ``win_seconds`` (default 64 ms =
    1024 samples at 16 kHz) centred on ``(i + 0.5) / fps`` s (the middle of frame ``i``'s
    display interval; zeros outside the clip), through ``n_mels`` Slaney mel filters from
    ``fmin`` to ``fmax`` Hz, as natural log of power floored ``top_db`` dB below the clip's
    loudest value. The window size does not depend on ``fps``, so features at 25 and 30 fps
    mean the same thing.

    Normalisation (``normalize=True``): per utterance and per mel bin, subtract the mean and
    divide by the standard deviation over the clip's frames (``std`` floored at 1e-3) —
    cepstral-mean/variance-style normalisation that removes microphone gain and colour.
    A silent clip gives zeros.

    Args:
        wav ((N,) float32): mono samples in [-1, 1].
        sample_rate (int, default 16000): Hz.
        fps (float, default 30): video frame rate.
        n_mels (int, default 80): mel bins.

    Returns:
        (T, n_mels) float32 with ``T = num_frames(len(wav), sample_rate, fps)``.

    Vectorised (strided windows + batched real FFT): a 600 s clip takes well under a second.
    """
    wav = _check_wav(wav, sample_rate, fps)
    T = num_frames(len(wav), sample_rate, fps)
    if T == 0:
        return np.zeros((0, n_mels), np.float32)
    from scipy.fft import rfft

    win = max(16, int(round(win_seconds * sample_rate)))
    n_fft = 1 << (win - 1).bit_length()
    fmax = min(fmax or sample_rate / 2.0, sample_rate / 2.0)
    fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).T  # (F, n_mels)
    window = np.hanning(win + 2)[1:-1].astype(np.float32)  # periodic-like, no zero ends
    mel = np.empty((T, n_mels), np.float32)
    for i, frames in _frame_windows(wav, sample_rate, fps, win, T):
        spec = rfft(frames * window, n=n_fft, axis=1, workers=1)
        power = spec.real ** 2 + spec.imag ** 2
        mel[i:i + len(frames)] = power @ fb
    floor = max(float(mel.max()), 1e-10) * 10.0 ** (-top_db / 10.0)
    logmel = np.log(np.maximum(mel, floor))
    if normalize:
        logmel -= logmel.mean(axis=0, keepdims=True)
        logmel /= np.maximum(logmel.std(axis=0, keepdims=True), 1e-3)
    return logmel.astype(np.float32)


def rms_envelope(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, fps: float = 30) -> np.ndarray:
    """(T,) float32 root-mean-square amplitude of the samples in each frame's display
    interval ``[i / fps, (i + 1) / fps)`` (zeros past the end), ``T = num_frames(...)``."""
    wav = _check_wav(wav, sample_rate, fps)
    T = num_frames(len(wav), sample_rate, fps)
    edges = np.round(np.arange(T + 1) * (sample_rate / fps)).astype(np.int64)
    csum = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    hi = np.minimum(edges, len(wav))
    energy = csum[hi[1:]] - csum[hi[:-1]]
    width = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt(np.maximum(energy, 0) / width).astype(np.float32)


# --- text to speech ------------------------------------------------------------------------
def synthesize_speech(text: str, voice: str = DEFAULTS.voice, rate: int = DEFAULTS.speech_rate, pitch: int = 50, *,
                      sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
                      **speak_options) -> np.ndarray:
    """Speak ``text`` with espeak-ng; (N,) float32 mono at ``sample_rate`` (default 16 kHz).

    ``voice`` (``"en-us"``, ``"en-us+f3"``, ``"fr"`` ...), ``rate`` (words per minute, 80..450)
    and ``pitch`` (0..100) as in :func:`moda_hub.speech.espeak.speak`, which also gives the phoneme
    timeline (its times in seconds hold for the resampled audio too).

    Raises:
        TextToSpeechError: empty text or nothing speakable; espeak-ng not installed.
        InputTooLongError: text longer than espeak's ``max_chars`` or speech longer than
            ``max_seconds``.
        InvalidParameterError: unknown voice or parameter out of range.
    """

    res = speak(text, voice=voice, rate=rate, pitch=pitch, **speak_options)
    if max_seconds is not None and res.duration > max_seconds + 0.05:
        raise InputTooLongError(f"the text takes {res.duration:.1f} s to say, more than the limit "
                                f"of {max_seconds:g} s — shorten it or speak faster (rate)")
    return resample(res.samples, res.sample_rate, sample_rate)
